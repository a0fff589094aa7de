"""`data=synthetic_cxr`: the embedded default of the chest X-ray family (seed 004).

It writes a MIMIC-CXR-JPG 2.0.0 + MIMIC-IV 2.2 folder pair with the seeded phantom generator
of `ehrlab.data.synthetic_cxr` and reads it back with the real `mimic_cxr` reader, so the
default run goes through exactly the code a user's MIMIC-CXR copy does (as `data=synthetic`
does for MIMIC-III). The per-image Chest ImaGenome-style label CSV the generator writes is
passed as the reader's `label_csv`. The folder is kept in the cache under
`synthetic-mimic-cxr/<key>/`, keyed by the generator's options and the source of every
module of its package, so it is generated once and again whenever the generator changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ehrlab.data import synthetic_cxr
from ehrlab.data.cache import default_cache_dir, staged_folder
from ehrlab.data.cxr.contract import CXRTables
from ehrlab.data.sources.base import Source
from ehrlab.data.sources.mimic_cxr import MIMICCXRSource
from ehrlab.data.sources.synthetic import generator_fingerprint


class SyntheticCXRSource(Source):
    """Args: `cache_dir` (where the generated folder is kept), `event_selection` (the reader's
    item selection, `conf/data/event_selection/*.yaml`; None = every event) and every field
    of `ehrlab.data.synthetic_cxr.SyntheticCXRConfig` (n_patients, image_size, seed, ...)."""

    name = "synthetic_cxr"
    tables_type = CXRTables

    def __init__(self, cache_dir: str | Path | None = None, event_selection=None, progress: bool = True,
                 **options):
        self.config = synthetic_cxr.SyntheticCXRConfig(**options)
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.event_selection = event_selection
        self.progress = progress

    def _generator_identity(self) -> dict:
        return {"config": asdict(self.config),
                "generator": generator_fingerprint(Path(synthetic_cxr.__file__).parent)}

    def cache_identity(self) -> dict:
        return {**self._generator_identity(), "event_selection": self.event_selection}

    @property
    def root(self) -> Path:
        """The generated folder (written on first use): `mimic-cxr-jpg/`, `mimic-iv/`, `truth/`."""
        identity = json.dumps(self._generator_identity(), sort_keys=True, default=str)
        folder = self.cache_dir / "synthetic-mimic-cxr" / hashlib.sha256(identity.encode()).hexdigest()[:16]
        if not (folder / synthetic_cxr.writers.TRUTH_DIR / "config.json").exists():
            with staged_folder(folder) as staging:
                synthetic_cxr.write_synthetic_cxr(staging, self.config, progress=self.progress)
        return folder

    def read(self) -> CXRTables:
        """The MIMIC-CXR reader's tables of the generated folder, with the generator's exact
        posterior of every pair's later labels (`synthetic_cxr.writers.planted_pairs`) as
        `planted`."""
        root = self.root
        reader = MIMICCXRSource(root / synthetic_cxr.CXR_DIR, root / synthetic_cxr.MIMIC4_DIR,
                                event_selection=self.event_selection,
                                label_csv=root / synthetic_cxr.CXR_DIR / synthetic_cxr.IMAGENOME_CSV)
        tables = reader.read()
        tables.planted = synthetic_cxr.read_planted(root)
        return tables
