"""The generation task: every patient as a sequence of visits of full-granularity codes.

This is the input of the synthetic-EHR generators of seed 002 (HALO, GPT-2 baseline ...):
one visit per admission, a visit being the set of its diagnosis codes (by default).
"""

from __future__ import annotations

import logging


from ehrlab.data.sources.base import CanonicalTables
from ehrlab.data.tasks.base import (
    Task, TaskData, demographics, sequence_stats, split_and_encode, truncate_codes_per_visit, visit_codes,
)
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)


class GenerationTask(Task):
    """Args:
        code_prefixes: which canonical codes make up a visit (default: diagnoses).
        min_visits: patients with fewer visits holding a selected code are dropped (counted).
        max_visits: keep at most this many visits per patient; None keeps all. HALO refuses
            a patient longer than its context (`HALO.max_visits`, derived in halo.py), so
            `experiment=halo_mimic3` sets it to that.
        keep_visits: which visits `max_visits` keeps, "first" (default: a record is generated
            from its start) or "last".
        max_codes_per_visit: keep each visit's first codes in the source's order; None: all.
        split: train/val/test fractions of patients (seed 002's HALO: 80/20 with 10% of
            train for validation ≈ 0.72/0.08/0.20; default 0.8/0.1/0.1).
    """

    kind = "generation"

    def __init__(self, name: str = "generation", code_prefixes: list[str] = ("DIAGNOSIS//",), min_visits: int = 1,
                 max_visits: int | None = None, keep_visits: str = "first", max_codes_per_visit: int | None = None,
                 split: list[float] = (0.8, 0.1, 0.1)):
        super().__init__(name, code_prefixes, split, max_visits, keep_visits, max_codes_per_visit)
        self.min_visits = min_visits

    def build(self, tables: CanonicalTables, seed: int) -> TaskData:
        dropped: dict[str, int] = {}
        rows = visit_codes(tables, self.code_prefixes)
        n_subjects = tables.static["subject_id"].nunique()
        dropped["patients_without_selected_codes"] = int(n_subjects - rows["subject_id"].nunique())
        rows = truncate_codes_per_visit(rows, self.max_codes_per_visit, dropped)
        n_visits = rows.groupby("subject_id")["visit_key"].nunique()
        too_short = n_visits.index[n_visits < self.min_visits]
        dropped["patients_below_min_visits"] = int(len(too_short))
        rows = rows.loc[~rows["subject_id"].isin(too_short)]
        rows = self.truncate_visits(rows, dropped)
        if rows.empty:
            raise UserInputError(
                f"task=generation: no patient has {self.min_visits}+ visits with codes starting with "
                f"{list(self.code_prefixes)}; check task.code_prefixes and task.min_visits.")
        for reason, count in dropped.items():
            if count:
                log.info("generation task: %s = %d", reason, count)

        subjects = rows["subject_id"].unique()
        last_visit = rows.groupby("subject_id")["visit_time"].max()
        patients = demographics(tables, subjects, last_visit).assign(label=-1)
        vocabulary, splits, unknown = split_and_encode(rows, patients, self.split, seed, tables.splits)
        stats = {**sequence_stats(splits, rows, vocabulary), **unknown, "dropped": {**tables.counts, **dropped}}
        return TaskData(kind=self.kind, vocabulary=vocabulary, splits=splits, stats=stats)
