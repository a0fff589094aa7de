"""Parquet cache of canonical tables, keyed by the source's files and options.

Reading and normalising a full MIMIC release takes seconds to minutes; every later run with
the same files and options reads the cache instead. Writes go to a temporary folder that is
renamed into place, so parallel jobs of a sweep never see a half-written cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ehrlab.data.sources.base import CanonicalTables, Source

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("EHRLAB_CACHE", Path.home() / ".cache" / "ehrlab"))


def load_canonical(source: Source, cache_dir: str | Path | None = None) -> CanonicalTables:
    """The source's canonical tables, from the cache when the key matches."""
    folder = Path(cache_dir or default_cache_dir()) / "canonical" / f"{source.name}-{source.cache_key()}"
    if (folder / "counts.json").exists():
        log.info("reading canonical %s tables from cache %s", source.name, folder)
        splits_path = folder / "splits.parquet"
        return CanonicalTables(
            events=pd.read_parquet(folder / "events.parquet"),
            static=pd.read_parquet(folder / "static.parquet"),
            counts=json.loads((folder / "counts.json").read_text()),
            splits=pd.read_parquet(splits_path) if splits_path.exists() else None,
        )
    log.info("reading %s source; caching canonical tables in %s", source.name, folder)
    tables = source.read()
    with staged_folder(folder) as staging:
        tables.events.to_parquet(staging / "events.parquet", index=False)
        tables.static.to_parquet(staging / "static.parquet", index=False)
        if tables.splits is not None:
            tables.splits.to_parquet(staging / "splits.parquet", index=False)
        (staging / "counts.json").write_text(json.dumps(tables.counts, indent=2))
    return tables


@contextmanager
def staged_folder(folder: Path):
    """Write into a temporary sibling of `folder`, then rename it into place; if another
    process (a parallel sweep job, another DDP rank) got there first, keep theirs: it holds
    the same content, keyed by the same inputs."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield staging
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
