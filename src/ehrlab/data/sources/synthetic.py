"""`data=synthetic`: the embedded default source.

It writes a MIMIC-III-format folder with the seeded generator of `ehrlab.data.synthetic`
and then reads it with the real `mimic3` reader, so the default run exercises exactly the
code path a user's MIMIC-III copy goes through. The folder is kept in the cache, keyed by
the generator's options and its source code, so it is generated once.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ehrlab.data import synthetic
from ehrlab.data.cache import default_cache_dir, staged_folder
from ehrlab.data.sources.base import CanonicalTables, Source
from ehrlab.data.sources.mimic3 import MIMIC3Source


class SyntheticSource(Source):
    """Args: `cache_dir` (where the generated MIMIC-III folder is kept) and every field of
    `ehrlab.data.synthetic.SyntheticConfig` (n_patients, seed, ...)."""

    name = "synthetic"

    def __init__(self, cache_dir: str | Path | None = None, **options):
        self.config = synthetic.SyntheticConfig(**options)
        self.cache_dir = Path(cache_dir or default_cache_dir())

    def cache_identity(self) -> dict:
        generator_code = hashlib.sha256(inspect.getsource(synthetic).encode()).hexdigest()[:12]
        return {"config": asdict(self.config), "generator": generator_code}

    @property
    def root(self) -> Path:
        """The generated MIMIC-III folder (written on first use)."""
        folder = self.cache_dir / "synthetic-mimic3" / self.cache_key()
        if not (folder / "DIAGNOSES_ICD.csv.gz").exists():
            with staged_folder(folder) as staging:
                synthetic.write_synthetic_mimic3(staging, self.config)
        return folder

    def read(self) -> CanonicalTables:
        return MIMIC3Source(self.root).read()

    def planted_risk(self) -> pd.DataFrame:
        """The generator's own probability of each cohort's disease per patient."""
        return synthetic.read_planted_risk(self.root)
