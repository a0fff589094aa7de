"""What every task produces (`TaskData`), and the steps tasks share.

A task turns canonical tables into patients-as-visit-sequences with a vocabulary, a
train/val/test split and the statistics of Table 1 (seed 000) / Table 12 (seed 002). Tasks
know nothing about models.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrlab.data.schema import PAD_CODE
from ehrlab.data.sequences import PatientSequences
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.errors import UserInputError

SPLITS = ("train", "val", "test")
# MEDS split names -> ehrlab's
MEDS_SPLITS = {"train": "train", "tuning": "val", "held_out": "test"}
GENDER_IDS = {"F": 0, "M": 1}


@dataclass
class TaskData:
    kind: str  # "risk" or "generation"
    vocabulary: list[str]
    splits: dict[str, PatientSequences]
    stats: dict[str, Any] = field(default_factory=dict)

    def code_frequencies(self) -> np.ndarray:
        """Training-split visits holding each code id (codes are distinct within a visit)."""
        return np.bincount(self.splits["train"].codes, minlength=len(self.vocabulary))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, sequences in self.splits.items():
            sequences.save(folder / f"{name}.npz")
        (folder / "task.json").write_text(json.dumps(
            {"kind": self.kind, "vocabulary": self.vocabulary, "stats": self.stats}))

    @classmethod
    def load(cls, folder: Path) -> TaskData:
        meta = json.loads((folder / "task.json").read_text())
        splits = {name: PatientSequences.load(folder / f"{name}.npz") for name in SPLITS}
        return cls(kind=meta["kind"], vocabulary=meta["vocabulary"], splits=splits, stats=meta["stats"])


class Task(abc.ABC):
    """Turns canonical tables into TaskData. Subclasses set `kind`."""

    kind: str

    def __init__(self, name: str, code_prefixes: list[str], split: list[float], max_visits: int | None,
                 max_codes_per_visit: int | None):
        if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) <= 0:
            raise UserInputError(f"task.split must be three positive fractions summing to 1, got {list(split)}")
        self.name = name
        self.code_prefixes = tuple(code_prefixes)
        self.split = tuple(float(s) for s in split)
        self.max_visits = max_visits
        self.max_codes_per_visit = max_codes_per_visit

    @abc.abstractmethod
    def build(self, tables: CanonicalTables, seed: int, planted_risk: pd.DataFrame | None = None) -> TaskData:
        """Prepare the task's samples from canonical tables."""

    def cache_key(self, source_key: str, seed: int) -> str:
        identity = json.dumps({"task": type(self).__name__, "source": source_key, "seed": seed,
                               **{k: v for k, v in vars(self).items()}}, sort_keys=True, default=str)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


def visit_codes(tables: CanonicalTables, code_prefixes: tuple[str, ...]) -> pd.DataFrame:
    """One row per selected code occurrence with its visit: subject_id, visit_key,
    visit_time, code, ordered by subject, visit time and the source's code order.

    A visit is an admission (visit_id) when the source has them, else the set of events
    sharing one timestamp (MEDS). A visit's time is its earliest event of any kind, so an
    admission is dated by its admission time even though its diagnoses are coded at
    discharge.
    """
    events = tables.events
    visit_key = events["visit_id"].astype("float64").fillna(
        events["time"].astype("int64").astype("float64")).astype("int64")
    keyed = pd.DataFrame({"subject_id": events["subject_id"].to_numpy(), "visit_key": visit_key.to_numpy(),
                          "time": events["time"].to_numpy()})
    visit_time = keyed.groupby(["subject_id", "visit_key"], sort=False)["time"].min().rename("visit_time")
    selected = events["code"].str.startswith(code_prefixes) & events["time"].notna()
    rows = pd.DataFrame({"subject_id": events.loc[selected, "subject_id"].to_numpy(),
                         "visit_key": visit_key[selected].to_numpy(),
                         "code": events.loc[selected, "code"].to_numpy(),
                         "order": np.flatnonzero(selected.to_numpy())})
    rows = rows.join(visit_time, on=["subject_id", "visit_key"])
    return rows.sort_values(["subject_id", "visit_time", "visit_key", "order"], kind="stable", ignore_index=True)


def truncate_codes_per_visit(rows: pd.DataFrame, max_codes: int | None, dropped: dict[str, int]) -> pd.DataFrame:
    """Keep each visit's first `max_codes` distinct codes (the source's order: primary first)."""
    rows = rows.drop_duplicates(["subject_id", "visit_key", "code"])
    if max_codes is None:
        return rows
    rank = rows.groupby(["subject_id", "visit_key"], sort=False).cumcount()
    dropped["codes_beyond_max_codes_per_visit"] = int((rank >= max_codes).sum())
    return rows.loc[rank < max_codes]


def visit_rank(rows: pd.DataFrame, from_end: bool = False) -> pd.Series:
    """0-based rank of each row's visit within its patient (by visit time), from the first or
    the last visit."""
    visits = rows.drop_duplicates(["subject_id", "visit_key"])[["subject_id", "visit_key"]]
    ranks = visits.groupby("subject_id", sort=False).cumcount(ascending=not from_end)
    visits = visits.assign(rank=ranks.to_numpy())
    return rows[["subject_id", "visit_key"]].merge(visits, on=["subject_id", "visit_key"], how="left")["rank"]


def encode_codes(rows: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """Vocabulary (sorted codes after the padding entry), and the rows with a `code_id` and a
    `visit_day` (days since the patient's first visit) column: what `build_sequences` packs."""
    codes = np.sort(rows["code"].unique())
    vocabulary = [PAD_CODE, *codes.tolist()]
    code_id = np.searchsorted(codes, rows["code"].to_numpy()) + 1
    rows = rows.assign(code_id=code_id)
    first_time = rows.groupby("subject_id", sort=False)["visit_time"].transform("min")
    rows["visit_day"] = (rows["visit_time"] - first_time) / pd.Timedelta(days=1)
    return vocabulary, rows


def demographics(tables: CanonicalTables, subject_ids: np.ndarray, at: pd.Series) -> pd.DataFrame:
    """Age (years, clipped to [0, 90]) at the given time per subject, and a gender id.

    MIMIC shifts the birth date of patients older than 89 so that they appear ~300 years
    old; clipping at 90 folds them back into the top age band.
    """
    static = tables.static.set_index("subject_id").reindex(subject_ids)
    at = at.reindex(subject_ids)
    age = (at.to_numpy() - static["birth_date"].to_numpy()) / np.timedelta64(1, "D") / 365.25
    age = np.clip(np.nan_to_num(age.astype("float64"), nan=-1.0), -1, 90)
    gender = static["gender"].map(GENDER_IDS).fillna(2).astype("int64").to_numpy()
    return pd.DataFrame({"subject_id": subject_ids, "age": age.astype("float32"), "gender": gender})


def split_patients(labels: np.ndarray, fractions: tuple[float, float, float], seed: int,
                   subject_ids: np.ndarray, source_splits: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Positions of each split's patients: the source's own split when it has one (MEDS),
    else a seeded split stratified by label (unlabelled: one stratum)."""
    if source_splits is not None:
        named = pd.Series(source_splits["split"].map(MEDS_SPLITS).to_numpy(), index=source_splits["subject_id"])
        assigned = named.reindex(subject_ids).to_numpy()
        if not pd.isna(assigned).any():
            return {name: np.flatnonzero(assigned == name) for name in SPLITS}
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in SPLITS}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train:n_train + n_val])
        parts["test"].append(members[n_train + n_val:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def sequence_stats(sequences: PatientSequences) -> dict[str, float]:
    """Table 1 (seed 000) / Table 12 (seed 002) statistics of a set of patients."""
    n_visits = sequences.n_visits
    return {
        "n_patients": int(sequences.n_patients),
        "n_visits": int(n_visits),
        "n_codes": int(len(np.unique(sequences.codes))),
        "visits_per_patient": float(n_visits / max(sequences.n_patients, 1)),
        "codes_per_visit": float(len(sequences.codes) / max(n_visits, 1)),
        "codes_per_patient": float(len(sequences.codes) / max(sequences.n_patients, 1)),
    }
