"""Risk-prediction cohorts (seed 000 §4.2): will this patient be diagnosed with X?

Cases are patients with a target code. Their input is every visit *before* the visit of
the first target diagnosis (that visit excluded, so the label is never in the input).
Controls are patients without any target code; their input is every visit before their
last one (the last visit plays the role of the onset visit, so cases and controls lose the
same one visit and the visit count carries no label). Three controls are matched to each
case on gender and age band (seed 000 §4.2 matches "on gender, age, race and underlying
diseases"; ehrlab matches on gender and age band by default, configurable). The split is
75/10/15 by patient, stratified by label (seed 000 §4.1).

Target code sets live in `conf/task/<cohort>.yaml`, with their source.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ehrlab.data.schema import DIAGNOSIS_PREFIX
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.data.tasks.base import (
    Task,
    TaskData,
    demographics,
    sequence_stats,
    split_and_encode,
    truncate_codes_per_visit,
    visit_codes,
)
from ehrlab.errors import UserInputError
from ehrlab.metrics import binary_classification_metrics

log = logging.getLogger(__name__)


class TargetCodes:
    """Matches canonical diagnosis codes against a cohort's ICD-9 and ICD-10 lists.

    List entries are written with or without the dot; a trailing `*` matches every code
    that starts with the entry (`428*` is 428 and every 428.x).
    """

    def __init__(self, icd9: list[str] = (), icd10: list[str] = ()):
        self.by_version = {"9": self._parse(icd9), "10": self._parse(icd10)}
        if not any(exact or prefixes for exact, prefixes in self.by_version.values()):
            raise UserInputError("task.target_codes lists no ICD-9 or ICD-10 code: the cohort would be empty.")

    @staticmethod
    def _parse(entries) -> tuple[set[str], tuple[str, ...]]:
        entries = [str(e).replace(".", "").strip().upper() for e in entries]
        exact = {e for e in entries if not e.endswith("*")}
        prefixes = tuple(e[:-1] for e in entries if e.endswith("*"))
        return exact, prefixes

    def matches(self, codes: pd.Series) -> np.ndarray:
        hit = np.zeros(len(codes), dtype=bool)
        for version, (exact, prefixes) in self.by_version.items():
            prefix = f"{DIAGNOSIS_PREFIX}{version}//"
            of_version = codes.str.startswith(prefix).to_numpy()
            bare = codes[of_version].str.slice(len(prefix)).str.replace(".", "", regex=False)
            hit[of_version] = (bare.isin(exact) | bare.str.startswith(prefixes)).to_numpy()
        return hit


class RiskTask(Task):
    """Args:
        name: the cohort's name (heart_failure, copd, ...), used for the planted risk of the
            synthetic source.
        target_codes: {"icd9": [...], "icd10": [...]}.
        code_prefixes: which canonical codes form the input visits (default: diagnoses).
        min_visits: patients with fewer visits up to and including their index visit (the
            first target diagnosis of a case, the last visit of a control), counted before
            `gap_days` and `max_visits` remove any, are dropped first (counted by label as
            `*_below_min_visits`). Visits after a case's index visit do not count: a control
            has none, so counting them would let a case in with a shorter history than a
            control, and would select on what happens after the prediction. 1 keeps everyone;
            2 is "patients with at least two admissions" and, with gap_days 0, is already
            implied by min_history_visits 1 (one input visit plus the index visit).
        min_history_visits: patients with fewer input visits are dropped (counted by label).
        gap_days: input visits within this many days before the index visit are dropped too
            (a prediction gap; 0 = none).
        max_visits: keep at most this many input visits per patient (the authors' code keeps
            50; 20 on MIMIC); None keeps all.
        keep_visits: which visits `max_visits` keeps, "last" (default, as the authors' code:
            the visits nearest the prediction) or "first".
        max_codes_per_visit: keep each visit's first codes (the authors': 20).
        controls_per_case: matched controls per case; None keeps every control.
        match_on: any of "gender", "age_band".
        age_band_years: width of the age bands used for matching.
        split: train/val/test fractions, stratified by label.
    """

    kind = "risk"

    def __init__(self, name: str, target_codes: dict, code_prefixes: list[str] = ("DIAGNOSIS//",),
                 min_visits: int = 1, min_history_visits: int = 1, gap_days: float = 0.0, max_visits: int | None = 50,
                 keep_visits: str = "last", max_codes_per_visit: int | None = None,
                 controls_per_case: int | None = 3, match_on: list[str] = ("gender", "age_band"),
                 age_band_years: int = 10, split: list[float] = (0.75, 0.10, 0.15)):
        super().__init__(name, code_prefixes, split, max_visits, keep_visits, max_codes_per_visit)
        unknown = set(match_on) - {"gender", "age_band"}
        if unknown:
            raise UserInputError(f"task.match_on: unknown {sorted(unknown)}; valid: gender, age_band")
        self.target_codes = {k: list(v) for k, v in dict(target_codes).items()}
        TargetCodes(**self.target_codes)  # a bad or empty list fails here, before any data is read
        if min_visits < 1:
            raise UserInputError(f"task.min_visits={min_visits}: every patient has its index visit, so use 1 or more.")
        self.min_visits = min_visits
        self.min_history_visits = min_history_visits
        self.gap_days = gap_days
        self.controls_per_case = controls_per_case
        self.match_on = list(match_on)
        self.age_band_years = age_band_years

    def build(self, tables: CanonicalTables, seed: int) -> TaskData:
        dropped: dict[str, int] = {}
        rows = visit_codes(tables, self.code_prefixes + (DIAGNOSIS_PREFIX,))
        onset = rows.loc[TargetCodes(**self.target_codes).matches(rows["code"])].groupby("subject_id")["visit_time"].min()
        rows = rows.loc[rows["code"].str.startswith(self.code_prefixes)]
        is_case = rows["subject_id"].isin(onset.index).to_numpy()
        last_visit = rows.loc[~is_case].groupby("subject_id")["visit_time"].max()
        index_time = pd.concat([onset, last_visit])
        up_to_index = rows.loc[rows["visit_time"].to_numpy() <= rows["subject_id"].map(index_time).to_numpy()]
        n_visits = up_to_index.groupby("subject_id")["visit_key"].nunique()
        too_few = n_visits.index[n_visits < self.min_visits]
        dropped["cases_below_min_visits"] = int(onset.index.isin(too_few).sum())
        dropped["controls_below_min_visits"] = int(last_visit.index.isin(too_few).sum())
        onset, last_visit = onset.drop(too_few, errors="ignore"), last_visit.drop(too_few, errors="ignore")
        index_time = index_time.drop(too_few)
        gap = pd.Timedelta(days=self.gap_days)
        rows = rows.loc[rows["visit_time"].to_numpy() < (rows["subject_id"].map(index_time) - gap).to_numpy()]
        rows = truncate_codes_per_visit(rows, self.max_codes_per_visit, dropped)

        history = rows.groupby("subject_id")["visit_key"].nunique()
        n_cases_all, n_controls_all = len(onset), len(last_visit)
        kept = history.index[history >= self.min_history_visits]
        kept_cases = onset.index.intersection(kept)
        dropped["cases_without_enough_history"] = int(n_cases_all - len(kept_cases))
        dropped["controls_without_enough_history"] = int(n_controls_all - (len(kept) - len(kept_cases)))
        if len(kept_cases) == 0:
            raise UserInputError(
                f"task={self.name}: empty cohort: {n_cases_all} patient(s) have a target code but none has "
                f"{self.min_history_visits}+ earlier visit(s). Check task.target_codes, the data (data.root) "
                "and task.min_history_visits.")
        people = demographics(tables, kept.to_numpy(), index_time)
        people["label"] = people["subject_id"].isin(kept_cases).astype("int64")
        people = self._match_controls(people, seed, dropped)
        if (people["label"] == 0).sum() == 0:
            raise UserInputError(f"task={self.name}: no control patient (without a target code) is left to match.")
        rows = rows.loc[rows["subject_id"].isin(people["subject_id"])]
        rows = self.truncate_visits(rows, dropped)
        for reason, count in dropped.items():
            if count:
                log.info("%s cohort: %s = %d", self.name, reason, count)

        vocabulary, splits, unknown = split_and_encode(rows, people, self.split, seed, tables.splits)
        labels = np.concatenate([part.label for part in splits.values()])
        stats = {
            **sequence_stats(splits, rows, vocabulary),
            "n_positive": int((labels == 1).sum()),
            "n_negative": int((labels == 0).sum()),
            "split_positive": {name: int(part.label.sum()) for name, part in splits.items()},
            **unknown,
            "dropped": {**tables.counts, **dropped},
        }
        if tables.planted is not None:
            stats["planted_ceiling"] = self._planted_ceiling(tables.planted, splits["test"])
        return TaskData(kind=self.kind, vocabulary=vocabulary, splits=splits, stats=stats)

    def _match_controls(self, people: pd.DataFrame, seed: int, dropped: dict[str, int]) -> pd.DataFrame:
        """Sample `controls_per_case` controls per case within each matching stratum."""
        if self.controls_per_case is None:
            return people
        stratum = pd.Series(0, index=people.index)
        if "gender" in self.match_on:
            stratum = stratum * 10 + people["gender"]
        if "age_band" in self.match_on:
            stratum = stratum * 100 + (people["age"].clip(lower=0) // self.age_band_years).astype("int64")
        people = people.assign(stratum=stratum.to_numpy())
        cases = people.loc[people["label"] == 1]
        quota = cases.groupby("stratum").size() * self.controls_per_case
        controls = people.loc[people["label"] == 0].sample(frac=1.0, random_state=seed)
        rank = controls.groupby("stratum").cumcount()
        chosen = controls.loc[rank.to_numpy() < controls["stratum"].map(quota).fillna(0).to_numpy()]
        dropped["controls_not_matched"] = int(len(controls) - len(chosen))
        dropped["matching_shortfall"] = int(quota.sum() - len(chosen))
        return pd.concat([cases, chosen]).drop(columns="stratum").sort_values("subject_id", ignore_index=True)

    def _planted_ceiling(self, planted_risk: pd.DataFrame, test) -> dict[str, float]:
        """How well the synthetic source's own generating model ranks the test split: the
        ceiling a learned model can approach (it sees the visits, not the latent state)."""
        risk = planted_risk.loc[planted_risk["cohort"] == self.name].set_index("subject_id")["risk"]
        scores = risk.reindex(test.subject_id).fillna(0.0).to_numpy()
        metrics = binary_classification_metrics(test.label, scores)
        return {key: 100 * metrics[key] for key in ("pr_auc", "average_precision", "roc_auc")}  # percent
