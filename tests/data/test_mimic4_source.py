"""The mimic4 reader against the real MIMIC-IV demo v2.2 (tests/fixtures) and small edits of it."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ehrlab.data.sources.mimic4 import MIMIC4Source
from ehrlab.errors import UserInputError

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "mimic-iv-demo-2.2"
ALL_TABLES = ["diagnoses", "procedures", "prescriptions", "labevents", "inputevents", "outputevents",
              "procedureevents", "chartevents"]


@pytest.fixture(scope="module")
def demo():
    """Every table of the demo, read once (chartevents is absent from the demo)."""
    return MIMIC4Source(DEMO, tables=ALL_TABLES).read()


def _count(events: pd.DataFrame, prefix: str) -> int:
    return int(events["code"].str.startswith(prefix).sum())


def test_demo_row_counts_match_the_raw_tables(demo):
    # The demo is clean: every row belongs to a known patient and admission, so nothing is
    # dropped and each table's events equal its row count.
    drops = {k: v for k, v in demo.counts.items() if not k.endswith("_table_missing")}
    assert drops and all(v == 0 for v in drops.values()), drops
    assert len(demo.static) == 100 and demo.static["subject_id"].is_unique
    events = demo.events
    assert _count(events, "HOSPITAL_ADMISSION//") == 275
    assert _count(events, "DIAGNOSIS//ICD//") == 4506
    assert _count(events, "PROCEDURE//ICD//") == 722
    assert _count(events, "MEDICATION//") == 18087
    assert _count(events, "LAB//") == 107727
    assert _count(events, "INFUSION//") == 20404
    assert _count(events, "OUTPUT//") == 9362
    assert _count(events, "PROCEDURE//ITEM//") == 1468
    assert _count(events, "CHART//") == 0
    assert len(events) == 275 + 4506 + 722 + 18087 + 107727 + 20404 + 9362 + 1468


def test_demo_events_have_canonical_dtypes_and_order(demo):
    events = demo.events
    assert list(events.columns) == ["subject_id", "time", "code", "numeric_value", "visit_id"]
    assert str(events["time"].dtype) == "datetime64[us]" and str(events["numeric_value"].dtype) == "float32"
    assert events["time"].notna().all()
    # Sorted by subject, then time.
    keys = events[["subject_id", "time"]]
    assert keys.equals(keys.sort_values(["subject_id", "time"], ignore_index=True))
    # Only outpatient labs may lack an admission; the demo has 28,420 of them.
    no_visit = events["visit_id"].isna()
    assert events.loc[no_visit, "code"].str.startswith("LAB//").all()
    assert int(no_visit.sum()) == 28420


def test_both_icd_versions_are_present_and_dotted(demo):
    diagnoses = demo.events.loc[demo.events["code"].str.startswith("DIAGNOSIS//")]
    parts = diagnoses["code"].str.split("//", expand=True)
    assert set(parts[2]) == {"9", "10"}
    assert (parts[2] == "9").sum() == 2193 and (parts[2] == "10").sum() == 2313
    # Undotting gives back exactly the raw codes; a dot appears after the 3rd character
    # (4th for ICD-9 E codes) whenever the code is longer.
    raw = pd.read_csv(DEMO / "hosp" / "diagnoses_icd.csv.gz", dtype={"icd_code": "str"})
    assert sorted(parts[3].str.replace(".", "", regex=False)) == sorted(raw["icd_code"].str.strip())
    head_length = parts[3].str.find(".")
    e_code = (parts[2] == "9") & parts[3].str.startswith("E")
    assert (head_length.loc[~e_code & (parts[3].str.len() > 3)] == 3).all()
    assert (head_length.loc[e_code & (parts[3].str.len() > 4)] == 4).all()


def test_known_rows_become_the_expected_events(demo):
    events = demo.events
    # diagnoses_icd: 10035185,22580999,3,4139,9 -> at the admission's dischtime.
    row = events.loc[(events["visit_id"] == 22580999) & (events["code"] == "DIAGNOSIS//ICD//9//413.9")]
    assert len(row) == 1 and row["time"].iloc[0] == pd.Timestamp("2120-05-17 16:00:00")
    # ICD-10: 10026354,24547356,5,S030XXA,10
    assert ((events["visit_id"] == 24547356) & (events["code"] == "DIAGNOSIS//ICD//10//S03.0XXA")).sum() == 1
    # admissions: 22580999 URGENT at admittime
    row = events.loc[(events["visit_id"] == 22580999) & events["code"].str.startswith("HOSPITAL_ADMISSION//")]
    assert row["code"].tolist() == ["HOSPITAL_ADMISSION//URGENT"]
    assert row["time"].iloc[0] == pd.Timestamp("2120-05-12 12:53:00")
    # procedures_icd: 10011398,27505812,3,2146-12-15,3961,9 -> ICD-9 procedure dot after 2 digits.
    row = events.loc[(events["visit_id"] == 27505812) & (events["code"] == "PROCEDURE//ICD//9//39.61")]
    assert row["time"].tolist() == [pd.Timestamp("2146-12-15")]
    # labevents 172061: itemid 51277, 15.4 %, and 172091: itemid 51678 without a unit.
    lab = events.loc[(events["subject_id"] == 10014354) & (events["time"] == pd.Timestamp("2148-08-16"))]
    assert lab.loc[lab["code"] == "LAB//51277//%", "numeric_value"].tolist() == [pytest.approx(15.4)]
    assert lab.loc[lab["code"] == "LAB//51678//UNK", "numeric_value"].tolist() == [12.0]
    assert (lab["visit_id"] == 29600294).all()
    # outputevents: 10002428 ... 226583,600,ml at 2156-05-15 18:00
    out = events.loc[(events["code"] == "OUTPUT//226583//ml") & (events["time"] == pd.Timestamp("2156-05-15 18:00"))]
    assert out["numeric_value"].tolist() == [600.0] and out["visit_id"].tolist() == [23473524]


def test_static_birth_date_gender_race(demo):
    static = demo.static.set_index("subject_id")
    # patients: 10035185,M,70,2120 -> born 1 January 2050; admissions race WHITE.
    assert static.loc[10035185, "birth_date"] == pd.Timestamp("2050-01-01")
    assert static.loc[10035185, "gender"] == "M" and static.loc[10035185, "race"] == "WHITE"
    assert static.loc[10014729, "birth_date"] == pd.Timestamp("2104-01-01")
    assert set(static["gender"]) == {"F", "M"}


def test_missing_optional_table_is_a_logged_warning_and_a_count(caplog):
    with caplog.at_level(logging.WARNING, logger="ehrlab.data.sources.mimic4"):
        source = MIMIC4Source(DEMO, tables=["chartevents"])
    assert any("chartevents" in r.getMessage() for r in caplog.records)
    tables = source.read()
    assert tables.counts["chartevents_table_missing"] == 1
    assert _count(tables.events, "DIAGNOSIS//") == 4506  # diagnoses are always read


def test_lab_itemids_filter_keeps_only_selected_items_and_counts_the_rest():
    tables = MIMIC4Source(DEMO, tables=["labevents"], lab_itemids=[51277, 50912]).read()
    labs = tables.events.loc[tables.events["code"].str.startswith("LAB//")]
    raw = pd.read_csv(DEMO / "hosp" / "labevents.csv.gz", usecols=["itemid"])
    selected = int(raw["itemid"].isin([51277, 50912]).sum())
    assert len(labs) == selected > 0
    assert set(labs["code"].str.split("//").str[1]) == {"51277", "50912"}
    assert tables.counts["labevents_itemid_not_selected"] == len(raw) - selected


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression="gzip" if path.suffix == ".gz" else None)


def _copy_demo(tmp_path: Path, tables: list[str]) -> Path:
    root = tmp_path / "mimic4"
    for name in tables:
        source = DEMO / f"{name}.csv.gz"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / f"{name}.csv.gz")
    return root


REQUIRED = ["hosp/patients", "hosp/admissions", "hosp/diagnoses_icd"]


def test_uppercase_file_names_and_headers_read_the_same(tmp_path):
    root = tmp_path / "UPPER"
    for name in REQUIRED + ["hosp/procedures_icd", "hosp/labevents", "icu/outputevents"]:
        folder, stem = name.split("/")
        with gzip.open(DEMO / f"{name}.csv.gz", "rt") as src:
            header, rest = src.readline(), src.read()
        target = root / folder.upper() / f"{stem.upper()}.csv.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(target, "wt", compresslevel=1) as dst:
            dst.write(header.upper() + rest)
    tables = ["diagnoses", "procedures", "labevents", "outputevents"]
    upper = MIMIC4Source(root, tables=tables).read()
    lower = MIMIC4Source(DEMO, tables=tables).read()
    pd.testing.assert_frame_equal(upper.events, lower.events)
    pd.testing.assert_frame_equal(upper.static, lower.static)
    assert len(upper.events) == 275 + 4506 + 722 + 107727 + 9362


def test_unknown_subjects_admissions_and_missing_times_are_dropped_and_counted(tmp_path, caplog):
    root = _copy_demo(tmp_path, ["hosp/patients", "hosp/admissions"])
    _write_csv(pd.DataFrame({
        "subject_id": [10035185, 10035185, 10035185],
        "hadm_id": [22580999, 22580999, 99999999],
        "seq_num": [1, 2, 1],
        "icd_code": ["4019", "", "25000"],
        "icd_version": [9, 9, 9],
    }), root / "hosp" / "diagnoses_icd.csv")
    _write_csv(pd.DataFrame({
        "subject_id": [10035185, 10035185, 1, 10035185],
        "hadm_id": [22580999, 99999999, 22580999, 22580999],
        "starttime": ["2120-05-13 08:00:00", "2120-05-13 08:00:00", "2120-05-13 08:00:00", ""],
        "drug": ["Aspirin", "Aspirin", "Aspirin", "Aspirin"],
    }), root / "hosp" / "prescriptions.csv.gz")
    _write_csv(pd.DataFrame({
        "subject_id": [10035185, 10035185, 10035185, 2],
        "hadm_id": pd.array([22580999, None, 99999999, None], dtype="Int64"),
        "itemid": [50912, 50912, 50912, 50912],
        "charttime": ["2120-05-13 08:00:00"] * 4,
        "valuenum": [1.1, None, 1.3, 1.4],
        "valueuom": ["mg/dL", "mg/dL", "mg/dL", "mg/dL"],
    }), root / "hosp" / "labevents.csv.gz")
    with caplog.at_level(logging.WARNING, logger="ehrlab.data.sources.mimic4"):
        tables = MIMIC4Source(root, tables=["prescriptions", "labevents"]).read()
    counts = tables.counts
    assert counts["diagnoses_missing_code"] == 1 and counts["diagnoses_unknown_admission"] == 1
    assert counts["prescriptions_unknown_admission"] == 1 and counts["prescriptions_unknown_subject"] == 1
    assert counts["prescriptions_missing_time"] == 1
    assert counts["labevents_unknown_admission"] == 1 and counts["labevents_unknown_subject"] == 1
    assert any("diagnoses_unknown_admission" in r.getMessage() for r in caplog.records)

    events = tables.events.loc[tables.events["subject_id"] == 10035185]
    assert events.loc[events["code"].str.startswith("DIAGNOSIS//"), "code"].tolist() == ["DIAGNOSIS//ICD//9//401.9"]
    assert events.loc[events["code"].str.startswith("MEDICATION//"), "code"].tolist() == ["MEDICATION//Aspirin"]
    labs = events.loc[events["code"] == "LAB//50912//mg/dL"]
    assert labs["visit_id"].tolist() == [22580999, pd.NA]  # an outpatient lab keeps a null visit
    assert labs["numeric_value"].iloc[0] == pytest.approx(1.1) and pd.isna(labs["numeric_value"].iloc[1])


def test_race_is_the_most_frequent_value_ties_to_the_latest(tmp_path):
    root = tmp_path / "mimic4"
    _write_csv(pd.DataFrame({"subject_id": [1, 2], "gender": ["F", "X"], "anchor_age": [40, 30],
                             "anchor_year": [2150, 2160]}), root / "hosp" / "patients.csv")
    _write_csv(pd.DataFrame({
        "subject_id": [1, 1, 1, 2, 2],
        "hadm_id": [11, 12, 13, 21, 22],
        "admittime": ["2150-01-01", "2150-02-01", "2150-03-01", "2160-01-01", "2160-05-01"],
        "dischtime": ["2150-01-02", "2150-02-02", "2150-03-02", "2160-01-02", "2160-05-02"],
        "admission_type": ["urgent"] * 5,
        "race": ["ASIAN", "WHITE", "ASIAN", "HISPANIC", "BLACK"],
    }), root / "hosp" / "admissions.csv")
    _write_csv(pd.DataFrame({"subject_id": [1], "hadm_id": [11], "seq_num": [1], "icd_code": ["I5023"],
                             "icd_version": [10]}), root / "hosp" / "diagnoses_icd.csv")
    tables = MIMIC4Source(root).read()
    static = tables.static.set_index("subject_id")
    assert static.loc[1, "race"] == "ASIAN"
    assert static.loc[2, "race"] == "BLACK"  # one each: the latest admission's value
    assert static.loc[1, "birth_date"] == pd.Timestamp("2110-01-01")
    assert static.loc[2, "gender"] == "U"
    assert "HOSPITAL_ADMISSION//URGENT" in set(tables.events["code"])
    assert "DIAGNOSIS//ICD//10//I50.23" in set(tables.events["code"])


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not a directory"):
        MIMIC4Source(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="data.root"):
        MIMIC4Source(None)


def test_missing_required_table_names_it(tmp_path):
    root = _copy_demo(tmp_path, ["hosp/patients", "hosp/admissions"])
    with pytest.raises(UserInputError, match="diagnoses_icd"):
        MIMIC4Source(root)


def test_unknown_table_option_is_a_user_error():
    with pytest.raises(UserInputError, match="labs"):
        MIMIC4Source(DEMO, tables=["labs"])


def test_missing_column_names_file_and_column(tmp_path):
    root = _copy_demo(tmp_path, REQUIRED)
    admissions = pd.read_csv(DEMO / "hosp" / "admissions.csv.gz").drop(columns="dischtime")
    _write_csv(admissions, root / "hosp" / "admissions.csv.gz")
    with pytest.raises(UserInputError, match=r"admissions\.csv\.gz.*dischtime"):
        MIMIC4Source(root).read()


def test_missing_column_in_a_streamed_table_names_file_and_column(tmp_path):
    root = _copy_demo(tmp_path, REQUIRED)
    _write_csv(pd.DataFrame({"subject_id": [10035185], "hadm_id": [22580999], "itemid": [1],
                             "valuenum": [1.0]}), root / "hosp" / "labevents.csv")
    with pytest.raises(UserInputError, match=r"labevents\.csv: missing column\(s\) charttime"):
        MIMIC4Source(root, tables=["labevents"]).read()


def test_unparsable_date_names_file_and_column(tmp_path):
    root = _copy_demo(tmp_path, REQUIRED)
    admissions = pd.read_csv(DEMO / "hosp" / "admissions.csv.gz", dtype="str")
    admissions.loc[3, "admittime"] = "31/02/2150"
    _write_csv(admissions, root / "hosp" / "admissions.csv.gz")
    with pytest.raises(UserInputError, match=r"admissions\.csv\.gz: column admittime has 1 unparsable"):
        MIMIC4Source(root).read()


def test_unparsable_date_in_a_streamed_table_names_file_and_column(tmp_path):
    root = _copy_demo(tmp_path, REQUIRED)
    _write_csv(pd.DataFrame({"subject_id": [10035185] * 2, "hadm_id": [22580999] * 2, "itemid": [1, 2],
                             "charttime": ["2120-05-13 08:00:00", "yesterday"], "valuenum": [1.0, 2.0],
                             "valueuom": ["mg", "mg"]}), root / "hosp" / "labevents.csv")
    with pytest.raises(UserInputError, match=r"labevents\.csv: column charttime has an unparsable date.*yesterday"):
        MIMIC4Source(root, tables=["labevents"]).read()


def test_truncate_icd_keeps_categories():
    tables = MIMIC4Source(DEMO, truncate_icd=True).read()
    codes = tables.events.loc[tables.events["code"].str.startswith("DIAGNOSIS//"), "code"]
    bare = codes.str.split("//").str[3]
    assert not bare.str.contains(".", regex=False).any()
    assert "DIAGNOSIS//ICD//9//413" in set(codes) and "DIAGNOSIS//ICD//10//S03" in set(codes)


def test_cache_key_depends_on_options():
    base = MIMIC4Source(DEMO)
    assert base.cache_key() == MIMIC4Source(DEMO, tables=["diagnoses"]).cache_key()
    assert base.cache_key() != MIMIC4Source(DEMO, truncate_icd=True).cache_key()
    assert base.cache_key() != MIMIC4Source(DEMO, tables=["labevents"]).cache_key()
    assert (MIMIC4Source(DEMO, tables=["labevents"], lab_itemids=[1]).cache_key()
            != MIMIC4Source(DEMO, tables=["labevents"]).cache_key())
