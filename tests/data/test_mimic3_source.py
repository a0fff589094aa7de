"""The mimic3 reader on hand-written MIMIC-III files (tests/fixtures/mimic3-tiny), in both
header cases, gzipped or not, and its errors."""

from __future__ import annotations

import gzip
import shutil

import pandas as pd
import pytest

from support import MIMIC3_TINY
from ehrlab.data.cache import load_canonical
from ehrlab.data.sources.mimic3 import MIMIC3Source
from ehrlab.errors import UserInputError


def lowercase_gzipped_copy(tmp_path):
    """The demo's style: lowercase file names and headers, gzipped."""
    for path in MIMIC3_TINY.glob("*.csv"):
        header, *rows = path.read_text().splitlines(keepends=True)
        with gzip.open(tmp_path / (path.stem.lower() + ".csv.gz"), "wt") as out:
            out.write(header.lower() + "".join(rows))
    return tmp_path


def test_reads_events_static_and_counts():
    tables = MIMIC3Source(MIMIC3_TINY).read()
    events, static = tables.events, tables.static
    diagnoses = events.loc[events["code"].str.startswith("DIAGNOSIS//")]
    assert len(diagnoses) == 23  # 25 rows, one with an unknown admission, one without a code
    assert tables.counts == {"admissions_unknown_subject": 0, "diagnoses_missing_code": 1,
                             "diagnoses_unknown_admission": 1}
    patient2 = diagnoses.loc[diagnoses["visit_id"] == 201, "code"].tolist()
    assert patient2 == ["DIAGNOSIS//ICD//9//E849.7", "DIAGNOSIS//ICD//9//V45.81", "DIAGNOSIS//ICD//9//401.9"]
    # diagnoses are dated at discharge; each admission adds an event at its admission time
    admission = events.loc[(events["visit_id"] == 101) & events["code"].str.startswith("HOSPITAL_ADMISSION")]
    assert admission["time"].tolist() == [pd.Timestamp("2150-01-01 08:00:00")]
    assert admission["code"].tolist() == ["HOSPITAL_ADMISSION//EMERGENCY"]
    assert set(diagnoses.loc[diagnoses["visit_id"] == 101, "time"]) == {pd.Timestamp("2150-01-05 12:00:00")}
    assert str(events["subject_id"].dtype) == "int64" and events["numeric_value"].isna().all()
    assert static.set_index("subject_id").loc[2, "race"] == "BLACK/AFRICAN AMERICAN"
    assert static.set_index("subject_id").loc[7, "birth_date"] == pd.Timestamp("1850-06-01")


def test_lowercase_gzipped_headers_read_the_same(tmp_path):
    upper = MIMIC3Source(MIMIC3_TINY).read()
    lower = MIMIC3Source(lowercase_gzipped_copy(tmp_path)).read()
    pd.testing.assert_frame_equal(upper.events, lower.events)
    pd.testing.assert_frame_equal(upper.static, lower.static)


def test_truncation_option():
    events = MIMIC3Source(MIMIC3_TINY, truncate_icd=True).read().events
    assert "DIAGNOSIS//ICD//9//250" in set(events["code"]) and "DIAGNOSIS//ICD//9//E849" in set(events["code"])


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = tmp_path / "mimic3"
    shutil.copytree(MIMIC3_TINY, root)
    first = load_canonical(MIMIC3Source(root), tmp_path / "cache")
    monkeypatch.setattr(MIMIC3Source, "read", lambda self: pytest.fail("the cache should have been used"))
    cached = load_canonical(MIMIC3Source(root), tmp_path / "cache")
    pd.testing.assert_frame_equal(first.events, cached.events)
    monkeypatch.undo()
    # a changed input file is a new cache entry
    with open(root / "DIAGNOSES_ICD.csv", "a") as out:
        out.write('26,6,601,2,"25000"\n')
    changed = load_canonical(MIMIC3Source(root), tmp_path / "cache")
    assert len(changed.events) == len(first.events) + 1


def test_missing_directory_table_and_column(tmp_path):
    with pytest.raises(UserInputError, match="not a directory"):
        MIMIC3Source(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="add data.root="):
        MIMIC3Source(None)
    root = tmp_path / "partial"
    shutil.copytree(MIMIC3_TINY, root)
    (root / "DIAGNOSES_ICD.csv").unlink()
    with pytest.raises(UserInputError, match="DIAGNOSES_ICD.csv or DIAGNOSES_ICD.csv.gz"):
        MIMIC3Source(root)
    shutil.copy(MIMIC3_TINY / "DIAGNOSES_ICD.csv", root)
    admissions = pd.read_csv(root / "ADMISSIONS.csv").drop(columns=["DISCHTIME"])
    admissions.to_csv(root / "ADMISSIONS.csv", index=False)
    with pytest.raises(UserInputError, match=r"ADMISSIONS.csv: missing column\(s\) dischtime"):
        MIMIC3Source(root).read()


def test_unparsable_date_names_file_and_column(tmp_path):
    root = tmp_path / "baddate"
    shutil.copytree(MIMIC3_TINY, root)
    text = (root / "ADMISSIONS.csv").read_text().replace("2150-06-01 09:30:00", "June first")
    (root / "ADMISSIONS.csv").write_text(text)
    with pytest.raises(UserInputError, match="ADMISSIONS.csv: column admittime has 1 unparsable date.*June first"):
        MIMIC3Source(root).read()


def test_unknown_table_option():
    with pytest.raises(UserInputError, match="unknown table"):
        MIMIC3Source(MIMIC3_TINY, tables=["diagnoses", "labevents"])
