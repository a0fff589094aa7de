"""MIMIC-IV (v2.x, and its public demo) CSV reader.

Required: hosp/patients, hosp/admissions, hosp/diagnoses_icd (ICD-9 and ICD-10, told apart
by `icd_version`). Optional, by the `tables` option: hosp/procedures_icd, prescriptions,
labevents and icu/inputevents, outputevents, procedureevents, chartevents; a requested
optional table that is missing is a logged warning and a count, not an error.

Codes and times follow MEDS-ETL's MIMIC-IV conventions (shared with the `mimic3` reader):

| table           | code                                   | time       | numeric_value |
|-----------------|----------------------------------------|------------|---------------|
| admissions      | HOSPITAL_ADMISSION//<admission_type>   | admittime  | null          |
| diagnoses_icd   | DIAGNOSIS//ICD//<9/10>//<dotted code>  | dischtime  | null          |
| procedures_icd  | PROCEDURE//ICD//<9/10>//<dotted code>  | chartdate  | null          |
| prescriptions   | MEDICATION//<drug>                     | starttime  | null          |
| labevents       | LAB//<itemid>//<valueuom or UNK>       | charttime  | valuenum      |
| inputevents     | INFUSION//<itemid>//<amountuom or UNK> | starttime  | amount        |
| outputevents    | OUTPUT//<itemid>//<valueuom or UNK>    | charttime  | value         |
| procedureevents | PROCEDURE//ITEM//<itemid>              | starttime  | null          |
| chartevents     | CHART//<itemid>//<valueuom or UNK>     | charttime  | valuenum      |

Diagnoses are placed at the admission's discharge time because that is when they are coded
(MEDS-ETL does the same); procedures carry their own `chartdate` (falling back to the
discharge time where it is empty). visit_id is the hadm_id; labevents may lie outside any
admission (null hadm_id) and keep a null visit_id.

Static facts: MIMIC-IV shifts dates per patient and publishes only `anchor_age` at
`anchor_year`, so the birth date is taken as 1 January of anchor_year - anchor_age (the
true date is unknowable; the error is under a year). Race is the patient's most frequent
`admissions.race` (ties go to the value of the latest admission, the most recent
self-report).

Nothing is dropped silently: rows of an unknown subject or admission, or without a time or
code, are removed, counted in `CanonicalTables.counts` under `<table>_<reason>` and logged.

The large tables (labevents ~118 M rows, chartevents ~313 M in the full release; the ICU
tables and prescriptions are millions too) are streamed in blocks with pyarrow, reading only
the needed columns and filtering by itemid (`lab_itemids`, `chart_itemids`) and by known
subjects/admissions block by block, so the whole file is never held in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ehrlab.data import schema
from ehrlab.data.codes import normalize_diagnosis, normalize_procedure
from ehrlab.data.sources.base import CanonicalTables, Source, file_fingerprints
from ehrlab.data.sources.tables import check_on_bad_lines, check_root, locate_tables, read_csv, read_table
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

UNKNOWN_UNIT = "UNK"
INT, FLOAT, STR = pa.int64(), pa.float64(), pa.string()


@dataclass(frozen=True)
class ItemTable:
    """An itemid-coded measurement table and how its rows become events."""

    file: str  # path under the root, without suffix
    code_prefix: str  # the code is <code_prefix>//<itemid>[//<unit>]
    time: str  # column giving the event time
    value: str | None  # column giving numeric_value (None: null)
    unit: str | None  # column appended to the code (None: no unit part)
    visit_nullable: bool  # rows without hadm_id are kept (labs can be outpatient)


ITEM_TABLES = {
    "labevents": ItemTable("hosp/labevents", "LAB", "charttime", "valuenum", "valueuom", True),
    "inputevents": ItemTable("icu/inputevents", "INFUSION", "starttime", "amount", "amountuom", False),
    "outputevents": ItemTable("icu/outputevents", "OUTPUT", "charttime", "value", "valueuom", False),
    "procedureevents": ItemTable("icu/procedureevents", "PROCEDURE//ITEM", "starttime", None, None, False),
    "chartevents": ItemTable("icu/chartevents", "CHART", "charttime", "valuenum", "valueuom", False),
}
OPTIONAL_TABLES = {
    "procedures": "hosp/procedures_icd",
    "prescriptions": "hosp/prescriptions",
    **{name: spec.file for name, spec in ITEM_TABLES.items()},
}
REQUIRED_TABLES = {
    "patients": "hosp/patients",
    "admissions": "hosp/admissions",
    "diagnoses": "hosp/diagnoses_icd",
}


class MIMIC4Source(Source):
    """Reads a MIMIC-IV release (folders `hosp/` and `icu/`) into canonical tables.

    Args:
        root: the MIMIC-IV folder (holding `hosp/` and, for ICU tables, `icu/`).
        tables: event tables besides admissions: "diagnoses" (always read) and any of
            "procedures", "prescriptions", "labevents", "inputevents", "outputevents",
            "procedureevents", "chartevents".
        truncate_icd: keep only the 3-character ICD category (default: full codes).
        lab_itemids: read only these labevents itemids (default: all).
        chart_itemids: read only these chartevents itemids (default: all; the full table has
            ~313 M rows, so selecting items is strongly advised).
        on_bad_lines: "error" (default) stops at a row whose number of fields differs from
            the header's, as a file cut mid-line ends with; "skip" drops such rows, with a
            warning and a count per file (see `tables.read_csv`).
    """

    name = "mimic4"

    def __init__(
        self,
        root: str | Path | None,
        tables: Sequence[str] = ("diagnoses",),
        truncate_icd: bool = False,
        lab_itemids: Sequence[int] | None = None,
        chart_itemids: Sequence[int] | None = None,
        on_bad_lines: str = "error",
    ):
        self.root = check_root(root, self.name)
        tables = [tables] if isinstance(tables, str) else list(tables)
        self.tables = sorted(set(tables) | {"diagnoses"})
        self.truncate_icd = bool(truncate_icd)
        self.itemids = {
            "labevents": _itemid_list(lab_itemids, "lab_itemids"),
            "chartevents": _itemid_list(chart_itemids, "chart_itemids"),
        }
        self.on_bad_lines = check_on_bad_lines(on_bad_lines)
        self.paths, self.missing_tables = locate_tables(self.root, self.name, REQUIRED_TABLES, OPTIONAL_TABLES,
                                                        self.tables)

    def cache_identity(self) -> dict:
        return {
            "files": file_fingerprints(list(self.paths.values())),
            "tables": self.tables,
            "truncate_icd": self.truncate_icd,
            "itemids": self.itemids,
            "on_bad_lines": self.on_bad_lines,
        }

    def read(self) -> CanonicalTables:
        counts = {f"{table}_table_missing": 1 for table in self.missing_tables}
        patients = self._read_patients(counts)
        admissions = self._read_admissions(patients, counts)
        events = [_admission_events(admissions)]
        events.append(self._icd_events("diagnoses", admissions, counts))
        if "procedures" in self.paths:
            events.append(self._icd_events("procedures", admissions, counts))
        if "prescriptions" in self.paths:
            events.append(self._prescription_events(patients, admissions, counts))
        for table, spec in ITEM_TABLES.items():
            if table in self.paths:
                events.append(self._item_events(table, spec, patients, admissions, counts))

        for reason, n in counts.items():
            # Missing tables, unselected items and skipped bad lines are reported where they arise.
            if n and not reason.endswith(("_table_missing", "_itemid_not_selected", "_bad_lines_skipped")):
                log.warning("mimic4: dropped %d rows (%s)", n, reason)
        static = patients.copy()
        static["race"] = static["subject_id"].map(_most_frequent_race(admissions))
        all_events = schema.conform_events(pd.concat(events, ignore_index=True))
        return CanonicalTables(
            events=all_events.sort_values(["subject_id", "time"], kind="stable", ignore_index=True),
            static=schema.conform_static(static).sort_values("subject_id", ignore_index=True),
            counts=counts,
        )

    # -- reading -----------------------------------------------------------------------------

    def _read(self, path: Path, columns: dict[str, pa.DataType], counts: dict[str, int], **options) -> pd.DataFrame:
        return read_table(path, columns, on_bad_lines=self.on_bad_lines, counts=counts, **options)

    def _stream(self, table: str, columns: dict[str, pa.DataType], counts: dict[str, int], *, times: list[str],
                select: Callable) -> pa.Table:
        """A large table's `columns`, streamed block by block, keeping what `select(batch)` returns.

        `times` are parsed as timestamps (microseconds) in each block; an unparsable one is an
        error naming the file and column, never a silent null.
        """
        path = self.paths[table]
        return read_csv(path, columns, select=lambda batch: _parse_times(select(batch), times, path),
                        on_bad_lines=self.on_bad_lines, counts=counts)

    # -- required tables -------------------------------------------------------------------

    def _read_patients(self, counts: dict[str, int]) -> pd.DataFrame:
        """subject_id, gender and the birth date implied by anchor_year - anchor_age."""
        path = self.paths["patients"]
        patients = self._read(path, {"subject_id": INT, "gender": STR, "anchor_age": INT, "anchor_year": INT}, counts)
        birth_year = patients["anchor_year"] - patients["anchor_age"]
        counts["patients_missing_anchor"] = int(birth_year.isna().sum())
        # Offsets from 1970 in whole years are 1 January of each birth year.
        years = birth_year.fillna(1970).astype("int64").to_numpy() - 1970
        birth_date = years.astype("datetime64[Y]").astype("datetime64[us]")
        birth_date[birth_year.isna().to_numpy()] = np.datetime64("NaT")
        gender = patients["gender"].str.strip().str.upper()
        return pd.DataFrame({
            "subject_id": patients["subject_id"].astype("int64"),
            "birth_date": birth_date,
            "gender": gender.where(gender.isin(["F", "M"]), "U"),
        })

    def _read_admissions(self, patients: pd.DataFrame, counts: dict[str, int]) -> pd.DataFrame:
        """Admissions of known patients with both admit and discharge times.

        MIMIC-IV v1 called the race column `ethnicity`; either is accepted.
        """
        admissions = self._read(
            self.paths["admissions"],
            {"subject_id": INT, "hadm_id": INT, "admittime": STR, "dischtime": STR, "admission_type": STR,
             "race": STR, "ethnicity": STR},
            counts,
            dates=["admittime", "dischtime"],
            required=["subject_id", "hadm_id", "admittime", "dischtime", "admission_type"],
        )
        admissions["race"] = admissions["race"].fillna(admissions.pop("ethnicity"))
        known = admissions["subject_id"].isin(patients["subject_id"])
        counts["admissions_unknown_subject"] = int((~known).sum())
        timed = admissions["admittime"].notna() & admissions["dischtime"].notna()
        counts["admissions_missing_time"] = int((known & ~timed).sum())
        return admissions.loc[known & timed].reset_index(drop=True)

    # -- event tables ----------------------------------------------------------------------

    def _icd_events(self, table: str, admissions: pd.DataFrame, counts: dict[str, int]) -> pd.DataFrame:
        """Diagnoses (at dischtime) or procedures (at chartdate, else dischtime), dotted codes."""
        path = self.paths[table]
        columns = {"subject_id": INT, "hadm_id": INT, "seq_num": INT, "icd_code": STR, "icd_version": INT}
        if table == "procedures":
            columns["chartdate"] = STR
        rows = self._read(path, columns, counts, dates=["chartdate"] if table == "procedures" else [])
        missing_code = rows["icd_code"].isna() | (rows["icd_code"].str.strip() == "") | rows["icd_version"].isna()
        counts[f"{table}_missing_code"] = int(missing_code.sum())
        rows = rows.loc[~missing_code]
        bad_version = ~rows["icd_version"].isin([9, 10])
        if bad_version.any():
            raise UserInputError(
                f"{path}: column icd_version must be 9 or 10; found {rows.loc[bad_version, 'icd_version'].iloc[0]!r}."
            )
        rows = rows.merge(admissions[["hadm_id", "dischtime"]], on="hadm_id", how="left")
        unknown = rows["dischtime"].isna()
        counts[f"{table}_unknown_admission"] = int(unknown.sum())
        rows = rows.loc[~unknown].sort_values(["hadm_id", "seq_num"], kind="stable")
        version = rows["icd_version"].astype("int64")
        if table == "diagnoses":
            codes = normalize_diagnosis(rows["icd_code"], version, truncate=self.truncate_icd)
            prefix, time = schema.DIAGNOSIS_PREFIX, rows["dischtime"]
        else:
            codes = normalize_procedure(rows["icd_code"], version, truncate=self.truncate_icd)
            prefix, time = schema.PROCEDURE_PREFIX, rows["chartdate"].fillna(rows["dischtime"])
        return pd.DataFrame({
            "subject_id": rows["subject_id"].to_numpy(),
            "time": time.to_numpy(),
            "code": (prefix + version.astype("str") + "//" + codes).to_numpy(),
            "visit_id": rows["hadm_id"].to_numpy(),
        })

    def _prescription_events(self, patients, admissions, counts) -> pd.DataFrame:
        table = self._stream(
            "prescriptions",
            {"subject_id": INT, "hadm_id": INT, "starttime": STR, "drug": STR},
            counts,
            times=["starttime"],
            select=_known_rows("prescriptions", patients, admissions, counts, time="starttime",
                               code="drug", visit_nullable=False),
        )
        code = pc.binary_join_element_wise(schema.MEDICATION_PREFIX, pc.utf8_trim_whitespace(table["drug"]), "")
        return _to_frame(table["subject_id"], table["starttime"], code, None, table["hadm_id"])

    def _item_events(self, table: str, spec: ItemTable, patients, admissions, counts) -> pd.DataFrame:
        columns = {"subject_id": INT, "hadm_id": INT, "itemid": INT, spec.time: STR}
        if spec.value:
            columns[spec.value] = FLOAT
        if spec.unit:
            columns[spec.unit] = STR
        selected = self.itemids.get(table)
        known = _known_rows(table, patients, admissions, counts, time=spec.time, code="itemid",
                            visit_nullable=spec.visit_nullable)
        if selected is None:
            select = known
        else:
            # Unselected items are the user's choice, not bad data: counted apart, and
            # removed first so the drop counts below describe selected items only.
            wanted = pa.array(selected, pa.int64())
            counts[f"{table}_itemid_not_selected"] = 0

            def select(batch: pa.RecordBatch) -> pa.RecordBatch:
                chosen = batch.filter(pc.fill_null(pc.is_in(batch["itemid"], value_set=wanted), False))
                counts[f"{table}_itemid_not_selected"] += len(batch) - len(chosen)
                return known(chosen)

        rows = self._stream(table, columns, counts, times=[spec.time], select=select)
        parts = [spec.code_prefix, pc.cast(rows["itemid"], pa.string())]
        if spec.unit:
            parts.append(pc.fill_null(pc.utf8_trim_whitespace(rows[spec.unit]), UNKNOWN_UNIT))
        code = pc.binary_join_element_wise(*parts, "//")
        value = rows[spec.value] if spec.value else None
        return _to_frame(rows["subject_id"], rows[spec.time], code, value, rows["hadm_id"])


# -- helpers -------------------------------------------------------------------------------


def _itemid_list(itemids, option: str) -> list[int] | None:
    if itemids is None:
        return None
    try:
        return sorted({int(i) for i in itemids})
    except (TypeError, ValueError):
        raise UserInputError(f"data.{option} must be a list of integer itemids, got {itemids!r}.") from None


def _admission_events(admissions: pd.DataFrame) -> pd.DataFrame:
    kind = admissions["admission_type"].fillna("UNKNOWN").str.strip().str.upper()
    return pd.DataFrame({
        "subject_id": admissions["subject_id"],
        "time": admissions["admittime"],
        "code": "HOSPITAL_ADMISSION//" + kind,
        "visit_id": admissions["hadm_id"],
    })


def _most_frequent_race(admissions: pd.DataFrame) -> pd.Series:
    """subject_id -> the race recorded most often; ties go to the latest admission's value."""
    tally = (
        admissions.dropna(subset=["race"])
        .groupby(["subject_id", "race"], as_index=False)
        .agg(n=("hadm_id", "size"), latest=("admittime", "max"))
        .sort_values(["subject_id", "n", "latest"], ascending=[True, False, False])
        .drop_duplicates("subject_id")
    )
    return tally.set_index("subject_id")["race"]


def _known_rows(table, patients, admissions, counts, *, time, code, visit_nullable) -> Callable:
    """A per-block filter: the rows of known subjects and admissions with a time and a code.

    Each reason for dropping is counted separately in `counts` (first failing reason wins).
    """
    subjects = pa.array(patients["subject_id"].to_numpy(), pa.int64())
    admission_ids = pa.array(admissions["hadm_id"].to_numpy(), pa.int64())
    for reason in ("unknown_subject", "unknown_admission", "missing_time", "missing_code"):
        counts.setdefault(f"{table}_{reason}", 0)

    def select(batch: pa.RecordBatch) -> pa.RecordBatch:
        checks = {
            "unknown_subject": pc.is_in(batch["subject_id"], value_set=subjects),
            "unknown_admission": pc.is_in(batch["hadm_id"], value_set=admission_ids),
            "missing_time": pc.is_valid(batch[time]),
            "missing_code": pc.is_valid(batch[code]),
        }
        if visit_nullable:
            checks["unknown_admission"] = pc.or_(checks["unknown_admission"], pc.is_null(batch["hadm_id"]))
        kept = pa.array(np.ones(len(batch), dtype=bool))
        for reason, ok in checks.items():
            ok = pc.fill_null(ok, False)
            counts[f"{table}_{reason}"] += int(pc.sum(pc.and_(kept, pc.invert(ok))).as_py() or 0)
            kept = pc.and_(kept, ok)
        return batch.filter(kept)

    return select


def _parse_times(batch: pa.RecordBatch, times: list[str], path: Path) -> pa.RecordBatch:
    arrays = []
    for name in batch.schema.names:
        column = batch[name]
        if name in times:
            try:
                column = pc.cast(column, pa.timestamp("us"))
            except pa.ArrowInvalid as error:
                raise UserInputError(
                    f"{path}: column {name} has an unparsable date ({error}); "
                    f"expected dates like 2150-01-31 12:00:00."
                ) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _to_frame(subject_id, time, code, numeric_value, visit_id) -> pd.DataFrame:
    """Canonical event columns from pyarrow columns (one conversion, no per-row work)."""
    n = len(subject_id)
    if numeric_value is None:
        numeric_value = pa.nulls(n, pa.float32())
    table = pa.table({
        "subject_id": subject_id,
        "time": time,
        "code": code,
        "numeric_value": pc.cast(numeric_value, pa.float32()),
        "visit_id": visit_id,
    })
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
