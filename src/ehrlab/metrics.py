"""Binary classification metrics: the one implementation of each, pure numpy/scikit-learn.

This module sits below `ehrlab.data` and `ehrlab.evaluation` (it imports neither), so that
data tasks (the synthetic source's planted ceiling), risk models and the evaluation suites
all score with the same code.

Seed 000 (MedDiffusion, §4.2 "Evaluation Metrics") reports PR-AUC, F1 and Cohen's kappa
in percent; ROC-AUC is added because most risk papers report it. Two PR-AUC estimators,
because papers disagree:

- `pr_auc_trapezoid`: the trapezoidal area under the precision-recall curve,
  ``auc(recall, precision)``. This is what the MedDiffusion authors' code reports, so the
  number comparable to their Table 2 is this one. Trapezoids interpolate linearly between
  PR points, which is optimistic (Davis & Goadrich, 2006).
- `average_precision`: the step-wise sum ``Σ (R_n − R_{n−1}) P_n`` (no interpolation),
  the usual estimator elsewhere (sklearn's ``average_precision_score``).

F1 and kappa take predicted classes; `binary_classification_metrics` predicts class 1 when
``probability > threshold`` (0.5), the class of a two-way softmax's ``argmax``, where an
exact tie goes to class 0. Accuracy, precision and recall of predicted classes are here too,
for the synthetic-EHR suite's discriminators and membership-inference attack (seed 002 §3).
Multi-label scoring for the chest X-ray family (seed 004): one AUROC per finding on the rows
a mask selects, and their weighted (Table 2) and unweighted (Table 6) macros.

Values are fractions in [0, 1] (kappa in [-1, 1]); callers that log percent multiply by
100. A metric that is undefined on the given labels (one-class labels for the ranking
metrics, no positive labels nor predictions for F1, no positive predictions for precision,
no positive labels for recall, no samples for accuracy) comes back as NaN with a
`RuntimeWarning` instead of raising, so a tiny or degenerate split never crashes a run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

METRIC_NAMES = ("pr_auc", "average_precision", "f1", "kappa", "roc_auc")


def binary_classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """PR-AUC (trapezoidal), average precision, F1, Cohen's kappa and ROC-AUC.

    ``labels``: 0/1 array [N]; ``probabilities``: predicted probability of class 1 [N].
    Returns a dict keyed by :data:`METRIC_NAMES`, values as fractions (NaN where undefined).
    """
    labels, probabilities = _binary_inputs(labels, probabilities)
    predictions = (probabilities > threshold).astype(np.int64)
    metrics = {"f1": f1(labels, predictions), "kappa": cohen_kappa(labels, predictions)}
    if _both_classes(labels, "PR-AUC, average precision and ROC-AUC are"):
        metrics.update(pr_auc=pr_auc_trapezoid(labels, probabilities),
                       average_precision=average_precision(labels, probabilities),
                       roc_auc=roc_auc(labels, probabilities))
    else:
        metrics.update(pr_auc=math.nan, average_precision=math.nan, roc_auc=math.nan)
    return {name: metrics[name] for name in METRIC_NAMES}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties ½."""
    labels, scores = _binary_inputs(labels, scores)
    if not _both_classes(labels, "ROC-AUC is"):
        return math.nan
    return float(roc_auc_score(labels, scores))


def pr_auc_trapezoid(labels: np.ndarray, scores: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve (the MedDiffusion authors' PR-AUC)."""
    labels, scores = _binary_inputs(labels, scores)
    if not _both_classes(labels, "PR-AUC is"):
        return math.nan
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve, ``Σ (R_n − R_{n−1}) P_n``."""
    labels, scores = _binary_inputs(labels, scores)
    if not _both_classes(labels, "average precision is"):
        return math.nan
    return float(average_precision_score(labels, scores))


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class from 0/1 predictions: 2TP / (2TP + FP + FN)."""
    labels, predictions = _binary_inputs(labels, predictions)
    true_positives = int(np.sum((labels == 1) & (predictions == 1)))
    denominator = int(labels.sum() + predictions.sum())  # 2TP + FP + FN
    if denominator == 0:
        warnings.warn("no positive labels and no positive predictions: F1 is undefined (NaN)", RuntimeWarning,
                      stacklevel=2)
        return math.nan
    return 2.0 * true_positives / denominator


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of 0/1 predictions equal to the labels: (TP + TN) / N."""
    labels, predictions = _binary_inputs(labels, predictions)
    if labels.size == 0:
        warnings.warn("no samples: accuracy is undefined (NaN)", RuntimeWarning, stacklevel=2)
        return math.nan
    return float(np.mean(labels == predictions))


def precision(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Precision of the positive class from 0/1 predictions: TP / (TP + FP)."""
    labels, predictions = _binary_inputs(labels, predictions)
    n_predicted = int(predictions.sum())  # TP + FP
    if n_predicted == 0:
        warnings.warn("no positive predictions: precision is undefined (NaN)", RuntimeWarning, stacklevel=2)
        return math.nan
    return int(np.sum((labels == 1) & (predictions == 1))) / n_predicted


def recall(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Recall (sensitivity) of the positive class from 0/1 predictions: TP / (TP + FN)."""
    labels, predictions = _binary_inputs(labels, predictions)
    n_positive = int(labels.sum())  # TP + FN
    if n_positive == 0:
        warnings.warn("no positive labels: recall is undefined (NaN)", RuntimeWarning, stacklevel=2)
        return math.nan
    return int(np.sum((labels == 1) & (predictions == 1))) / n_positive


def cohen_kappa(labels: np.ndarray, predictions: np.ndarray) -> float:
    """κ = (p_o − p_e) / (1 − p_e) with p_e from the two marginals (Cohen, 1960)."""
    labels, predictions = _binary_inputs(labels, predictions)
    if labels.size == 0:
        warnings.warn("no samples: Cohen's kappa is undefined (NaN)", RuntimeWarning, stacklevel=2)
        return math.nan
    observed = float(np.mean(labels == predictions))
    label_rate, prediction_rate = labels.mean(), predictions.mean()
    expected = float(label_rate * prediction_rate + (1 - label_rate) * (1 - prediction_rate))
    if expected >= 1.0:
        warnings.warn("labels and predictions are both constant: Cohen's kappa is undefined (NaN)", RuntimeWarning,
                      stacklevel=2)
        return math.nan
    return (observed - expected) / (1.0 - expected)


# --- multi-label: one AUROC per finding (the chest X-ray family, seed 004) -------------

def finding_aurocs(target: np.ndarray, score: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per finding (column): the AUROC of `score` against `target` on the rows where `mask`,
    and the number of those rows. The AUROC is NaN where those rows hold one class only (or
    none). Rows whose score is not finite are not evaluated (a broken prediction must not
    crash the report; `nonfinite_scores` counts them for a note)."""
    target = np.asarray(target, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(score) & ~np.isnan(target)
    n = mask.sum(axis=0)
    aurocs = np.full(target.shape[1], np.nan)
    for f in range(target.shape[1]):
        rows = mask[:, f]
        labels = target[rows, f]
        positives = int(labels.sum())
        if 0 < positives < labels.size:
            aurocs[f] = roc_auc_score(labels, score[rows, f])
    return aurocs, n.astype(np.int64)


def weighted_macro(aurocs: np.ndarray, n: np.ndarray) -> float:
    """Σ n_f · AUROC_f / Σ n_f over the findings with a defined AUROC (Table 2's "macro-weighted
    average AUROC", the weights being evaluated rows as in the authors' code)."""
    defined = ~np.isnan(aurocs)
    if not defined.any():
        return math.nan
    return float(np.sum(n[defined] * aurocs[defined]) / np.sum(n[defined]))


def unweighted_macro(aurocs: np.ndarray) -> float:
    """The plain mean over the findings with a defined AUROC (Table 6, CheXpert)."""
    defined = ~np.isnan(aurocs)
    return float(aurocs[defined].mean()) if defined.any() else math.nan


def _binary_inputs(labels, values) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 0/1 labels and float64 values of the same length, or ValueError."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"labels {labels.shape} and scores or predictions {values.shape} differ in length")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return labels, values


def _both_classes(labels: np.ndarray, what: str) -> bool:
    """True when the labels hold both classes; else warn that `what` undefined."""
    n_positive = int(labels.sum())
    if 0 < n_positive < labels.size:
        return True
    warnings.warn(f"only one class among {labels.size} labels: {what} undefined and reported as NaN",
                  RuntimeWarning, stacklevel=3)
    return False
