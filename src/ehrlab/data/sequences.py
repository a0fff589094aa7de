"""Patients as sequences of visits of code ids, stored flat (CSR-style) for speed.

A cohort of 50,000 patients is three flat arrays and two offset arrays, not 50,000 Python
lists: slicing a split, saving to the cache and padding a batch are all vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ehrlab.data.schema import UNKNOWN_CODE


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for each (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Position within each range, then shift each range to its start.
    range_of = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    return np.asarray(starts, dtype=np.int64)[range_of] + (np.arange(total) - first[range_of])


@dataclass
class PatientSequences:
    """Visits of `n_patients` patients; patient p owns visits visit_offsets[p]:visit_offsets[p+1]
    and visit v owns codes codes[code_offsets[v]:code_offsets[v+1]] (ids into a vocabulary,
    distinct within a visit, in the source's order: primary diagnosis first)."""

    subject_id: np.ndarray  # int64 [P]
    visit_offsets: np.ndarray  # int64 [P + 1]
    code_offsets: np.ndarray  # int64 [V + 1]
    codes: np.ndarray  # int32 [C]
    visit_days: np.ndarray  # float64 [V], days since the patient's first kept visit
    age: np.ndarray  # float32 [P], years at the last kept visit
    gender: np.ndarray  # int64 [P], 0 F, 1 M, 2 unknown
    label: np.ndarray  # int64 [P], -1 where the task has no label

    @property
    def n_patients(self) -> int:
        return len(self.subject_id)

    @property
    def n_visits(self) -> int:
        return len(self.visit_days)

    def visits_per_patient(self) -> np.ndarray:
        return np.diff(self.visit_offsets)

    def codes_per_visit(self) -> np.ndarray:
        return np.diff(self.code_offsets)

    def subset(self, patients: np.ndarray) -> PatientSequences:
        """The patients at the given positions, in that order."""
        patients = np.asarray(patients, dtype=np.int64)
        n_visits = self.visits_per_patient()[patients]
        visits = expand_ranges(self.visit_offsets[patients], n_visits)
        n_codes = self.codes_per_visit()[visits]
        codes = expand_ranges(self.code_offsets[visits], n_codes)
        return PatientSequences(
            subject_id=self.subject_id[patients],
            visit_offsets=np.concatenate([[0], np.cumsum(n_visits)]).astype(np.int64),
            code_offsets=np.concatenate([[0], np.cumsum(n_codes)]).astype(np.int64),
            codes=self.codes[codes],
            visit_days=self.visit_days[visits],
            age=self.age[patients],
            gender=self.gender[patients],
            label=self.label[patients],
        )

    def to_long_table(self, vocabulary: list[str], keep_unknown: bool = False) -> pd.DataFrame:
        """The long format (`subject_id, visit_id, code`) the synthetic-EHR evaluation reads;
        visit_id is the 0-based visit index within the patient.

        Rows of `[UNK]` (held-out codes the training split never shows) are left out unless
        `keep_unknown`: one merged pseudo-code would distort the per-code prevalence and the
        distances the evaluation computes, and no generator can emit it. A visit made only of
        such codes thus has no row, as the evaluation treats a visit of missing codes; its
        visit_id stays a gap (the evaluation orders visits by visit_id and renumbers them).
        """
        patient_of_visit = np.repeat(np.arange(self.n_patients), self.visits_per_patient())
        visit_index = np.arange(self.n_visits) - self.visit_offsets[patient_of_visit]
        visit_of_code = np.repeat(np.arange(self.n_visits), self.codes_per_visit())
        table = pd.DataFrame({
            "subject_id": self.subject_id[patient_of_visit[visit_of_code]],
            "visit_id": visit_index[visit_of_code].astype(np.int64),
            "code": np.asarray(vocabulary, dtype=object)[self.codes].astype("str"),
        })
        if keep_unknown:
            return table
        return table.loc[table["code"] != UNKNOWN_CODE].reset_index(drop=True)

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> PatientSequences:
        with np.load(path) as arrays:
            return cls(**{f.name: arrays[f.name] for f in fields(cls)})


def build_sequences(visit_codes: pd.DataFrame, patients: pd.DataFrame) -> PatientSequences:
    """Pack a long table into PatientSequences.

    Args:
        visit_codes: one row per code occurrence with columns subject_id, visit_key (any
            int unique within a patient), visit_day (days since the patient's first visit),
            code_id; already ordered by subject, visit_day, visit_key and code order.
            Duplicate codes within a visit are dropped (a visit is a set).
        patients: subject_id, age, gender (0/1/2), label, one row per subject in
            `visit_codes`, in any order.
    """
    rows = visit_codes.drop_duplicates(["subject_id", "visit_key", "code_id"])
    subject = rows["subject_id"].to_numpy(np.int64)
    visit_key = rows["visit_key"].to_numpy(np.int64)
    new_visit = np.ones(len(rows), dtype=bool)
    new_visit[1:] = (subject[1:] != subject[:-1]) | (visit_key[1:] != visit_key[:-1])
    visit_starts = np.flatnonzero(new_visit)
    visit_subject = subject[visit_starts]
    new_patient = np.ones(len(visit_starts), dtype=bool)
    new_patient[1:] = visit_subject[1:] != visit_subject[:-1]
    patient_starts = np.flatnonzero(new_patient)
    subject_ids = visit_subject[patient_starts]
    info = patients.set_index("subject_id").loc[subject_ids]
    return PatientSequences(
        subject_id=subject_ids,
        visit_offsets=np.append(patient_starts, len(visit_starts)).astype(np.int64),
        code_offsets=np.append(visit_starts, len(rows)).astype(np.int64),
        codes=rows["code_id"].to_numpy(np.int32),
        visit_days=rows["visit_day"].to_numpy(np.float64)[visit_starts],
        age=info["age"].to_numpy(np.float32),
        gender=info["gender"].to_numpy(np.int64),
        label=info["label"].to_numpy(np.int64),
    )
