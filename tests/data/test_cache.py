"""The canonical-table cache: content fingerprints in the key, removal of a killed writer's
staging folder, owner-only permissions."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from support import MIMIC3_TINY
from ehrlab.data import cache
from ehrlab.data.cache import load_canonical, remove_stale_staging, staged_folder
from ehrlab.data.sources import base
from ehrlab.data.sources.base import file_fingerprints
from ehrlab.data.sources.mimic3 import MIMIC3Source


def _rewrite_keeping_size_and_mtime(path: Path, content: bytes) -> None:
    before = path.stat()
    assert len(content) == before.st_size
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


# -- fingerprints ---------------------------------------------------------------------------


def test_same_size_and_mtime_but_new_content_is_a_new_cache_entry(tmp_path, monkeypatch):
    root = tmp_path / "mimic3"
    shutil.copytree(MIMIC3_TINY, root)
    first = load_canonical(MIMIC3Source(root), tmp_path / "cache")
    key = MIMIC3Source(root).cache_key()
    diagnoses = root / "DIAGNOSES_ICD.csv"
    # 4019 (hypertension) becomes 4280 (heart failure) for patient 1's first admission:
    # same length, so same size; the mtime is set back.
    text = diagnoses.read_bytes()
    _rewrite_keeping_size_and_mtime(diagnoses, text.replace(b'1,1,101,1,"4019"', b'1,1,101,1,"4280"', 1))
    assert MIMIC3Source(root).cache_key() != key
    second = load_canonical(MIMIC3Source(root), tmp_path / "cache")
    codes = second.events.loc[second.events["visit_id"] == 101, "code"].tolist()
    assert "DIAGNOSIS//ICD//9//428.0" in codes and "DIAGNOSIS//ICD//9//428.0" not in \
        first.events.loc[first.events["visit_id"] == 101, "code"].tolist()
    # and the unchanged files still hit the cache
    monkeypatch.setattr(MIMIC3Source, "read", lambda self: pytest.fail("the cache should have been used"))
    pd.testing.assert_frame_equal(load_canonical(MIMIC3Source(root), tmp_path / "cache").events, second.events)


def test_large_files_are_fingerprinted_by_sampled_blocks(tmp_path, monkeypatch):
    # Shrunk thresholds stand for 64 MiB / 16 x 1 MiB: a 64 KiB file is "large", sampled in
    # 4 blocks of 1 KiB at 0, 21 KiB, 42 KiB and the last KiB.
    monkeypatch.setattr(base, "FULL_HASH_BYTES", 4 << 10)
    monkeypatch.setattr(base, "SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(base, "SAMPLE_BLOCK_BYTES", 1 << 10)
    path = tmp_path / "labevents.csv.gz"
    original = bytes(range(256)) * 256
    path.write_bytes(original)
    fingerprint = file_fingerprints([path])
    for offset in (0, 21 << 10, len(original) - 1):  # the first, a middle and the last block
        changed = bytearray(original)
        changed[offset] ^= 0xFF
        _rewrite_keeping_size_and_mtime(path, bytes(changed))
        assert file_fingerprints([path]) != fingerprint, offset
    # Between the samples a change goes unseen: the price of not reading 30 GB on every run
    # (the gzip trailer's CRC in the last block covers a real .csv.gz).
    changed = bytearray(original)
    changed[10 << 10] ^= 0xFF
    _rewrite_keeping_size_and_mtime(path, bytes(changed))
    assert file_fingerprints([path]) == fingerprint


def test_fingerprints_skip_missing_paths(tmp_path):
    present = tmp_path / "a.csv"
    present.write_text("x\n")
    assert [f[0] for f in file_fingerprints([present, None, tmp_path / "absent.csv"])] == [str(present.resolve())]


# -- staging folders ------------------------------------------------------------------------

_WRITER = """
import sys, time
from pathlib import Path
from ehrlab.data.cache import staged_folder
with staged_folder(Path(sys.argv[1])) as staging:
    (staging / "events.parquet").write_bytes(b"half written")
    print("staged", flush=True)
    time.sleep(600)
"""


def _start_writer(folder: Path) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "staged"
    return writer


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_killed_writers_staging_folder_is_removed_by_the_next_run(tmp_path):
    parent = tmp_path / "canonical"
    writer = _start_writer(parent / "mimic3-aaaa")
    try:
        (left,) = _hidden(parent)
        assert left.startswith(f".mimic3-aaaa~{writer.pid}~")
        # While it runs, another job's staging leaves its folder alone (parallel sweeps).
        with staged_folder(parent / "mimic3-bbbb") as staging:
            (staging / "counts.json").write_text("{}")
        assert _hidden(parent) == [left]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert _hidden(parent) == [left]  # SIGKILL: no clean-up of its own
    with staged_folder(parent / "mimic3-cccc") as staging:
        (staging / "counts.json").write_text("{}")
    assert _hidden(parent) == []
    assert sorted(p.name for p in parent.iterdir()) == ["mimic3-bbbb", "mimic3-cccc"]


def test_only_dead_writers_of_this_host_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = cache._host()
    folders = {
        "dead here": f".tasks-x~{dead_pid}~{host}~abc",
        "alive here": f".tasks-y~{os.getpid()}~{host}~abc",
        "other host": f".tasks-z~{dead_pid}~{socket.gethostname()}-elsewhere~abc",
        "no owner recorded": ".tasks-w-abc123",
        "not staging": "tasks-v~1~x~y",
    }
    for name in folders.values():
        (tmp_path / name).mkdir()
    assert remove_stale_staging(tmp_path) == [tmp_path / folders["dead here"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in folders.items() if k != "dead here")


# -- permissions ----------------------------------------------------------------------------


def test_cache_folders_and_files_are_private(tmp_path):
    old_umask = os.umask(0o022)  # the usual default: without care, files would be 0o644
    try:
        cache_dir = tmp_path / "new" / "cache"
        load_canonical(MIMIC3Source(MIMIC3_TINY), cache_dir)
    finally:
        os.umask(old_umask)
    created = [tmp_path / "new", *(tmp_path / "new").rglob("*")]
    folders = [p for p in created if p.is_dir()]
    files = [p for p in created if p.is_file()]
    assert len(folders) == 4 and {f.name for f in files} == {"events.parquet", "static.parquet", "counts.json"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o700"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o600"}
