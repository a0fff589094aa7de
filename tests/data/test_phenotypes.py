"""The 25 CCS phenotypes (ehrlab.data.phenotypes): codes -> phenotypes, patients -> phenotypes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch

from ehrlab.data.phenotypes import (
    PHENOTYPE_CCS,
    PHENOTYPES,
    ccs_categories,
    patient_phenotypes,
    phenotype_matrix,
    table_phenotypes,
)

VOCABULARY = [
    "[PAD]",
    "[UNK]",
    "DIAGNOSIS//ICD//9//428.0",  # congestive heart failure (CCS 108)
    "DIAGNOSIS//ICD//9//038.9",  # septicemia (CCS 2)
    "DIAGNOSIS//ICD//9//785.52",  # septic shock: shock (CCS 249)
    "DIAGNOSIS//ICD//9//V30.00",  # liveborn (CCS 218): no phenotype
    "DIAGNOSIS//ICD//9//ZZZ.9",  # not an ICD-9 code
    "DIAGNOSIS//ICD//10//I50.9",  # ICD-10 heart failure -> 428.9 -> CCS 108
    "DIAGNOSIS//ICD//10//A41.9",  # ICD-10 sepsis -> 038.9 -> CCS 2
    "PROCEDURE//ICD//9//38.91",  # a procedure, whatever its digits
    "DIAGNOSIS//ICD//9//272.4",  # hyperlipidaemia (CCS 53)
    "DIAGNOSIS//ICD//10//R65.21",  # severe sepsis with septic shock
]


def phenotypes_of(code: str) -> list[str]:
    row = phenotype_matrix(VOCABULARY)[VOCABULARY.index(code)]
    return [PHENOTYPES[k] for k in np.flatnonzero(row)]


def test_there_are_the_benchmarks_25_phenotypes_in_snake_case_each_its_own_ccs_category():
    assert len(PHENOTYPES) == 25 and len(set(PHENOTYPES)) == 25
    assert all(re.fullmatch(r"[a-z][a-z_]*[a-z]", name) for name in PHENOTYPES)
    categories = [ccs for group in PHENOTYPE_CCS.values() for ccs in group]
    assert len(categories) == len(set(categories)) == 25
    assert PHENOTYPE_CCS["congestive_heart_failure"] == ("108",)
    assert PHENOTYPE_CCS["septicemia"] == ("2",) and PHENOTYPE_CCS["shock"] == ("249",)


def test_known_icd9_codes_map_to_their_phenotype_only():
    assert phenotypes_of("DIAGNOSIS//ICD//9//428.0") == ["congestive_heart_failure"]
    assert phenotypes_of("DIAGNOSIS//ICD//9//038.9") == ["septicemia"]
    assert phenotypes_of("DIAGNOSIS//ICD//9//785.52") == ["shock"]
    assert phenotypes_of("DIAGNOSIS//ICD//9//272.4") == ["lipid_metabolism_disorders"]


def test_v_codes_unknown_codes_procedures_and_special_entries_have_no_phenotype():
    for code in ["[PAD]", "[UNK]", "DIAGNOSIS//ICD//9//V30.00", "DIAGNOSIS//ICD//9//ZZZ.9", "PROCEDURE//ICD//9//38.91"]:
        assert phenotypes_of(code) == [], code
    assert ccs_categories(["DIAGNOSIS//ICD//9//V30.00"]) == [("218",)]  # grouped, just not a phenotype


def test_icd10_codes_go_through_the_gem_to_icd9_and_keep_every_target():
    assert phenotypes_of("DIAGNOSIS//ICD//10//I50.9") == ["congestive_heart_failure"]
    assert phenotypes_of("DIAGNOSIS//ICD//10//A41.9") == ["septicemia"]
    # A GEM combination entry: severe sepsis with septic shock is 785.52 (shock) and 995.92 (sepsis).
    assert phenotypes_of("DIAGNOSIS//ICD//10//R65.21") == ["septicemia", "shock"]
    assert ccs_categories(["DIAGNOSIS//ICD//10//R65.21", "DIAGNOSIS//ICD//10//Q99.99"]) == [("2", "249"), ()]


def test_matrix_is_cached_read_only_and_shaped_vocabulary_by_phenotype():
    matrix = phenotype_matrix(VOCABULARY)
    assert matrix.shape == (len(VOCABULARY), 25) and matrix.dtype == bool
    assert phenotype_matrix(list(VOCABULARY)) is matrix
    assert not matrix.flags.writeable


def test_patient_phenotypes_are_the_or_over_all_visits_and_ignore_padding():
    ids = {code: VOCABULARY.index(code) for code in VOCABULARY}
    codes = torch.tensor([
        [[ids["DIAGNOSIS//ICD//9//428.0"], 0], [ids["DIAGNOSIS//ICD//9//038.9"], ids["DIAGNOSIS//ICD//9//V30.00"]]],
        [[ids["DIAGNOSIS//ICD//9//V30.00"], 0], [0, 0]],  # one real visit, one padded
    ])  # fmt: skip
    matrix = torch.from_numpy(phenotype_matrix(VOCABULARY).copy())
    labels = patient_phenotypes(codes, matrix)
    assert labels.shape == (2, 25) and labels.dtype == torch.bool
    assert [PHENOTYPES[k] for k in labels[0].nonzero().squeeze(1)] == ["congestive_heart_failure", "septicemia"]
    assert not labels[1].any()


def test_table_phenotypes_per_subject():
    table = pd.DataFrame({
        "subject_id": [7, 7, 9],
        "visit_id": [0, 1, 0],
        "code": ["DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//10//A41.9", "DIAGNOSIS//ICD//9//V30.00"],
    })  # fmt: skip
    per_subject = table_phenotypes(table)
    assert list(per_subject.index) == [7, 9] and list(per_subject.columns) == list(PHENOTYPES)
    assert per_subject.loc[7, "congestive_heart_failure"] and per_subject.loc[7, "septicemia"]
    assert per_subject.loc[7].sum() == 2 and not per_subject.loc[9].any()
