"""`data=synthetic`: the embedded default source.

It writes a MIMIC-III-format folder with the seeded generator of `ehrlab.data.synthetic`
and then reads it with the real `mimic3` reader, so the default run exercises exactly the
code path a user's MIMIC-III copy goes through. The folder is kept in the cache, keyed by
the generator's options and the source code of every module of its package, so it is
generated once and again whenever any part of the generator changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from ehrlab.data import synthetic
from ehrlab.data.cache import default_cache_dir, staged_folder
from ehrlab.data.sources.base import CanonicalTables, Source
from ehrlab.data.sources.mimic3 import MIMIC3Source


def generator_fingerprint(package_dir: Path | None = None) -> str:
    """Digest of the generator's source: every ``*.py`` of its package (names and bytes, in
    sorted order), so an edit to any of its modules gives a new cache key."""
    package_dir = Path(package_dir or Path(synthetic.__file__).parent)
    digest = hashlib.sha256()
    for path in sorted(package_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


class SyntheticSource(Source):
    """Args: `cache_dir` (where the generated MIMIC-III folder is kept) and every field of
    `ehrlab.data.synthetic.SyntheticConfig` (n_patients, seed, ...)."""

    name = "synthetic"

    def __init__(self, cache_dir: str | Path | None = None, **options):
        self.config = synthetic.SyntheticConfig(**options)
        self.cache_dir = Path(cache_dir or default_cache_dir())

    def cache_identity(self) -> dict:
        return {"config": asdict(self.config), "generator": generator_fingerprint()}

    @property
    def root(self) -> Path:
        """The generated MIMIC-III folder (written on first use)."""
        folder = self.cache_dir / "synthetic-mimic3" / self.cache_key()
        if not (folder / "DIAGNOSES_ICD.csv.gz").exists():
            with staged_folder(folder) as staging:
                synthetic.write_synthetic_mimic3(staging, self.config)
        return folder

    def read(self) -> CanonicalTables:
        """The MIMIC-III reader's tables, with the generator's own probability of each
        cohort's disease per patient as `planted`."""
        root = self.root
        tables = MIMIC3Source(root).read()
        tables.planted = synthetic.read_planted_risk(root)
        return tables
