"""Inputs the synthetic-EHR evaluation cannot compare are refused with one message, before
anything is written: in the suite's entry (`evaluate_synthetic`, which the runner calls too)
and through `python -m ehrlab.evaluate` (`error: ...` on stderr, exit status 2)."""

from __future__ import annotations

import pandas as pd
import pytest
from long_tables import split_by_patient, zipf_population

from ehrlab.errors import UserInputError
from ehrlab.evaluate import main
from ehrlab.evaluation.synthetic import evaluate_synthetic
from ehrlab.evaluation.synthetic.records import check_comparable, read_long_table

FAST = dict(n_bootstrap=2, discriminators=(), progress=False, write_plots=False, long_tail_max_records=50)


@pytest.fixture(scope="module")
def real_sets():
    """train, test, synthetic with dotted string codes such as '401.0'."""
    return split_by_patient(zipf_population(240, seed=4), 3)


def namespaced(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(code="DIAGNOSIS//ICD//9//" + table["code"])


def integer_codes(table: pd.DataFrame) -> pd.DataFrame:
    """What a tool that wrote its codes as integers leaves: '401.0' -> 401 (int64)."""
    return table.assign(code=table["code"].str.split(".").str[0].astype("int64"))


def run_cli(tmp_path, tables: dict[str, tuple[pd.DataFrame, str]], capsys) -> tuple[int, str]:
    """Write {role: (table, suffix)} and run the CLI on them; (exit status, stderr)."""
    argv = []
    for role, (table, suffix) in tables.items():
        path = tmp_path / f"{role}{suffix}"
        table.to_parquet(path) if suffix == ".parquet" else table.to_csv(path, index=False)
        argv += [f"--{role}", str(path)]
    status = main(argv + ["--out", str(tmp_path / "out"), "--n-bootstrap", "2", "--no-progress", "--discriminators"])
    return status, capsys.readouterr().err


def test_integer_codes_in_parquet_next_to_code_strings_are_refused(real_sets, tmp_path, capsys):
    train, test, synthetic = real_sets
    status, err = run_cli(tmp_path, {"train": (namespaced(train), ".csv"), "test": (namespaced(test), ".csv"),
                                     "synthetic": (integer_codes(synthetic), ".parquet")}, capsys)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"--synthetic={tmp_path / 'synthetic.parquet'}" in err and f"--train={tmp_path / 'train.csv'}" in err
    assert "numeric codes (read as int64, e.g. 400" in err and "'DIAGNOSIS//ICD//9//400.0'" in err
    assert not (tmp_path / "out").exists()


def test_integer_codes_in_csv_share_no_code_with_the_training_set(real_sets, tmp_path, capsys):
    # CSV has no types: the integers arrive as strings, and "no code in common" catches them
    train, test, synthetic = real_sets
    status, err = run_cli(tmp_path, {"train": (namespaced(train), ".csv"), "test": (namespaced(test), ".csv"),
                                     "synthetic": (integer_codes(synthetic), ".csv")}, capsys)
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert f"--synthetic={tmp_path / 'synthetic.csv'}" in err and "shares no code with the train table" in err
    assert "The synthetic codes are all integers while the train codes are not" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["synthetic int64 codes", "train int64 codes", "synthetic other format",
                                  "test other format"])
def test_the_suite_entry_refuses_tables_it_cannot_compare(real_sets, tmp_path, case):
    """The checks sit in `evaluate_synthetic`, so the runner's generator evaluation has them too."""
    tables = dict(zip(("train", "test", "synthetic"), real_sets))
    role, problem = case.split(" ", 1)
    tables[role] = integer_codes(tables[role]) if problem == "int64 codes" else namespaced(tables[role])
    message = "has numeric codes" if problem == "int64 codes" else f"the {role} table shares no code with the train"
    with pytest.raises(UserInputError, match=message):
        evaluate_synthetic(tables["train"], tables["test"], tables["synthetic"], tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem", ["no rows", "no code in any row", "no code column"])
def test_empty_or_incomplete_sets_are_refused_before_anything_is_written(real_sets, tmp_path, capsys, problem):
    train, test, synthetic = real_sets
    broken = {"no rows": synthetic.head(0), "no code in any row": synthetic.assign(code=pd.NA),
              "no code column": synthetic.drop(columns="code")}[problem]
    status, err = run_cli(tmp_path, {"train": (train, ".csv"), "test": (test, ".csv"),
                                     "synthetic": (broken, ".parquet")}, capsys)
    assert status == 2 and err.startswith(f"error: the synthetic table (--synthetic={tmp_path / 'synthetic.parquet'})")
    assert ("lacks column(s) ['code']" if problem == "no code column" else "has no codes") in err
    assert not (tmp_path / "out").exists()


def test_tables_of_one_kind_sharing_codes_are_accepted(real_sets):
    train, test, synthetic = real_sets
    check_comparable({"train": integer_codes(train), "test": integer_codes(test), "synthetic": integer_codes(synthetic)})
    categorical = synthetic.assign(code=synthetic["code"].astype("category"))  # as Parquet returns dictionary columns
    check_comparable({"train": train, "test": test, "synthetic": categorical})


def test_the_one_long_table_reader(tmp_path):
    table = pd.DataFrame({"subject_id": [1, 1], "visit_id": [10, 10], "code": ["0389", "V45.81"]})
    table.to_csv(tmp_path / "records.csv.gz", index=False)
    read = read_long_table(tmp_path / "records.csv.gz", "synthetic_path")
    assert read["code"].tolist() == ["0389", "V45.81"]  # CSV codes stay strings: the leading zero survives
    assert read.attrs["source"] == f"synthetic_path={tmp_path / 'records.csv.gz'}"
    integer_codes(table.assign(code=["38.9", "45.81"])).to_parquet(tmp_path / "records.parquet")
    assert read_long_table(tmp_path / "records.parquet", "--synthetic")["code"].dtype == "int64"  # kept as written
    with pytest.raises(UserInputError, match="synthetic_path: no such file"):
        read_long_table(tmp_path / "missing.parquet", "synthetic_path")
    (tmp_path / "broken.parquet").write_text("subject_id,visit_id,code\n")
    with pytest.raises(UserInputError, match="--test: cannot read .*broken.parquet as Parquet"):
        read_long_table(tmp_path / "broken.parquet", "--test")
