"""Builders for the synthetic-evaluation tests: long tables from hand-written records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DEMO_DIAGNOSES = Path(__file__).parents[1] / "fixtures" / "mimic-iv-demo-2.2" / "hosp" / "diagnoses_icd.csv.gz"


def long_table(records: dict[int, list[list[str]]]) -> pd.DataFrame:
    """{subject_id: [visit codes, ...]} -> long table; visit ids follow the list order."""
    rows = [
        (subject, subject * 100 + position, code)
        for subject, visits in records.items()
        for position, visit in enumerate(visits)
        for code in visit
    ]
    table = pd.DataFrame(rows, columns=["subject_id", "visit_id", "code"])
    return table.astype({"subject_id": "int64", "visit_id": "int64", "code": "str"})


def zipf_population(n_patients: int, seed: int, n_codes: int = 300, first_subject: int = 0) -> pd.DataFrame:
    """One MIMIC-like population: 1-3 visits, ~8 codes per visit, Zipf-distributed codes."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 4, n_patients)
    codes_per_visit = rng.integers(3, 14, visits.sum())
    weights = 1.0 / np.arange(1, n_codes + 1)
    codes = rng.choice(n_codes, size=codes_per_visit.sum(), p=weights / weights.sum())
    visit_id = np.repeat(np.arange(visits.sum()), codes_per_visit)
    subject = np.repeat(np.repeat(np.arange(n_patients) + first_subject, visits), codes_per_visit)
    return pd.DataFrame(
        {"subject_id": subject, "visit_id": visit_id, "code": pd.Series([f"{400 + c % 99}.{c // 99}" for c in codes], dtype="str")}
    )


def split_by_patient(table: pd.DataFrame, n_parts: int, seed: int = 0) -> list[pd.DataFrame]:
    subjects = np.random.default_rng(seed).permutation(table["subject_id"].unique())
    return [table.loc[table["subject_id"].isin(part)].reset_index(drop=True) for part in np.array_split(subjects, n_parts)]
