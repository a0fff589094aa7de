"""MIMIC-III v1.4 (and its demo) CSV reader.

A visit is an admission (HADM_ID), ordered by ADMITTIME. Each admission contributes a
`HOSPITAL_ADMISSION//<ADMISSION_TYPE>` event at ADMITTIME; its diagnoses (and procedures,
which MIMIC-III does not time-stamp) are placed at DISCHTIME, as MEDS-ETL does for MIMIC-IV,
because that is when they are coded. Prescriptions are placed at STARTDATE.

The full release has UPPERCASE file names and headers, the public demo lowercase ones;
both `.csv` and `.csv.gz` are accepted (see `tables.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ehrlab.data import schema
from ehrlab.data.codes import normalize_icd9_diagnosis, normalize_icd9_procedure
from ehrlab.data.sources.base import CanonicalTables, Source, file_fingerprints
from ehrlab.data.sources.tables import check_on_bad_lines, check_root, locate_tables, read_table

log = logging.getLogger(__name__)

REQUIRED_TABLES = {"patients": "PATIENTS", "admissions": "ADMISSIONS", "diagnoses": "DIAGNOSES_ICD"}
OPTIONAL_TABLES = {"procedures": "PROCEDURES_ICD", "prescriptions": "PRESCRIPTIONS"}
INT, STR = pa.int64(), pa.string()
ICD_ROWS = {"subject_id": INT, "hadm_id": INT, "seq_num": INT, "icd9_code": STR}


class MIMIC3Source(Source):
    """Reads PATIENTS, ADMISSIONS, DIAGNOSES_ICD (required) and optional tables.

    Args:
        root: folder with the MIMIC-III CSV files.
        tables: event tables to read besides admissions: "diagnoses" (always read, it
            defines the cohort codes), "procedures", "prescriptions".
        truncate_icd: keep only the 3-character ICD category (off: full granularity).
        on_bad_lines: "error" (default) stops at a row whose number of fields differs from
            the header's, as a file cut mid-line ends with; "skip" drops such rows, with a
            warning and a count per file (see `tables.read_csv`).
    """

    name = "mimic3"

    def __init__(self, root: str | Path | None, tables: list[str] = ("diagnoses",), truncate_icd: bool = False,
                 on_bad_lines: str = "error"):
        self.root = check_root(root, self.name)
        self.tables = sorted(set(tables) | {"diagnoses"})
        self.truncate_icd = truncate_icd
        self.on_bad_lines = check_on_bad_lines(on_bad_lines)
        self.paths, _ = locate_tables(self.root, self.name, REQUIRED_TABLES, OPTIONAL_TABLES, self.tables)

    def cache_identity(self) -> dict:
        return {
            "files": file_fingerprints(list(self.paths.values())),
            "tables": self.tables,
            "truncate_icd": self.truncate_icd,
            "on_bad_lines": self.on_bad_lines,
        }

    def read(self) -> CanonicalTables:
        counts: dict[str, int] = {}
        patients = self._read(self.paths["patients"], {"subject_id": INT, "gender": STR, "dob": STR}, counts,
                              dates=["dob"])
        admissions = self._read(
            self.paths["admissions"],
            {"subject_id": INT, "hadm_id": INT, "admittime": STR, "dischtime": STR, "admission_type": STR,
             "ethnicity": STR},
            counts,
            dates=["admittime", "dischtime"],
            required=["subject_id", "hadm_id", "admittime", "dischtime"],
        )
        known_subject = admissions["subject_id"].isin(patients["subject_id"])
        counts["admissions_unknown_subject"] = int((~known_subject).sum())
        admissions = admissions.loc[known_subject]

        events = [self._admission_events(admissions)]
        diagnoses = self._read(self.paths["diagnoses"], ICD_ROWS, counts)
        events.append(self._coded_events(diagnoses, admissions, "diagnoses", counts,
                                         lambda c: normalize_icd9_diagnosis(c, truncate=self.truncate_icd),
                                         schema.DIAGNOSIS_PREFIX + "9//"))
        if "procedures" in self.paths:
            procedures = self._read(self.paths["procedures"], ICD_ROWS, counts)
            events.append(self._coded_events(procedures, admissions, "procedures", counts,
                                             lambda c: normalize_icd9_procedure(c, truncate=self.truncate_icd),
                                             schema.PROCEDURE_PREFIX + "9//"))
        if "prescriptions" in self.paths:
            events.append(self._prescription_events(admissions, counts))

        static = patients.rename(columns={"dob": "birth_date"})
        static["race"] = static["subject_id"].map(most_frequent(admissions, "ethnicity"))
        all_events = pd.concat(events, ignore_index=True)
        return CanonicalTables(
            events=schema.conform_events(all_events).sort_values(["subject_id", "time"], kind="stable", ignore_index=True),
            static=schema.conform_static(static),
            counts=counts,
        )

    def _read(self, path: Path, columns: dict[str, pa.DataType], counts: dict[str, int], **options) -> pd.DataFrame:
        return read_table(path, columns, on_bad_lines=self.on_bad_lines, counts=counts, **options)

    @staticmethod
    def _admission_events(admissions: pd.DataFrame) -> pd.DataFrame:
        kind = admissions["admission_type"].fillna("UNKNOWN").astype("str").str.upper()
        return pd.DataFrame({
            "subject_id": admissions["subject_id"],
            "time": admissions["admittime"],
            "code": "HOSPITAL_ADMISSION//" + kind,
            "visit_id": admissions["hadm_id"],
        })

    @staticmethod
    def _coded_events(rows, admissions, table, counts, normalize, prefix) -> pd.DataFrame:
        missing_code = rows["icd9_code"].isna() | (rows["icd9_code"].astype("str").str.strip() == "")
        counts[f"{table}_missing_code"] = int(missing_code.sum())
        rows = rows.loc[~missing_code]
        rows = rows.merge(admissions[["hadm_id", "dischtime"]], on="hadm_id", how="left")
        unknown = rows["dischtime"].isna()
        counts[f"{table}_unknown_admission"] = int(unknown.sum())
        if unknown.any():
            log.warning("mimic3: %d %s rows refer to unknown admissions; dropped", int(unknown.sum()), table)
        rows = rows.loc[~unknown].sort_values(["hadm_id", "seq_num"], kind="stable")
        return pd.DataFrame({
            "subject_id": rows["subject_id"].to_numpy(),
            "time": rows["dischtime"].to_numpy(),
            "code": (prefix + normalize(rows["icd9_code"])).to_numpy(),
            "visit_id": rows["hadm_id"].to_numpy(),
        })

    def _prescription_events(self, admissions, counts) -> pd.DataFrame:
        rows = self._read(self.paths["prescriptions"], {"subject_id": INT, "hadm_id": INT, "startdate": STR,
                                                        "drug": STR}, counts, dates=["startdate"])
        keep = rows["hadm_id"].isin(admissions["hadm_id"]) & rows["drug"].notna() & rows["startdate"].notna()
        counts["prescriptions_dropped_unknown_admission_or_missing_drug_or_date"] = int((~keep).sum())
        rows = rows.loc[keep]
        return pd.DataFrame({
            "subject_id": rows["subject_id"],
            "time": rows["startdate"],
            "code": schema.MEDICATION_PREFIX + rows["drug"].astype("str").str.strip(),
            "visit_id": rows["hadm_id"],
        })


def most_frequent(admissions: pd.DataFrame, column: str) -> pd.Series:
    """Each subject's most frequent non-null value of `column` (ties: the alphabetically first)."""
    counts = admissions.dropna(subset=[column]).groupby(["subject_id", column]).size().rename("n").reset_index()
    top = counts.sort_values(["subject_id", "n", column], ascending=[True, False, True], kind="stable")
    return top.drop_duplicates("subject_id").set_index("subject_id")[column]
