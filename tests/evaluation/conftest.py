"""Fixtures of the synthetic-evaluation tests."""

import pandas as pd
import pytest

from long_tables import DEMO_DIAGNOSES


@pytest.fixture(scope="session")
def demo_diagnoses() -> pd.DataFrame:
    """MIMIC-IV demo diagnoses as a long table (hadm_id is the visit, namespaced codes)."""
    raw = pd.read_csv(DEMO_DIAGNOSES, dtype={"icd_code": "str"})
    return pd.DataFrame(
        {
            "subject_id": raw["subject_id"].astype("int64"),
            "visit_id": raw["hadm_id"].astype("int64"),
            "code": ("DIAGNOSIS//ICD//" + raw["icd_version"].astype("str") + "//" + raw["icd_code"]).astype("str"),
        }
    )
