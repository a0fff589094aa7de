"""Long tables of visits and codes -> sparse visit and patient matrices over one vocabulary.

Every metric of the suite reads a `PatientRecords`; nothing downstream sees the long table
again. Input follows `ehrlab.data.schema.LONG_COLUMNS`: ``subject_id``, ``visit_id``,
``code`` (one row per code occurrence) and an optional ``time``.

Decisions:
- A visit is a *set* of codes: duplicate codes within a visit count once.
- Visits of a patient are ordered by their earliest ``time`` when the table has a ``time``
  column, otherwise by ``visit_id`` (ties in time are broken by ``visit_id``).
- Rows with a missing code are dropped (a visit made only of such rows disappears); a
  missing ``subject_id`` or ``visit_id`` is an input error.
- The three tables share one vocabulary: the sorted union of their codes, so a code id means
  the same code in every matrix.
- Tables that cannot be compared are refused (`check_comparable`): integer codes next to
  string codes, or a set sharing no code with the real training set.

`read_long_table` is the one reader of long-table files (Parquet or CSV) for every caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from ehrlab.data.schema import LONG_COLUMNS
from ehrlab.data.sequences import expand_ranges
from ehrlab.errors import UserInputError

PARQUET_SUFFIXES = (".parquet", ".pq")
# pandas.api.types.infer_dtype kinds of a code column that holds numbers, not code strings
NUMERIC_KINDS = {"integer", "floating", "mixed-integer-float", "decimal"}


@dataclass
class PatientRecords:
    """One data set as sparse matrices; rows of `visit_codes` are grouped by patient, in order.

    visit_codes: (n_visits, n_codes) 0/1 CSR, one row per visit.
    visit_patient: (n_visits,) row of the visit's patient (0 .. n_patients-1), non-decreasing.
    visit_position: (n_visits,) 0-based rank of the visit within its patient's record.
    """

    visit_codes: sparse.csr_matrix
    visit_patient: np.ndarray
    visit_position: np.ndarray
    n_patients: int

    @property
    def n_codes(self) -> int:
        return self.visit_codes.shape[1]

    @property
    def n_visits(self) -> int:
        return self.visit_codes.shape[0]

    @cached_property
    def patient_visit_counts(self) -> sparse.csr_matrix:
        """(n_patients, n_codes): in how many of the patient's visits each code appears."""
        visit_to_patient = sparse.csr_matrix(
            (np.ones(self.n_visits, dtype=np.int32), (self.visit_patient, np.arange(self.n_visits))),
            shape=(self.n_patients, self.n_visits),
        )
        return (visit_to_patient @ self.visit_codes).tocsr()

    @cached_property
    def patient_codes(self) -> sparse.csr_matrix:
        """(n_patients, n_codes) 0/1: the patient has the code in at least one visit."""
        flat = self.patient_visit_counts.copy()
        flat.data = np.ones_like(flat.data)
        return flat

    @cached_property
    def visits_per_patient(self) -> np.ndarray:
        return np.bincount(self.visit_patient, minlength=self.n_patients)

    @cached_property
    def codes_per_visit(self) -> np.ndarray:
        """Unique codes in each visit."""
        return np.diff(self.visit_codes.indptr)

    @cached_property
    def codes_per_patient(self) -> np.ndarray:
        """Unique codes across each patient's whole record (Table 12's codes/patient)."""
        return np.diff(self.patient_codes.indptr)

    @cached_property
    def visit_start(self) -> np.ndarray:
        """(n_patients + 1,) first visit row of each patient; patient i owns rows start[i]:start[i+1]."""
        return np.concatenate([[0], np.cumsum(self.visits_per_patient)])

    def subset(self, patients: np.ndarray) -> PatientRecords:
        """The records of the given patient rows (in the given order)."""
        patients = np.asarray(patients, dtype=np.int64)
        lengths = self.visits_per_patient[patients]
        visit_rows = expand_ranges(self.visit_start[patients], lengths)
        return PatientRecords(
            visit_codes=self.visit_codes[visit_rows],
            visit_patient=np.repeat(np.arange(len(patients)), lengths),
            visit_position=self.visit_position[visit_rows],
            n_patients=len(patients),
        )


def read_long_table(path: Path | str, source: str) -> pd.DataFrame:
    """Read one long table from Parquet (`.parquet`, `.pq`) or CSV (anything else, `.csv.gz` too).

    CSV codes are read as strings, so ICD codes like 0389 keep their leading zero. Parquet
    codes keep the type they were written with, so that `check_comparable` can refuse a tool's
    integer codes instead of matching "401" by accident. `source` is how the caller was given
    the path (`--synthetic`, `synthetic_path`); messages name it, and the table keeps
    `source=path` in `attrs["source"]` for the suite's own messages.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{source}: no such file {path}; give a long table in Parquet or CSV.")
    parquet = path.suffix in PARQUET_SUFFIXES
    try:
        table = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype={"code": "str"})
    except (OSError, ValueError) as error:
        raise UserInputError(f"{source}: cannot read {path} as {'Parquet' if parquet else 'CSV'}: {error}") from error
    table.attrs["source"] = f"{source}={path}"
    return table


def _describe(table: pd.DataFrame, name: str) -> str:
    source = table.attrs.get("source") if isinstance(table, pd.DataFrame) else None
    return f"the {name} table ({source})" if source else f"the {name} table"


def check_long_table(table: pd.DataFrame, name: str) -> None:
    """Raise `UserInputError` naming the table and what is wrong with it."""
    if not isinstance(table, pd.DataFrame):
        raise UserInputError(f"the {name} records must be a pandas DataFrame, got {type(table).__name__}")
    described = _describe(table, name)
    missing = [column for column in LONG_COLUMNS if column not in table.columns]
    if missing:
        raise UserInputError(
            f"{described} lacks column(s) {missing}; it has {list(table.columns)}. "
            f"A long table needs {LONG_COLUMNS} (and optionally `time`)."
        )
    for column in ("subject_id", "visit_id"):
        if table[column].isna().any():
            raise UserInputError(f"{described} has missing values in `{column}`; every row needs one.")
    if table["code"].notna().sum() == 0:
        raise UserInputError(
            f"{described} has no codes ({len(table)} rows, none with a code): an empty data set cannot be evaluated."
        )


def code_kind(codes: pd.Series) -> str:
    """"number" when the codes are integers or floats as read (a Parquet int64 column, a
    DataFrame of ints), "string" otherwise."""
    values = codes.cat.categories if isinstance(codes.dtype, pd.CategoricalDtype) else codes
    return "number" if pd.api.types.infer_dtype(values, skipna=True) in NUMERIC_KINDS else "string"


def _frequent_codes(codes: pd.Series, n: int = 3) -> str:
    """The most frequent codes (aggregates, not one patient's record) for a message."""
    return ", ".join(repr(code) for code in codes.value_counts().index[:n].tolist())


def check_comparable(tables: Mapping[str, pd.DataFrame], reference: str = "train") -> None:
    """Refuse tables the suite cannot compare, each with one message naming the table and the fix.

    Every table must be a usable long table (`check_long_table`), and every other table's
    codes must be of the reference's kind (integers vs strings, from the dtype as read) and
    share at least one code with it: otherwise every metric compares unrelated vocabularies.
    """
    for name, table in tables.items():
        check_long_table(table, name)
    reference_codes = tables[reference]["code"].dropna()
    reference_kind = code_kind(reference_codes)
    reference_vocabulary = pd.Index(reference_codes.astype("str").unique())
    described_reference = _describe(tables[reference], reference)
    for name, table in tables.items():
        if name == reference:
            continue
        codes = table["code"].dropna()
        kind = code_kind(codes)
        if kind != reference_kind:
            numeric, other = (name, reference) if kind == "number" else (reference, name)
            column = {name: codes, reference: reference_codes}
            raise UserInputError(
                f"{_describe(tables[numeric], numeric)} has numeric codes (read as {column[numeric].dtype}, e.g. "
                f"{_frequent_codes(column[numeric])}) but {_describe(tables[other], other)} has code strings "
                f"(e.g. {_frequent_codes(column[other])}): they cannot be matched. Write the {numeric} codes as "
                f"strings in the format of the {other} codes (a tool that wrote integers may have replaced the "
                "codes by its own ids: map them back through its vocabulary)."
            )
        if not pd.Index(codes.astype("str").unique()).isin(reference_vocabulary).any():
            digits = codes.astype("str").str.fullmatch(r"\d+").all()
            hint = (f" The {name} codes are all integers while the {reference} codes are not: did the tool "
                    "write its own integer ids instead of the codes?"
                    if digits and not reference_codes.astype("str").str.fullmatch(r"\d+").all() else "")
            raise UserInputError(
                f"{_describe(table, name)} shares no code with {described_reference}, so every metric would "
                f"compare unrelated vocabularies; most frequent {name} codes: {_frequent_codes(codes)}, "
                f"{reference} codes: {_frequent_codes(reference_codes)}.{hint} Write both in the same code format "
                "(namespace prefix such as 'DIAGNOSIS//ICD//9//', dots, leading zeros)."
            )


def _ordered_visits(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (subject_id, visit_id), sorted by patient then visit order."""
    if "time" in table.columns:
        visits = table.groupby(["subject_id", "visit_id"], sort=False, dropna=False)["time"].min().reset_index()
        visits = visits.sort_values(["subject_id", "time", "visit_id"], kind="stable", na_position="last")
    else:
        visits = table.loc[:, ["subject_id", "visit_id"]].drop_duplicates()
        visits = visits.sort_values(["subject_id", "visit_id"], kind="stable")
    return visits.reset_index(drop=True)


def _to_records(table: pd.DataFrame, vocabulary: pd.Index) -> PatientRecords:
    table = table.loc[table["code"].notna()]
    visits = _ordered_visits(table)
    patient = pd.factorize(visits["subject_id"], sort=True)[0]
    position = pd.Series(patient).groupby(patient).cumcount().to_numpy()
    visit_index = pd.MultiIndex.from_frame(visits.loc[:, ["subject_id", "visit_id"]])
    visit_row = visit_index.get_indexer(pd.MultiIndex.from_frame(table.loc[:, ["subject_id", "visit_id"]]))
    code_id = vocabulary.get_indexer(table["code"].astype("str"))
    visit_codes = sparse.csr_matrix(
        (np.ones(len(table), dtype=np.int32), (visit_row, code_id)), shape=(len(visits), len(vocabulary))
    )
    visit_codes.sum_duplicates()
    visit_codes.data[:] = 1  # a visit is a set: repeated codes count once
    return PatientRecords(
        visit_codes=visit_codes,
        visit_patient=patient.astype(np.int64),
        visit_position=position.astype(np.int64),
        n_patients=int(patient.max()) + 1,
    )


def build_records(tables: Mapping[str, pd.DataFrame]) -> tuple[np.ndarray, dict[str, PatientRecords]]:
    """Shared sorted vocabulary and one `PatientRecords` per named long table."""
    for name, table in tables.items():
        check_long_table(table, name)
    codes = pd.concat([table["code"].dropna().astype("str") for table in tables.values()])
    vocabulary = pd.Index(codes.unique()).sort_values()
    records = {name: _to_records(table, vocabulary) for name, table in tables.items()}
    return vocabulary.to_numpy(dtype=object), records
