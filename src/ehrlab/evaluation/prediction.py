"""Binary risk-prediction metrics, computed from final predictions only.

Seed 000 (MedDiffusion, §4.2 "Evaluation Metrics") reports PR-AUC, F1 and Cohen's kappa
in percent; ROC-AUC is added because most risk papers report it. Every risk model is judged
by this one function, from its predicted probabilities and the true labels.

Two PR-AUC estimators are returned because papers disagree:

- ``pr_auc``: the trapezoidal area under the precision-recall curve,
  ``auc(recall, precision)``. This is what the MedDiffusion authors' code reports, so the
  number comparable to their Table 2 is this one. Trapezoids interpolate linearly between
  PR points, which is optimistic (Davis & Goadrich, 2006).
- ``average_precision``: the step-wise sum ``Σ (R_n − R_{n−1}) P_n`` (no interpolation),
  the usual estimator elsewhere (sklearn's ``average_precision_score``).

F1 and kappa use the predicted class of a two-way softmax, i.e. class 1 when
``probability > threshold`` (0.5): an exact tie goes to class 0 as ``argmax`` does.

Values are fractions in [0, 1] (kappa in [-1, 1]); callers that log percent multiply by
100. Metrics that are undefined on the given labels (one-class test sets, no positive
predictions nor labels for F1) come back as NaN with a warning instead of raising, so a
tiny or degenerate split never crashes a run.
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
    labels = np.asarray(labels).astype(np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} differ in length")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")

    predictions = (probabilities > threshold).astype(np.int64)
    metrics = {"f1": _f1(labels, predictions), "kappa": _cohen_kappa(labels, predictions)}

    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        warnings.warn(
            f"only one class among {labels.size} labels: PR-AUC, average precision and ROC-AUC "
            "are undefined and reported as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        metrics.update(pr_auc=math.nan, average_precision=math.nan, roc_auc=math.nan)
    else:
        precision, recall, _ = precision_recall_curve(labels, probabilities)
        metrics["pr_auc"] = float(auc(recall, precision))
        metrics["average_precision"] = float(average_precision_score(labels, probabilities))
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities))
    return {name: metrics[name] for name in METRIC_NAMES}


def _f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    true_positives = int(np.sum((labels == 1) & (predictions == 1)))
    denominator = int(labels.sum() + predictions.sum())  # 2TP + FP + FN
    if denominator == 0:
        warnings.warn("no positive labels and no positive predictions: F1 is undefined (NaN)", RuntimeWarning, stacklevel=3)
        return math.nan
    return 2.0 * true_positives / denominator


def _cohen_kappa(labels: np.ndarray, predictions: np.ndarray) -> float:
    """κ = (p_o − p_e) / (1 − p_e) with p_e from the two marginals (Cohen, 1960)."""
    if labels.size == 0:
        warnings.warn("no samples: Cohen's kappa is undefined (NaN)", RuntimeWarning, stacklevel=3)
        return math.nan
    observed = float(np.mean(labels == predictions))
    label_rate, prediction_rate = labels.mean(), predictions.mean()
    expected = float(label_rate * prediction_rate + (1 - label_rate) * (1 - prediction_rate))
    if expected >= 1.0:
        warnings.warn(
            "labels and predictions are both constant: Cohen's kappa is undefined (NaN)", RuntimeWarning, stacklevel=3
        )
        return math.nan
    return (observed - expected) / (1.0 - expected)


def plot_pr_and_roc_curves(labels: np.ndarray, probabilities: np.ndarray, path, title: str = "") -> bool:
    """Precision-recall and ROC curves side by side as a PNG (aggregate curves only: the
    chance line is the positive rate). Returns False, writing nothing, for one-class labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.size == 0 or labels.min() == labels.max():
        return False
    metrics = binary_classification_metrics(labels, probabilities)
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    false_positive, true_positive, _ = roc_curve(labels, probabilities)
    fig, (pr_axis, roc_axis) = plt.subplots(1, 2, figsize=(9, 4))
    pr_axis.plot(recall, precision)
    pr_axis.axhline(labels.mean(), color="grey", linestyle="--", linewidth=1, label="chance")
    pr_axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                title=f"PR: trapezoid {100 * metrics['pr_auc']:.1f}, AP {100 * metrics['average_precision']:.1f}")
    pr_axis.legend(loc="lower left")
    roc_axis.plot(false_positive, true_positive)
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    roc_axis.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
                 title=f"ROC: AUC {100 * metrics['roc_auc']:.1f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
