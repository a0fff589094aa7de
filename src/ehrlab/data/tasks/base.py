"""What every task produces (`TaskData`), and the steps tasks share.

A task turns canonical tables into patients-as-visit-sequences with a vocabulary, a
train/val/test split and the statistics of Table 1 (seed 000) / Table 12 (seed 002). Tasks
know nothing about models.

The vocabulary comes from the training split only (seed 002 F.4: "constructs vocabulary
from all diagnosis codes observed in the training data"): `[PAD]` (id 0), `[UNK]` (id 1),
then the training patients' codes, sorted. A validation or test code that no training
patient has becomes `[UNK]`, so nothing about the held-out patients leaks into the model's
vocabulary or its frequency tables; `TaskData.stats` counts those codes.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrlab.data.schema import PAD_CODE, UNKNOWN_CODE
from ehrlab.data.sequences import PatientSequences, build_sequences
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.errors import UserInputError

SPLITS = ("train", "val", "test")
# MEDS split names -> ehrlab's
MEDS_SPLITS = {"train": "train", "tuning": "val", "held_out": "test"}
GENDER_IDS = {"F": 0, "M": 1}
UNKNOWN_ID = 1  # the vocabulary position of UNKNOWN_CODE
KEEP_VISITS = ("first", "last")


@dataclass
class TaskData:
    kind: str  # "risk" or "generation"
    vocabulary: list[str]
    splits: dict[str, PatientSequences]
    stats: dict[str, Any] = field(default_factory=dict)
    #: the prepared data's name in the task cache (set by the pipeline), for caches keyed on it
    cache_key: str | None = None

    def code_frequencies(self) -> np.ndarray:
        """Training-split visits holding each code id (codes are distinct within a visit);
        0 for `[PAD]` and `[UNK]`, which no training visit holds."""
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

    def split_sizes(self) -> dict[str, int]:
        """Patients per split."""
        return {name: sequences.n_patients for name, sequences in self.splits.items()}

    def datamodule(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        """The LightningDataModule that batches this data (see `ehrlab.data.datamodules`)."""
        from ehrlab.data.datamodules import EHRDataModule  # it imports this module

        return EHRDataModule(self, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)


# The class that loads each kind of prepared data (task.json's "kind"), imported when needed:
# chest X-ray task data brings image and text-embedding code the visit-sequence tasks do not.
TASK_DATA_TYPES = {"risk": "ehrlab.data.tasks.base:TaskData", "generation": "ehrlab.data.tasks.base:TaskData",
                   "cxr_forecast": "ehrlab.data.tasks.cxr:CXRTaskData"}


def load_task_data(folder: Path):
    """Prepared task data of any kind from its cache folder."""
    kind = json.loads((folder / "task.json").read_text())["kind"]
    module, name = TASK_DATA_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), name).load(folder)


class Task(abc.ABC):
    """Turns canonical tables into TaskData. Subclasses set `kind`.

    `max_visits` visits at most per patient (None: all), the `keep_visits` = "first" or
    "last" ones; each task states its own default.
    """

    kind: str
    # Part of the cache key: bump it whenever the prepared data change for the same settings,
    # so that a cache never serves the old format. 2: vocabulary from the training split,
    # [UNK] at id 1.
    FORMAT_VERSION = 2

    def __init__(self, name: str, code_prefixes: list[str], split: list[float], max_visits: int | None,
                 keep_visits: str, max_codes_per_visit: int | None):
        if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) <= 0:
            raise UserInputError(f"task.split must be three positive fractions summing to 1, got {list(split)}")
        if keep_visits not in KEEP_VISITS:
            raise UserInputError(f"task.keep_visits must be 'first' or 'last' (which visits task.max_visits keeps), "
                                 f"got {keep_visits!r}")
        if max_visits is not None and max_visits < 1:
            raise UserInputError(f"task.max_visits must be a positive number of visits or null (all), got {max_visits}")
        self.name = name
        self.code_prefixes = tuple(code_prefixes)
        self.split = tuple(float(s) for s in split)
        self.max_visits = max_visits
        self.keep_visits = keep_visits
        self.max_codes_per_visit = max_codes_per_visit

    @abc.abstractmethod
    def build(self, tables: CanonicalTables, seed: int) -> TaskData:
        """Prepare the task's samples from canonical tables."""

    def truncate_visits(self, rows: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
        """Keep each patient's first or last `max_visits` visits (`keep_visits`), counting the rest."""
        if self.max_visits is None:
            return rows
        rank = visit_rank(rows, from_end=self.keep_visits == "last").to_numpy()
        beyond = rows.loc[rank >= self.max_visits].drop_duplicates(["subject_id", "visit_key"])
        dropped["visits_beyond_max_visits"] = int(len(beyond))
        return rows.loc[rank < self.max_visits]

    def cache_key(self, source_key: str, seed: int) -> str:
        identity = json.dumps({"task": type(self).__name__, "format": self.FORMAT_VERSION, "source": source_key,
                               "seed": seed, **vars(self)}, sort_keys=True, default=str)
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


def split_and_encode(rows: pd.DataFrame, patients: pd.DataFrame, fractions: tuple[float, float, float], seed: int,
                     source_splits: pd.DataFrame | None) -> tuple[list[str], dict[str, PatientSequences], dict]:
    """Split the patients, build the vocabulary from the training split and pack each split.

    Args:
        rows: one row per code occurrence (subject_id, visit_key, visit_time, code), ordered
            as `visit_codes` orders them.
        patients: subject_id, age, gender, label (-1: unlabelled), one row per subject in rows.
        fractions, seed, source_splits: as for `split_patients`.

    Returns the vocabulary ([PAD], [UNK], the training split's codes sorted), the three
    splits and the statistics of the codes that became [UNK] (val and test only: the
    training split has none by construction).
    """
    subjects = rows["subject_id"].unique()  # the patient order of `build_sequences`
    labels = patients.set_index("subject_id")["label"].reindex(subjects).to_numpy()
    parts = split_patients(labels, fractions, seed, subjects, source_splits)
    split_of_subject = pd.Series(np.empty(len(subjects), dtype=object), index=subjects)
    for name, positions in parts.items():
        split_of_subject.iloc[positions] = name
    row_split = rows["subject_id"].map(split_of_subject).to_numpy()

    codes = np.sort(rows.loc[row_split == "train", "code"].unique())
    vocabulary = [PAD_CODE, UNKNOWN_CODE, *codes.tolist()]
    position = pd.Index(codes).get_indexer(rows["code"])
    code_id = np.where(position >= 0, position + 2, UNKNOWN_ID)
    first_time = rows.groupby("subject_id", sort=False)["visit_time"].transform("min")
    rows = rows.assign(code_id=code_id, visit_day=(rows["visit_time"] - first_time) / pd.Timedelta(days=1))

    sequences = build_sequences(rows, patients)
    splits = {name: sequences.subset(parts[name]) for name in SPLITS}
    return vocabulary, splits, unknown_code_stats(rows.assign(split=row_split))


def unknown_code_stats(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per held-out split: code occurrences that became [UNK], the distinct codes behind
    them, and the visits left with [UNK] only (the evaluation's long tables lose those)."""
    unknown = rows["code_id"].to_numpy() == UNKNOWN_ID
    visit_all_unknown = pd.Series(unknown).groupby(
        [rows["split"].to_numpy(), rows["subject_id"].to_numpy(), rows["visit_key"].to_numpy()]).all()
    only_unknown = visit_all_unknown.groupby(level=0).sum()
    held_out = ("val", "test")
    return {
        "unknown_code_occurrences": {s: int((unknown & (rows["split"] == s).to_numpy()).sum()) for s in held_out},
        "unknown_codes_distinct": {s: int(rows.loc[unknown & (rows["split"] == s).to_numpy(), "code"].nunique())
                                   for s in held_out},
        "visits_with_only_unknown_codes": {s: int(only_unknown.get(s, 0)) for s in held_out},
    }


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


def sequence_stats(splits: dict[str, PatientSequences], rows: pd.DataFrame, vocabulary: list[str]) -> dict:
    """Table 1 (seed 000) / Table 12 (seed 002) statistics of all kept patients and the split
    sizes. Code counts come from `rows`, the real codes before any became [UNK] (several
    unknown codes of one visit are a single [UNK] in the sequences): `n_codes` is the distinct
    codes of every patient, `n_codes_train` those of the vocabulary."""
    n_patients = sum(part.n_patients for part in splits.values())
    n_visits = sum(part.n_visits for part in splits.values())
    n_code_entries = len(rows)  # codes are distinct within a visit
    return {
        "n_patients": int(n_patients),
        "n_visits": int(n_visits),
        "n_codes": int(rows["code"].nunique()),
        "n_codes_train": len(vocabulary) - 2,
        "visits_per_patient": float(n_visits / max(n_patients, 1)),
        "codes_per_visit": float(n_code_entries / max(n_visits, 1)),
        "codes_per_patient": float(n_code_entries / max(n_patients, 1)),
        "split_patients": {name: int(part.n_patients) for name, part in splits.items()},
    }
