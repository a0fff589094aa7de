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


class Source(abc.ABC):
    """A reader of one raw format. Subclasses set `name` and implement `read`."""

    name: str = "source"

    @abc.abstractmethod
    def read(self) -> CanonicalTables:
        """Read the raw files into canonical tables (no caching here)."""

    @abc.abstractmethod
    def cache_identity(self) -> dict[str, Any]:
        """Everything the canonical tables depend on: options and input file fingerprints."""

    def cache_key(self) -> str:
        identity = json.dumps({"source": self.name, **self.cache_identity()}, sort_keys=True, default=str)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


def file_fingerprints(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) for each existing file: a changed file invalidates the cache."""
    out = []
    for path in paths:
        if path is not None and path.exists():
            stat = path.stat()
            out.append((str(path.resolve()), stat.st_size, int(stat.st_mtime)))
    return out
