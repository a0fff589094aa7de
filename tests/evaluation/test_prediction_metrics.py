"""Binary classification metrics (ehrlab.metrics) against hand-computed values, and the
import layering that keeps one implementation of each."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ehrlab import metrics as metrics_module
from ehrlab.evaluation import prediction
from ehrlab.metrics import METRIC_NAMES, binary_classification_metrics

# Four patients, scores sorted descending: 0.8 (+), 0.4 (−), 0.35 (+), 0.1 (−).
LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_hand_computed_case():
    metrics = binary_classification_metrics(LABELS, SCORES)
    assert set(metrics) == set(METRIC_NAMES)
    # ROC-AUC: of the 4 (positive, negative) pairs, 3 are ordered correctly.
    assert metrics["roc_auc"] == pytest.approx(3 / 4)
    # Average precision: recall steps of 1/2 at precision 1 (0.8) and 2/3 (0.35).
    assert metrics["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Trapezoidal PR-AUC over (recall, precision) points (0,1), (.5,1), (.5,.5), (1,2/3):
    # 0.5·1 + 0 + 0.5·(0.5 + 2/3)/2.
    assert metrics["pr_auc"] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    # Threshold 0.5 predicts only the 0.8 patient positive: TP 1, FP 0, FN 1.
    assert metrics["f1"] == pytest.approx(2 / 3)
    # p_o = 3/4, p_e = .5·.25 + .5·.75 = .5 → κ = (.75 − .5)/(1 − .5).
    assert metrics["kappa"] == pytest.approx(0.5)


def test_threshold_tie_goes_to_negative_class_like_argmax():
    # Probability exactly 0.5 is argmax class 0 of a two-way softmax.
    metrics = binary_classification_metrics(np.array([1, 0]), np.array([0.5, 0.2]))
    assert metrics["f1"] == 0.0


def test_perfect_and_inverted_rankings():
    labels = np.array([0, 1, 0, 1, 1])
    perfect = binary_classification_metrics(labels, labels * 0.9 + 0.05)
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == pytest.approx(1.0)
    assert perfect["f1"] == 1.0 and perfect["kappa"] == 1.0
    inverted = binary_classification_metrics(labels, 1 - (labels * 0.9 + 0.05))
    assert inverted["roc_auc"] == 0.0 and inverted["f1"] == 0.0
    assert inverted["kappa"] < 0


def test_matches_sklearn_on_random_data():
    from sklearn.metrics import cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    metrics = binary_classification_metrics(labels, scores)
    predictions = (scores > 0.5).astype(int)
    assert metrics["f1"] == pytest.approx(f1_score(labels, predictions))
    assert metrics["kappa"] == pytest.approx(cohen_kappa_score(labels, predictions))
    # Trapezoids interpolate linearly, average precision does not: the two differ.
    assert metrics["pr_auc"] != pytest.approx(metrics["average_precision"], abs=1e-6)


def test_one_class_labels_give_nan_with_warning_not_a_crash():
    with pytest.warns(RuntimeWarning, match="one class"):
        metrics = binary_classification_metrics(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5))
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"]) and math.isnan(metrics["average_precision"])
    # F1 is still defined (predictions above 0.5 are false positives) and is 0.
    assert metrics["f1"] == 0.0


def test_all_negative_labels_and_predictions_make_f1_and_kappa_nan():
    with pytest.warns(RuntimeWarning):
        metrics = binary_classification_metrics(np.zeros(4, dtype=int), np.full(4, 0.1))
    assert math.isnan(metrics["f1"]) and math.isnan(metrics["kappa"])


def test_rejects_mismatched_or_non_binary_inputs():
    with pytest.raises(ValueError, match="differ"):
        binary_classification_metrics(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="0 or 1"):
        binary_classification_metrics(np.array([0, 2]), np.array([0.5, 0.5]))


def test_pr_and_roc_curve_plot(tmp_path):
    from ehrlab.evaluation.prediction import plot_pr_and_roc_curves

    labels = np.array([0, 0, 1, 1, 0, 1])
    probabilities = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert plot_pr_and_roc_curves(labels, probabilities, tmp_path / "curves.png", title="test")
    assert (tmp_path / "curves.png").stat().st_size > 5000
    assert not plot_pr_and_roc_curves(np.ones(4), np.full(4, 0.5), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_single_metrics_are_the_ones_the_summary_reports():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.2 + rng.random(200) * 0.8, 0, 1)
    predictions = (scores > 0.5).astype(int)
    summary = binary_classification_metrics(labels, scores)
    assert metrics_module.roc_auc(labels, scores) == summary["roc_auc"]
    assert metrics_module.pr_auc_trapezoid(labels, scores) == summary["pr_auc"]
    assert metrics_module.average_precision(labels, scores) == summary["average_precision"]
    assert metrics_module.f1(labels, predictions) == summary["f1"]
    assert metrics_module.cohen_kappa(labels, predictions) == summary["kappa"]
    # ROC-AUC with ties counts them one half (the Mann-Whitney statistic).
    assert metrics_module.roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(7 / 8)
    with pytest.warns(RuntimeWarning, match="one class"):
        assert math.isnan(metrics_module.roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_accuracy_precision_recall_by_hand_and_against_sklearn():
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    labels, predictions = np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0])  # TP 2, FN 1, FP 1, TN 1
    assert metrics_module.accuracy(labels, predictions) == pytest.approx(3 / 5)
    assert metrics_module.precision(labels, predictions) == pytest.approx(2 / 3)
    assert metrics_module.recall(labels, predictions) == pytest.approx(2 / 3)
    rng = np.random.default_rng(2)
    labels, predictions = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert metrics_module.accuracy(labels, predictions) == pytest.approx(accuracy_score(labels, predictions))
    assert metrics_module.precision(labels, predictions) == pytest.approx(precision_score(labels, predictions))
    assert metrics_module.recall(labels, predictions) == pytest.approx(recall_score(labels, predictions))
    # Boolean predictions (the suite's attacks and discriminators) are 0/1 too.
    assert metrics_module.precision(labels, predictions.astype(bool)) == metrics_module.precision(labels, predictions)


def test_accuracy_precision_recall_are_nan_where_undefined():
    # sklearn returns 0 here (zero_division); a score of nothing is not a score of zero.
    with pytest.warns(RuntimeWarning, match="no positive predictions"):
        assert math.isnan(metrics_module.precision(np.array([1, 0]), np.array([0, 0])))
    with pytest.warns(RuntimeWarning, match="no positive labels"):
        assert math.isnan(metrics_module.recall(np.array([0, 0]), np.array([1, 0])))
    with pytest.warns(RuntimeWarning, match="no samples"):
        assert math.isnan(metrics_module.accuracy(np.array([], dtype=int), np.array([])))


def test_the_evaluation_module_reuses_the_one_implementation():
    assert prediction.binary_classification_metrics is metrics_module.binary_classification_metrics
    assert prediction.METRIC_NAMES is metrics_module.METRIC_NAMES


def test_data_tasks_import_neither_models_nor_evaluation():
    """Building a risk cohort with the synthetic source's planted ceiling (which scores the
    test split) must load nothing from ehrlab.evaluation or ehrlab.models (issue 16)."""
    script = f"""
import sys
import numpy as np, pandas as pd
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from support import MIMIC3_TINY
from ehrlab.data.sources.mimic3 import MIMIC3Source
from ehrlab.data.tasks.risk import RiskTask
from ehrlab.data.tasks.generation import GenerationTask
from ehrlab.data.datamodules import EHRDataModule
tables = MIMIC3Source(MIMIC3_TINY).read()
subjects = tables.static["subject_id"].to_numpy()
planted = pd.DataFrame({{"subject_id": subjects, "cohort": "heart_failure", "risk": np.linspace(0, 1, len(subjects))}})
task = RiskTask("heart_failure", {{"icd9": ["398.91", "428*"]}}, controls_per_case=None, split=[0.4, 0.2, 0.4])
tables.planted = planted
assert "planted_ceiling" in task.build(tables, seed=0).stats
GenerationTask(split=[0.4, 0.2, 0.4]).build(tables, seed=0)
loaded = sorted(m for m in sys.modules if m.startswith(("ehrlab.evaluation", "ehrlab.models")))
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
