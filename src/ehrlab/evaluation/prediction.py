"""Risk-prediction evaluation from final predictions: the PR and ROC curves of a test split.

The metrics themselves (PR-AUC trapezoid and average precision, F1, Cohen's kappa, ROC-AUC;
seed 000 §4.2) live in `ehrlab.metrics`, one implementation each, so that data tasks can use
them without importing the evaluation package. `binary_classification_metrics` and
`METRIC_NAMES` are imported here for the callers that still reach them through this module.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from ehrlab.metrics import METRIC_NAMES, binary_classification_metrics

__all__ = ["METRIC_NAMES", "binary_classification_metrics", "plot_pr_and_roc_curves"]


def plot_pr_and_roc_curves(labels: np.ndarray, probabilities: np.ndarray, path, title: str = "") -> bool:
    """Precision-recall and ROC curves side by side as a PNG (aggregate curves only: the
    chance line is the positive rate). Returns False, writing nothing, for one-class labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
