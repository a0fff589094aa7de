"""Size and shape of one draw, with each cohort's cases and how many of them have an
admission before onset (what a risk cohort can use); written into the folder's README."""

from __future__ import annotations

import pandas as pd

from ehrlab.data.synthetic.cohorts import COHORTS, cohort_code_mask
from ehrlab.data.synthetic.generator import SyntheticTables


def dataset_statistics(tables: SyntheticTables) -> dict:
    """Size and shape of a draw, plus per cohort the cases coded after ≥ 1 earlier admission."""
    admissions = tables.admissions.sort_values(["SUBJECT_ID", "ADMITTIME"])
    rank = admissions.groupby("SUBJECT_ID").cumcount()
    rank_of = pd.Series(rank.to_numpy(), index=admissions["HADM_ID"].to_numpy())
    diagnoses = tables.diagnoses
    n_patients = len(tables.patients)
    statistics = {
        "patients": n_patients,
        "admissions": len(admissions),
        "diagnosis_rows": len(diagnoses),
        "distinct_codes": int(diagnoses["ICD9_CODE"].nunique()),
        "visits_per_patient": round(len(admissions) / n_patients, 3),
        "codes_per_visit": round(len(diagnoses) / max(diagnoses["HADM_ID"].nunique(), 1), 3),
    }
    for cohort in COHORTS:
        hits = diagnoses.loc[cohort_code_mask(diagnoses["ICD9_CODE"], cohort)]
        onset_rank = rank_of.loc[hits["HADM_ID"].to_numpy()].groupby(hits["SUBJECT_ID"].to_numpy()).min()
        statistics[f"{cohort}_cases"] = int(len(onset_rank))
        statistics[f"{cohort}_cases_with_prior_visit"] = int((onset_rank >= 1).sum())
    return statistics
