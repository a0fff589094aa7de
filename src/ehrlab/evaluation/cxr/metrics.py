"""The numbers of seed 004's evaluation (EHRXDiff, §4.3; Tables 2, 3, 6, 7, 8), from arrays alone.

Clinical consistency (§4.3.1): a diagnosis classifier reads the predicted image; its scores
are compared with the target image's labels by AUROC, on three row sets decided per
(pair, finding): *All* (every pair whose target label is known), *Same* (the target label
equals the previous one) and *Diff* (it does not). Table 2 (Chest ImaGenome) reports the
macro AUROC over findings weighted by each finding's number of evaluated rows, as the
authors' code does; Table 6 (CheXpert, Appendix C.1.2) the unweighted macro. Both are
computed for every label set.

A finding whose evaluated rows hold one class only has no AUROC: it is left out of both
macros (the weights renormalise over the defined findings) and reported as NaN in the
per-finding tables. The authors' code scores it 0 and keeps it in the unweighted mean, which
pulls the macro down by chance of the split; we do not copy that.

Demographic consistency (§4.3.2, Table 3): Pearson correlation of the predicted age with the
target's age, AUROC of the predicted sex, and the one-vs-rest macro AUROC of the predicted
race over Asian / Black / White. Each returns NaN with a reason (never raises) when the
reference lacks what it needs.

Everything here is numpy / scikit-learn over whole arrays; the only loops run over findings
and race groups. The per-finding AUROCs and their macros live in `ehrlab.metrics`, which the
table classifiers' validation AUROC uses too.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from ehrlab.data.cxr.contract import RACE_GROUPS, SEX_IDS
from ehrlab.metrics import finding_aurocs, unweighted_macro, weighted_macro

SUBSETS = ("all", "same", "diff")


def same_diff_masks(prev_labels: np.ndarray, target_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean [N, F] row sets of §4.3.1 per (pair, finding): "all" = the target label is
    known (not NaN), "same" = known and equal to the previous label, "diff" = known and not.

    A NaN previous label counts as 0 (absent). For Chest ImaGenome that is the task's own
    policy already (the authors' code fills a missing previous label with 0, REFERENCES.md),
    so this changes nothing there; for CheXpert and folder labels it is the same reading of
    "not mentioned" and is applied here, in one place, rather than by each caller.
    """
    prev = np.nan_to_num(np.asarray(prev_labels, dtype=np.float64), nan=0.0)
    target = np.asarray(target_labels, dtype=np.float64)
    if prev.shape != target.shape:
        raise ValueError(f"previous labels {prev.shape} and target labels {target.shape} differ in shape")
    evaluable = ~np.isnan(target)
    same = evaluable & (prev == target)
    return {"all": evaluable, "same": same, "diff": evaluable & ~same}


def weighted_macro_auroc(target: np.ndarray, score: np.ndarray, mask: np.ndarray) -> float:
    """Table 2's weighted macro AUROC of `score` on the rows where `mask`."""
    return weighted_macro(*finding_aurocs(target, score, mask))


def nonfinite_scores(score: np.ndarray, mask: np.ndarray) -> int:
    """How many evaluated (row, finding) cells have a NaN or infinite score."""
    return int((np.asarray(mask, dtype=bool) & ~np.isfinite(np.asarray(score, dtype=np.float64))).sum())


def clinical_consistency(prev_labels: np.ndarray, target_labels: np.ndarray, score: np.ndarray,
                         findings: list[str]) -> dict[str, float]:
    """All / Same / Diff for one prediction of one label set, as a flat dict:
    ``auroc_<subset>`` (weighted macro, Table 2), ``auroc_macro_<subset>`` (unweighted,
    Table 6), ``auroc/<finding>/<subset>`` (Tables 7, 8) and ``n/<finding>/<subset>`` (the
    evaluated rows, the weights)."""
    score = np.asarray(score, dtype=np.float64)
    if score.shape != np.shape(target_labels):
        raise ValueError(f"scores {score.shape} and target labels {np.shape(target_labels)} differ in shape")
    out: dict[str, float] = {}
    for subset, mask in same_diff_masks(prev_labels, target_labels).items():
        aurocs, n = finding_aurocs(target_labels, score, mask)
        out[f"auroc_{subset}"] = weighted_macro(aurocs, n)
        out[f"auroc_macro_{subset}"] = unweighted_macro(aurocs)
        for f, finding in enumerate(findings):
            out[f"auroc/{finding}/{subset}"] = float(aurocs[f])
            out[f"n/{finding}/{subset}"] = float(n[f])
    return out


def age_pearson(true_age: np.ndarray, predicted_age: np.ndarray) -> tuple[float, str | None]:
    """Pearson correlation between the target's age and the age read from the image (Table 3),
    over the rows with a known age; NaN and the reason when it cannot be computed."""
    true_age = np.asarray(true_age, dtype=np.float64)
    predicted_age = np.asarray(predicted_age, dtype=np.float64)
    rows = np.isfinite(true_age) & np.isfinite(predicted_age)
    if rows.sum() < 2:
        return math.nan, f"age: {int(rows.sum())} pairs with a known age (needs 2)"
    x, y = true_age[rows], predicted_age[rows]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, "age: the true or the predicted ages are all equal, so their correlation is undefined"
    return float(np.corrcoef(x, y)[0, 1]), None


def sex_auroc(true_sex: np.ndarray, prob_male: np.ndarray) -> tuple[float, str | None]:
    """AUROC of P(male) against the target's sex (Table 3), over rows with a known sex
    (SEX_IDS; 2 = unknown is left out)."""
    true_sex = np.asarray(true_sex)
    prob_male = np.asarray(prob_male, dtype=np.float64)
    rows = np.isin(true_sex, list(SEX_IDS.values())) & np.isfinite(prob_male)
    labels = (true_sex[rows] == SEX_IDS["M"]).astype(np.int64)
    if not 0 < labels.sum() < labels.size:
        return math.nan, f"sex: {labels.size} pairs with a known sex, not both sexes among them"
    return float(roc_auc_score(labels, prob_male[rows])), None


def race_auroc(true_race: np.ndarray, race_probs: np.ndarray) -> tuple[float, str | None]:
    """One-vs-rest macro AUROC over RACE_GROUPS (Table 3's Asian / Black / White), as the
    authors' code scores the race model: rows whose race is "OTHER" (other or unknown) are
    left out, the group probabilities are renormalised over the three groups (that model's
    softmax has no "other" class), and the mean runs over the groups present that have
    both classes among those rows. `race_probs` [N, len(RACE_GROUPS) (+ 1 "other")]."""
    true_race = np.asarray(true_race).astype(str)
    probs = np.asarray(race_probs, dtype=np.float64)[:, : len(RACE_GROUPS)]
    rows = np.isin(true_race, RACE_GROUPS) & np.isfinite(probs).all(axis=1)
    if rows.sum() == 0:
        return math.nan, "race: no pair with an Asian, Black or White target (race unknown or other)"
    probs = probs[rows] / np.clip(probs[rows].sum(axis=1, keepdims=True), 1e-12, None)
    race = true_race[rows]
    aurocs = [roc_auc_score(race == group, probs[:, g]) for g, group in enumerate(RACE_GROUPS)
              if 0 < (race == group).sum() < race.size]
    if not aurocs:
        return math.nan, f"race: only one race group among the {race.size} pairs with a known group"
    return float(np.mean(aurocs)), None
