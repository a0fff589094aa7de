"""Parquet cache of canonical tables, keyed by the source's files and options.

Reading and normalising a full MIMIC release takes seconds to minutes; every later run with
the same files and options reads the cache instead. Writes go to a temporary folder that is
renamed into place, so parallel jobs of a sweep never see a half-written cache; the folder
of a writer that was killed is removed by the next writer on the same host.

The cache holds patient-level data, so everything in it is private: folders it creates are
0o700 and files 0o600, whatever the umask.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ehrlab.data.sources.base import Source

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("EHRLAB_CACHE", Path.home() / ".cache" / "ehrlab"))


def load_canonical(source: Source, cache_dir: str | Path | None = None):
    """The source's tables (`source.tables_type`: canonical events, or a chest X-ray source's
    images and events), from the cache when the key matches."""
    folder = Path(cache_dir or default_cache_dir()) / "canonical" / f"{source.name}-{source.cache_key()}"
    if (folder / "counts.json").exists():
        log.info("reading canonical %s tables from cache %s", source.name, folder)
        return source.tables_type.load(folder)
    log.info("reading %s source; caching canonical tables in %s", source.name, folder)
    tables = source.read()
    with staged_folder(folder) as staging:
        tables.save(staging)
    return tables


# A staging folder is `.<name>~<pid>~<host>~<random>`: who writes it, so that a later run can
# tell a dead writer's leftovers from a live one's work in progress.
_STAGING_SEPARATOR = "~"


@contextmanager
def staged_folder(folder: Path):
    """Write into a temporary sibling of `folder`, then rename it into place; if another
    process (a parallel sweep job, another DDP rank) got there first, keep theirs: it holds
    the same content, keyed by the same inputs.

    The staging folder's name records the writer's pid and host. A writer killed before it
    could clean up (SIGKILL, out of memory, a cancelled SLURM job) leaves its folder behind;
    every later `staged_folder` in the same parent removes those whose writer is dead (see
    `remove_stale_staging`). What was written is made private (0o700 / 0o600) before the
    rename, so the folder appears in place already private.
    """
    make_private_dirs(folder.parent)
    remove_stale_staging(folder.parent)
    owner = _STAGING_SEPARATOR.join(["", str(os.getpid()), _host(), ""])
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{owner}"))
    try:
        yield staging
        _make_private(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging folders in `parent` left by dead writers on this host; return them.

    A folder is removed only when its writer ran on this host (the name and pid namespace
    match) and no process with its pid exists. Folders of other hosts (a cache on a shared
    file system), of live writers (parallel sweep jobs), and staging folders of versions
    that did not record their writer are left alone: a recycled pid can only make a dead
    writer look alive, never the reverse.
    """
    removed = []
    if not parent.is_dir():
        return removed
    host = _host()
    for entry in parent.iterdir():
        parts = entry.name.split(_STAGING_SEPARATOR)
        if not (entry.name.startswith(".") and len(parts) == 4 and parts[1].isdigit() and entry.is_dir()):
            continue
        pid, writer_host = int(parts[1]), parts[2]
        if writer_host == host and not _alive(pid):
            log.info("removing %s, left by writer %d which is no longer running", entry, pid)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_private_dirs(folder: Path) -> None:
    """`mkdir -p folder`, every missing level owner-only (0o700, which the umask can only narrow).

    `Path.mkdir(parents=True)` would create the intermediate levels with the default mode.
    Existing folders are left as they are: a cache the user placed in a shared folder on
    purpose keeps its permissions.
    """
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for level in reversed(missing):
        level.mkdir(mode=0o700, exist_ok=True)


def _make_private(folder: Path) -> None:
    os.chmod(folder, 0o700)
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o700)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o600)


def _host() -> str:
    """This host's name, with the pid namespace where the system has one: two containers may
    share a host name, and a pid means something only inside its own namespace."""
    host = socket.gethostname().replace(_STAGING_SEPARATOR, "-")
    try:
        return f"{host}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True
