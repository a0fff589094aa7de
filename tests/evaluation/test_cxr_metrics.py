"""Seed 004's evaluation numbers against hand computations (EHRXDiff §4.3, Tables 2, 3, 6)."""

import math

import numpy as np
import pytest

from ehrlab.evaluation.cxr import metrics

NAN = np.nan


def test_same_diff_masks_decide_per_pair_and_finding_with_a_missing_previous_label_as_absent():
    prev = np.array([[1, NAN], [0, 1], [NAN, 0], [1, 1]], dtype=np.float32)
    target = np.array([[1, 0], [1, NAN], [0, 0], [NAN, 0]], dtype=np.float32)
    masks = metrics.same_diff_masks(prev, target)
    np.testing.assert_array_equal(masks["all"], [[1, 1], [1, 0], [1, 1], [0, 1]])
    # (0, 1): previous NaN counts as 0 = target 0 -> same; (2, 0): NaN vs 0 -> same.
    np.testing.assert_array_equal(masks["same"], [[1, 1], [0, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(masks["diff"], [[0, 0], [1, 0], [0, 0], [0, 1]])


def test_weighted_macro_weights_each_findings_auroc_by_its_evaluated_rows():
    # Finding 0: 4 rows, positives 0.35 / 0.8 against negatives 0.1 / 0.4: 3 of 4 orderings -> 0.75.
    # Finding 1: 3 rows (one NaN target), positives 0.9 / 0.1 against negative 0.2: 1 of 2 -> 0.5.
    target = np.array([[0, 0], [0, 1], [1, 1], [1, NAN]])
    score = np.array([[0.1, 0.2], [0.4, 0.9], [0.35, 0.1], [0.8, 0.7]])
    mask = ~np.isnan(target)
    aurocs, n = metrics.finding_aurocs(target, score, mask)
    np.testing.assert_allclose(aurocs, [0.75, 0.5])
    np.testing.assert_array_equal(n, [4, 3])
    assert metrics.weighted_macro_auroc(target, score, mask) == pytest.approx((4 * 0.75 + 3 * 0.5) / 7)
    assert metrics.unweighted_macro(aurocs) == pytest.approx(0.625)


def test_a_finding_with_one_class_is_left_out_and_the_weights_renormalise():
    target = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1], [1, NAN, 1]])
    score = np.array([[0.1, 0.2, 0.5], [0.4, 0.9, 0.5], [0.35, 0.1, 0.5], [0.8, 0.7, 0.5]])
    mask = ~np.isnan(target)
    aurocs, n = metrics.finding_aurocs(target, score, mask)
    assert math.isnan(aurocs[2]) and n[2] == 4
    assert metrics.weighted_macro(aurocs, n) == pytest.approx(4.5 / 7)
    assert metrics.unweighted_macro(aurocs) == pytest.approx(0.625)
    assert math.isnan(metrics.weighted_macro(np.array([NAN]), np.array([3])))


def test_previous_label_predictions_score_same_one_and_diff_zero_exactly():
    """Seed 004 Table 2's "Previous label" row: 1.000 on Same, 0.000 on Diff."""
    rng = np.random.default_rng(0)
    prev = (rng.random((200, 3)) < 0.4).astype(np.float32)
    prev[rng.random((200, 3)) < 0.1] = NAN
    flip = rng.random((200, 3)) < 0.3
    target = np.where(flip, 1 - np.nan_to_num(prev), np.nan_to_num(prev)).astype(np.float32)
    target[rng.random((200, 3)) < 0.1] = NAN
    result = metrics.clinical_consistency(prev, target, np.nan_to_num(prev), ["a", "b", "c"])
    assert result["auroc_same"] == 1.0 and result["auroc_macro_same"] == 1.0
    assert result["auroc_diff"] == 0.0 and result["auroc_macro_diff"] == 0.0
    assert 0.0 < result["auroc_all"] < 1.0
    for finding in "abc":
        assert result[f"n/{finding}/all"] == result[f"n/{finding}/same"] + result[f"n/{finding}/diff"]


def test_rows_with_a_nonfinite_score_are_not_evaluated():
    target = np.array([[0.0], [1.0], [0.0], [1.0]])
    score = np.array([[0.1], [0.9], [NAN], [0.2]])
    aurocs, n = metrics.finding_aurocs(target, score, np.ones_like(target, dtype=bool))
    assert n[0] == 3 and aurocs[0] == 1.0  # positives 0.9, 0.2 above the one negative 0.1
    assert metrics.nonfinite_scores(score, np.ones_like(target, dtype=bool)) == 1


def test_age_pearson_over_known_ages_and_a_reason_when_there_are_none():
    true = np.array([30, 50, NAN, 70, 90], dtype=np.float32)
    predicted = np.array([35, 45, 99, 80, 85], dtype=np.float32)
    value, reason = metrics.age_pearson(true, predicted)
    assert reason is None
    assert value == pytest.approx(np.corrcoef([30, 50, 70, 90], [35, 45, 80, 85])[0, 1])
    value, reason = metrics.age_pearson(np.full(5, NAN), predicted)
    assert math.isnan(value) and "age" in reason


def test_sex_auroc_leaves_unknown_sex_out():
    sex = np.array([0, 1, 2, 1, 0])
    prob_male = np.array([0.2, 0.9, 0.99, 0.3, 0.4])
    # Males 0.9 / 0.3 against females 0.2 / 0.4: 3 of 4 orderings.
    assert metrics.sex_auroc(sex, prob_male) == (pytest.approx(0.75), None)
    value, reason = metrics.sex_auroc(np.array([1, 1, 2]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(value) and "sex" in reason


def test_race_auroc_is_the_one_vs_rest_macro_over_the_groups_other_left_out():
    race = np.array(["ASIAN", "ASIAN", "BLACK", "BLACK", "WHITE", "WHITE", "OTHER"])
    probs = np.array([  # ASIAN, BLACK, WHITE, OTHER; rows sum to 1 over the three groups
        [0.6, 0.2, 0.2, 0.0], [0.3, 0.3, 0.4, 0.0], [0.2, 0.7, 0.1, 0.0], [0.1, 0.5, 0.4, 0.0],
        [0.1, 0.1, 0.8, 0.0], [0.2, 0.6, 0.2, 0.0], [0.9, 0.05, 0.05, 0.0]])
    # Asian: positives 0.6, 0.3 vs negatives 0.2 0.1 0.1 0.2 -> 8/8 = 1.
    # Black: positives 0.7, 0.5 vs negatives 0.2 0.3 0.1 0.6 -> 4 + 3 = 7/8.
    # White: positives 0.8, 0.2 vs negatives 0.2 0.4 0.1 0.4 -> 4 + (0.5 tie + 1) = 5.5/8.
    value, reason = metrics.race_auroc(race, probs)
    assert reason is None
    assert value == pytest.approx((1 + 7 / 8 + 5.5 / 8) / 3)
    value, reason = metrics.race_auroc(np.array(["WHITE", "WHITE", "OTHER"]), probs[:3])
    assert math.isnan(value) and "one race group" in reason
    value, reason = metrics.race_auroc(np.array(["OTHER"] * 3), probs[:3])
    assert math.isnan(value) and "race" in reason
