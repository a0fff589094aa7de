"""Damaged input files stop the readers with one message naming the file (and the line where
known), or, with on_bad_lines=skip, lose only their bad rows, counted. Each test damages a
copy of a fixture in tmp_path."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from support import MIMIC3_TINY, MIMIC4_DEMO, PROJECT_ROOT, run_cli
from ehrlab.data.cache import load_canonical
from ehrlab.data.sources.meds import MEDSSource
from ehrlab.data.sources.mimic3 import MIMIC3Source
from ehrlab.data.sources.mimic4 import MIMIC4Source
from ehrlab.errors import UserInputError

# DIAGNOSES_ICD.csv of mimic3-tiny: a header and 25 rows of 5 fields.
DIAGNOSES_LINES = (MIMIC3_TINY / "DIAGNOSES_ICD.csv").read_text().splitlines(keepends=True)
# ... cut in the middle of line 17, "16,5,502,1,"5849"".
CUT_DIAGNOSES = "".join(DIAGNOSES_LINES[:16]) + "16,5,502"
SKIP_HINT = "data.source.on_bad_lines=skip"


@pytest.fixture
def mimic3(tmp_path) -> Path:
    root = tmp_path / "mimic3"
    shutil.copytree(MIMIC3_TINY, root)
    return root


def _diagnoses(root: Path, lines: list[str]) -> Path:
    path = root / "DIAGNOSES_ICD.csv"
    path.write_text("".join(lines))
    return path


# -- rows with the wrong number of fields ---------------------------------------------------


def test_csv_cut_mid_line_names_file_and_line(mimic3):
    # Cut inside line 17, as an interrupted copy leaves it: "16,5,502" has 3 fields where the
    # header has 5. Read as before, the rows after the cut were lost with exit 0.
    (mimic3 / "DIAGNOSES_ICD.csv").write_text(CUT_DIAGNOSES)
    with pytest.raises(UserInputError) as error:
        MIMIC3Source(mimic3).read()
    message = str(error.value)
    assert "DIAGNOSES_ICD.csv: line 17 has 3 field(s), the header has 5" in message
    assert "truncated or corrupt" in message and SKIP_HINT in message


@pytest.mark.parametrize(("row", "fields"), [("99,1,101,7\n", 4), ("99,1,101,7,\"4019\",extra\n", 6)])
def test_row_with_too_few_or_too_many_fields_in_the_middle(mimic3, row, fields):
    _diagnoses(mimic3, [*DIAGNOSES_LINES[:5], row, *DIAGNOSES_LINES[5:]])
    with pytest.raises(UserInputError, match=rf"DIAGNOSES_ICD\.csv: line 6 has {fields} field\(s\), the header has 5"):
        MIMIC3Source(mimic3).read()


def test_skip_drops_bad_rows_with_a_warning_and_a_count(mimic3, tmp_path, caplog):
    clean = MIMIC3Source(mimic3, on_bad_lines="skip").read()
    # skip mode counts every file it read, zero included
    assert clean.counts["diagnoses_icd_bad_lines_skipped"] == 0 and clean.counts["patients_bad_lines_skipped"] == 0
    _diagnoses(mimic3, [*DIAGNOSES_LINES[:5], "99,1,101\n", *DIAGNOSES_LINES[5:], '26,6,601,2,"250'])
    source = MIMIC3Source(mimic3, on_bad_lines="skip")
    with caplog.at_level(logging.WARNING, logger="ehrlab.data.sources.tables"):
        tables = load_canonical(source, tmp_path / "cache")
    # skipped: the short row in the middle and the last one, cut inside its quoted value
    assert tables.counts["diagnoses_icd_bad_lines_skipped"] == 2
    assert any("DIAGNOSES_ICD.csv: skipped 2 row(s)" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(tables.events, clean.events)
    # the count is cached with the tables, and from there goes into data_stats.json
    cached = json.loads(next((tmp_path / "cache" / "canonical").glob("mimic3-*/counts.json")).read_text())
    assert cached["diagnoses_icd_bad_lines_skipped"] == 2
    # the default is strict, and is a different cache entry
    assert MIMIC3Source(mimic3).cache_key() != source.cache_key()
    with pytest.raises(UserInputError, match="its last line ends inside a quoted value"):
        load_canonical(MIMIC3Source(mimic3), tmp_path / "cache")


def test_bad_option_value_is_a_user_error():
    with pytest.raises(UserInputError, match="on_bad_lines='warn': choose error .* or skip"):
        MIMIC3Source(MIMIC3_TINY, on_bad_lines="warn")
    with pytest.raises(UserInputError, match="on_bad_lines"):
        MIMIC4Source(MIMIC4_DEMO, on_bad_lines="ignore")


@pytest.mark.parametrize("name", ["mimic3", "mimic4"])
def test_config_default_is_error_and_reaches_the_reader(name):
    data = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / f"{name}.yaml")
    assert data.source.on_bad_lines == "error"
    data.root = str(MIMIC3_TINY if name == "mimic3" else MIMIC4_DEMO)
    assert instantiate(OmegaConf.create({"data": data}).data.source).on_bad_lines == "error"


def test_streamed_mimic4_table_cut_mid_line_and_skipped(tmp_path, caplog):
    root = tmp_path / "mimic4"
    shutil.copytree(MIMIC4_DEMO, root)
    with gzip.open(MIMIC4_DEMO / "hosp" / "labevents.csv.gz", "rt") as src:
        text = src.read()
    (root / "hosp" / "labevents.csv.gz").unlink()
    cut = text[:len(text) * 2 // 3]
    cut = cut[:cut.rindex("\n") + 40]  # 40 characters into a row: a handful of its 16 fields
    (root / "hosp" / "labevents.csv").write_text(cut)
    line = cut.count("\n") + 1
    with pytest.raises(UserInputError, match=rf"labevents\.csv: line {line} has \d field\(s\), the header has 16"):
        MIMIC4Source(root, tables=["labevents"]).read()
    with caplog.at_level(logging.WARNING):
        tables = MIMIC4Source(root, tables=["labevents"], on_bad_lines="skip").read()
    assert tables.counts["labevents_bad_lines_skipped"] == 1
    assert int(tables.events["code"].str.startswith("LAB//").sum()) == line - 2  # every complete row
    assert any("labevents.csv: skipped 1 row(s)" in r.getMessage() for r in caplog.records)
    # the reader's own drop summary does not report the skipped row a second time
    assert not any("labevents_bad_lines_skipped" in r.getMessage() for r in caplog.records)


def test_csv_cut_inside_its_last_value(mimic3, caplog):
    # Cut inside a quoted last value, the row keeps its 5 fields and pyarrow would read "250"
    # for "25000": the unterminated quote tells.
    _diagnoses(mimic3, [*DIAGNOSES_LINES, '26,6,601,2,"250'])
    with pytest.raises(UserInputError, match=r"DIAGNOSES_ICD\.csv: its last line ends inside a quoted value"):
        MIMIC3Source(mimic3).read()
    # Cut inside an unquoted one, it looks like a file written without a final newline: a warning.
    _diagnoses(mimic3, [*DIAGNOSES_LINES, "26,6,601,2,250"])
    with caplog.at_level(logging.WARNING, logger="ehrlab.data.sources.tables"):
        MIMIC3Source(mimic3).read()
    assert any("DIAGNOSES_ICD.csv does not end with a newline" in r.getMessage() for r in caplog.records)


# -- damaged files --------------------------------------------------------------------------


def test_empty_files(mimic3):
    (mimic3 / "PATIENTS.csv").write_bytes(b"")
    with pytest.raises(UserInputError, match=r"PATIENTS\.csv: the file is empty"):
        MIMIC3Source(mimic3).read()
    (mimic3 / "PATIENTS.csv").unlink()
    with gzip.open(mimic3 / "PATIENTS.csv.gz", "wb") as out:
        out.write(b"")
    with pytest.raises(UserInputError, match=r"PATIENTS\.csv\.gz: the file has no header line"):
        MIMIC3Source(mimic3).read()


def test_binary_files(mimic3):
    pq.write_table(pa.table({"subject_id": [1, 2]}), mimic3 / "PATIENTS.csv")
    with pytest.raises(UserInputError, match=r"PATIENTS\.csv: line \d+ holds binary data \(NUL bytes\)"):
        MIMIC3Source(mimic3).read()
    # A gzipped file without its .gz suffix gets the fix in the message.
    (mimic3 / "PATIENTS.csv").write_bytes(gzip.compress((MIMIC3_TINY / "PATIENTS.csv").read_bytes()))
    with pytest.raises(UserInputError, match=r"It is gzip-compressed: name it \.csv\.gz"):
        MIMIC3Source(mimic3).read()
    # NUL bytes inside an otherwise textual file name their line.
    shutil.copy(MIMIC3_TINY / "PATIENTS.csv", mimic3)
    _diagnoses(mimic3, [*DIAGNOSES_LINES[:3], "3,1,101,3,\"40\x0019\"\n", *DIAGNOSES_LINES[4:]])
    with pytest.raises(UserInputError, match=r"DIAGNOSES_ICD\.csv: line 4 holds binary data"):
        MIMIC3Source(mimic3).read()


def test_text_that_is_not_utf8(mimic3):
    # In the first block: the line is named.
    admissions = (MIMIC3_TINY / "ADMISSIONS.csv").read_text().replace('"CATHOLIC"', '"CATH\u00c9OLIC"', 1)
    (mimic3 / "ADMISSIONS.csv").write_bytes(admissions.encode("latin-1"))
    with pytest.raises(UserInputError, match=r"ADMISSIONS\.csv: line 2 is not UTF-8 text: convert the file"):
        MIMIC3Source(mimic3).read()
    shutil.copy(MIMIC3_TINY / "ADMISSIONS.csv", mimic3)
    # Further down, in a column that is read: pyarrow's column and row are named.
    rows = [f"{i},1,101,{i},\"4019\"\n" for i in range(100, 5100)]  # ~100 KiB, past the first block
    path = mimic3 / "DIAGNOSES_ICD.csv"
    path.write_bytes("".join([DIAGNOSES_LINES[0], *rows]).encode() + b'5100,1,101,1,"40\xe919"\n')
    with pytest.raises(UserInputError, match=r"DIAGNOSES_ICD\.csv: line 5002, column icd9_code is not UTF-8 text"):
        MIMIC3Source(mimic3).read()


def test_truncated_gzip(tmp_path, mimic3):
    # A small file: the cut shows while reading its header.
    data = gzip.compress((MIMIC3_TINY / "DIAGNOSES_ICD.csv").read_bytes())
    (mimic3 / "DIAGNOSES_ICD.csv").unlink()
    (mimic3 / "DIAGNOSES_ICD.csv.gz").write_bytes(data[:-20])
    with pytest.raises(UserInputError, match=r"DIAGNOSES_ICD\.csv\.gz: could not be read .*truncated or corrupt"):
        MIMIC3Source(mimic3).read()
    # A large streamed one: the cut shows at the end of the stream.
    root = tmp_path / "mimic4"
    shutil.copytree(MIMIC4_DEMO, root)
    labs = root / "hosp" / "labevents.csv.gz"
    labs.write_bytes(labs.read_bytes()[: labs.stat().st_size // 2])
    with pytest.raises(UserInputError, match=r"labevents\.csv\.gz: .*truncated or corrupt \(re-download it"):
        MIMIC4Source(root, tables=["labevents"]).read()
    # not gzip at all
    labs.write_bytes(b"subject_id,hadm_id\n1,2\n")
    with pytest.raises(UserInputError, match=r"labevents\.csv\.gz: could not be read"):
        MIMIC4Source(root, tables=["labevents"]).read()


def test_bad_value_names_file_line_and_column(mimic3):
    _diagnoses(mimic3, [*DIAGNOSES_LINES[:3], '3,1,one-o-one,3,"4019"\n', *DIAGNOSES_LINES[4:]])
    with pytest.raises(UserInputError, match=r"DIAGNOSES_ICD\.csv: could not read it as CSV .*line 4, column hadm_id:"):
        MIMIC3Source(mimic3).read()


# -- MEDS Parquet ---------------------------------------------------------------------------


def _meds(root: Path) -> Path:
    shard = root / "data" / "0.parquet"
    shard.parent.mkdir(parents=True)
    n = 20_000
    pq.write_table(pa.table({
        "subject_id": pa.array([i // 10 for i in range(n)], pa.int64()),
        "time": pa.array(pd.date_range("2150-01-01", periods=n, freq="h"), pa.timestamp("us")),
        "code": pa.array([f"DIAGNOSIS//ICD//9//{4000 + i % 97}" for i in range(n)]),
    }), shard)
    (root / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([0, 1], pa.int64()), "split": ["train", "held_out"]}),
                   root / "metadata" / "subject_splits.parquet")
    return shard


def test_truncated_or_corrupt_parquet(tmp_path):
    shard = _meds(tmp_path / "meds")
    data = shard.read_bytes()
    assert len(MEDSSource(tmp_path / "meds").read().events) == 20_000
    shard.write_bytes(data[: len(data) // 2])  # the footer is gone
    with pytest.raises(UserInputError, match=r"0\.parquet: not a readable Parquet file .*truncated or corrupt"):
        MEDSSource(tmp_path / "meds").read()
    damaged = bytearray(data)
    damaged[len(data) // 3: len(data) // 3 + 200] = bytes(200)  # a data page zeroed, footer intact
    shard.write_bytes(bytes(damaged))
    with pytest.raises(UserInputError, match=r"0\.parquet: not a readable Parquet file .*truncated or corrupt"):
        MEDSSource(tmp_path / "meds").read()
    shard.write_bytes(data)
    splits = tmp_path / "meds" / "metadata" / "subject_splits.parquet"
    splits.write_bytes(splits.read_bytes()[:-10])
    with pytest.raises(UserInputError, match=r"subject_splits\.parquet: not a readable Parquet file"):
        MEDSSource(tmp_path / "meds").read()


# -- the command line -----------------------------------------------------------------------


def test_cli_exits_non_zero_with_one_message(mimic3, tmp_path):
    (mimic3 / "DIAGNOSES_ICD.csv").write_text(CUT_DIAGNOSES)
    result = run_cli("run.py", "data=mimic3", f"data.root={mimic3}", "stage=prepare", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}", env_extra={"EHRLAB_CACHE": str(tmp_path / "cache")})
    assert result.returncode != 0
    assert "DIAGNOSES_ICD.csv: line 17 has 3 field(s), the header has 5" in result.stderr
    assert "Traceback" not in result.stderr
