"""The seeded chest X-ray phantom generator behind `data=synthetic_cxr` (seed 004's family).

It writes a MIMIC-CXR-JPG 2.0.0 + MIMIC-IV 2.2 folder pair that the real reader
(`ehrlab.data.sources.mimic_cxr`) reads back: procedurally drawn frontal phantoms
(`phantom`), patients, stays and studies with hidden finding states that move with the
events between studies (`model`), those events in MIMIC-IV's tables (`catalogue`), and the
exact posterior of every pair's later labels, the task's ceiling (`writers.planted_pairs`).
"""

from ehrlab.data.synthetic_cxr import writers
from ehrlab.data.synthetic_cxr.config import SyntheticCXRConfig
from ehrlab.data.synthetic_cxr.writers import CXR_DIR, IMAGENOME_CSV, MIMIC4_DIR, read_planted, write_synthetic_cxr

__all__ = ["CXR_DIR", "IMAGENOME_CSV", "MIMIC4_DIR", "SyntheticCXRConfig", "read_planted", "write_synthetic_cxr",
           "writers"]
