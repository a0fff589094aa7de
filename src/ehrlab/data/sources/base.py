"""What every raw-data reader provides: canonical tables, and a key for caching them."""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class CanonicalTables:
    """The output of every reader (columns and dtypes in `ehrlab.data.schema`).

    `counts` records everything a reader dropped and why (e.g. rows whose admission id is
    unknown), so that nothing is removed silently; it ends up in data_stats.json.
    """

    events: pd.DataFrame
    static: pd.DataFrame
    counts: dict[str, int]
    #: subject_id -> "train" / "tuning" / "held_out" when the source defines splits (MEDS)
    splits: pd.DataFrame | None = None
    #: a synthetic source's ground truth (subject_id, cohort, risk: its own probability of
    #: each cohort's disease), from which risk tasks report the planted ceiling; else None
    planted: pd.DataFrame | None = None

    def save(self, folder: Path) -> None:
        for name in ("events", "static", "splits", "planted"):
            if getattr(self, name) is not None:
                getattr(self, name).to_parquet(folder / f"{name}.parquet", index=False)
        (folder / "counts.json").write_text(json.dumps(self.counts, indent=2))

    @classmethod
    def load(cls, folder: Path) -> CanonicalTables:
        optional = {name: pd.read_parquet(folder / f"{name}.parquet") if (folder / f"{name}.parquet").exists()
                    else None for name in ("splits", "planted")}
        return cls(events=pd.read_parquet(folder / "events.parquet"),
                   static=pd.read_parquet(folder / "static.parquet"),
                   counts=json.loads((folder / "counts.json").read_text()), **optional)


class Source(abc.ABC):
    """A reader of one raw format. Subclasses set `name` and implement `read`; a reader of
    another family's tables (chest X-ray images and events) sets `tables_type` to the class
    it returns, which saves and loads itself for the cache."""

    name: str = "source"
    tables_type: type = CanonicalTables
    # Part of every cache key: bump it when the cached tables change shape for the same
    # inputs. 2: the synthetic source's planted truth travels in the tables.
    TABLES_FORMAT = 2

    @abc.abstractmethod
    def read(self):
        """Read the raw files into `tables_type` (no caching here)."""

    @abc.abstractmethod
    def cache_identity(self) -> dict[str, Any]:
        """Everything the canonical tables depend on: options and input file fingerprints."""

    def cache_key(self) -> str:
        """Digest of `cache_identity`, computed once per source object: it hashes the input
        files, and a run asks for it several times (task cache, canonical cache, the
        synthetic folder)."""
        if getattr(self, "_cache_key", None) is None:
            identity = json.dumps({"source": self.name, "format": self.TABLES_FORMAT, **self.cache_identity()},
                                  sort_keys=True, default=str)
            self._cache_key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self._cache_key


# Files up to this size are hashed whole; larger ones by sampled blocks (see file_fingerprints).
FULL_HASH_BYTES = 64 << 20
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_BYTES = 1 << 20


def file_fingerprints(paths: list[Path | None]) -> list[tuple[str, int, int, str]]:
    """(path, size, mtime in ns, content hash) of each existing file: a changed file invalidates the cache.

    Size and mtime alone miss a file rewritten with the same size and mtime (`cp -p` or
    `rsync -t` of another version, a rewrite within the file system's timestamp
    resolution), so the content is hashed too. Hashing a whole 30 GB MIMIC-IV table on every
    run is too slow, so:

    - files up to `FULL_HASH_BYTES` (64 MiB: every MIMIC-III/IV table but the few largest)
      are hashed completely;
    - larger files are hashed by their size and `SAMPLE_BLOCKS` blocks of 1 MiB, the first,
      the last and evenly spaced ones between: 16 MiB read whatever the size. A change that
      keeps size and mtime and lies entirely between the sampled blocks goes unnoticed. For
      the `.csv.gz` files MIMIC is shipped as, the last block ends with the gzip trailer, a
      CRC-32 of the whole uncompressed content, so a change of content anywhere is seen
      there (but for a CRC collision).
    """
    out = []
    for path in paths:
        if path is not None and path.exists():
            stat = path.stat()
            out.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns, _content_hash(path, stat.st_size)))
    return out


def _content_hash(path: Path, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as file:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: file.read(SAMPLE_BLOCK_BYTES), b""):
                digest.update(block)
        else:
            last = size - SAMPLE_BLOCK_BYTES
            for i in range(SAMPLE_BLOCKS):
                file.seek(last * i // (SAMPLE_BLOCKS - 1))
                digest.update(file.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()
