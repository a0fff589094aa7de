"""ICD normalisation: MIMIC's undotted codes to the standard dotted form."""

import pandas as pd
import pytest

from ehrlab.data.codes import (
    icd9_undotted, normalize_diagnosis, normalize_icd9_diagnosis, normalize_icd9_procedure, normalize_procedure,
)


@pytest.mark.parametrize(("raw", "dotted", "category"), [
    ("4019", "401.9", "401"),
    ("25000", "250.00", "250"),
    ("V4581", "V45.81", "V45"),
    ("E8497", "E849.7", "E849"),
    ("428", "428", "428"),
    (" 4280 ", "428.0", "428"),
    ("v1582", "V15.82", "V15"),
    ("401.9", "401.9", "401"),  # already dotted stays as is
])
def test_icd9_diagnoses(raw, dotted, category):
    assert normalize_icd9_diagnosis(pd.Series([raw])).iloc[0] == dotted
    assert normalize_icd9_diagnosis(pd.Series([raw]), truncate=True).iloc[0] == category
    assert icd9_undotted(dotted) == raw.strip().upper().replace(".", "")


def test_mixed_versions_and_procedures():
    codes = pd.Series(["I5023", "4280", "A419", "E119"])
    versions = pd.Series([10, 9, 10, 10])
    assert normalize_diagnosis(codes, versions).tolist() == ["I50.23", "428.0", "A41.9", "E11.9"]
    assert normalize_icd9_procedure(pd.Series(["3995", "966"])).tolist() == ["39.95", "96.6"]
    assert normalize_procedure(pd.Series(["3995", "0DTJ4ZZ"]), pd.Series([9, 10])).tolist() == ["39.95", "0DTJ4ZZ"]
