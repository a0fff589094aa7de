"""Hand-computed small cases for every metric of the synthetic-EHR suite (seed 002 §3, App. G)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from long_tables import long_table
from scipy import sparse

from ehrlab.errors import UserInputError
from ehrlab.evaluation.synthetic.bootstrap import confidence_intervals, resample_weights, standard_interval
from ehrlab.evaluation.synthetic.chapters import OTHER_CHAPTER, chapters_of, icd_chapter
from ehrlab.evaluation.synthetic.discriminator import discriminator_scores
from ehrlab.evaluation.synthetic.prevalence import (
    frequency_buckets,
    long_tail_code_sets,
    percentile_label,
    prevalence,
    prevalence_fit,
)
from ehrlab.evaluation.synthetic.privacy import (
    adversarial_accuracy,
    align_visits,
    distance_matrix,
    membership_inference,
    nearest_distances,
    nearest_other_distances,
    nnaar,
    privacy_distances,
)
from ehrlab.evaluation.synthetic.records import build_records
from ehrlab.evaluation.synthetic.structure import (
    chapter_prevalence,
    cooccurrence,
    cooccurrence_similarity,
    count_distribution,
    dataset_statistics,
    js_divergence,
    kl_divergence,
    top_k_overlap,
    vocabulary_overlap,
)


# ------------------------------------------------------------------ records
def test_records_treat_visits_as_sets_and_order_by_time():
    table = pd.DataFrame(
        {
            "subject_id": [7, 7, 7, 7, 3],
            "visit_id": [2, 2, 2, 1, 5],
            "code": ["b", "a", "a", "c", "a"],
            "time": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-01", "2021-01-01", "2019-01-01"]),
        }
    )
    vocabulary, records = build_records({"x": table})
    r = records["x"]
    assert list(vocabulary) == ["a", "b", "c"]
    assert r.n_patients == 2
    # patient rows follow subject_id order: 3 then 7; for 7, visit 2 (2020) comes before visit 1 (2021)
    assert r.visit_codes.toarray().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert r.visit_patient.tolist() == [0, 1, 1]
    assert r.visit_position.tolist() == [0, 0, 1]
    assert r.codes_per_patient.tolist() == [1, 3]
    assert r.patient_visit_counts.toarray().tolist() == [[1, 0, 0], [1, 1, 1]]


def test_records_order_by_visit_id_without_time_and_report_missing_columns():
    _, records = build_records({"x": long_table({1: [["a"], ["b"]]}).iloc[::-1]})
    assert records["x"].visit_codes.toarray().tolist() == [[1, 0], [0, 1]]
    with pytest.raises(UserInputError, match="lacks column"):
        build_records({"synthetic": pd.DataFrame({"subject_id": [1], "code": ["a"]})})


# ------------------------------------------------------------------ prevalence
def test_prevalence_is_share_of_patients_and_weights_count_patients():
    x = sparse.csr_matrix(np.array([[1, 0], [1, 1], [0, 1], [0, 1]]))
    assert prevalence(x).tolist() == [0.5, 0.75]
    assert prevalence(x, np.array([2.0, 0, 0, 1])).tolist() == pytest.approx([2 / 3, 1 / 3])
    batch = prevalence(x, np.array([[1.0, 1, 1, 1], [2, 0, 0, 1]]))
    assert batch.shape == (2, 2) and batch[1].tolist() == pytest.approx([2 / 3, 1 / 3])


def test_prevalence_fit_by_hand():
    real, synthetic = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.4, 0.3, 0.1, 0.2])
    fit = prevalence_fit(real, synthetic)
    assert fit["r2"] == pytest.approx(1 - 0.06 / 0.13)  # SS_res 0.06, SS_tot 0.13
    assert fit["rmse"] == pytest.approx(math.sqrt(0.06 / 4))
    dr, ds = real - real.mean(), synthetic - synthetic.mean()
    assert fit["pearson"] == pytest.approx(np.sum(dr * ds) / math.sqrt(np.sum(dr**2) * np.sum(ds**2)))
    assert prevalence_fit(real, real) == pytest.approx({"r2": 1.0, "pearson": 1.0, "rmse": 0.0})
    assert math.isnan(prevalence_fit(np.full(3, 0.1), np.array([0.1, 0.2, 0.0]))["r2"])  # no spread


def test_frequency_deciles_and_long_tail_cuts():
    real = np.array([0.0] + [i / 100 for i in range(1, 21)])  # code 0 absent from real; code 20 most frequent
    buckets = frequency_buckets(real)
    assert len(buckets) == 10 and [b.tolist() for b in buckets[:2]] == [[20, 19], [18, 17]]
    assert buckets[-1].tolist() == [2, 1]
    tied = frequency_buckets(np.array([0.1, 0.2, 0.1, 0.1]), n_buckets=2)
    assert [b.tolist() for b in tied] == [[1, 0], [2, 3]]  # ties broken by code id
    cuts = long_tail_code_sets(np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]), (75.0, 99.0))
    assert cuts[75.0].tolist() == [0, 1, 2, 3, 4, 5] and len(cuts[99.0]) == 8
    assert percentile_label(97.5) == "p97_5" and percentile_label(75.0) == "p75"


# ------------------------------------------------------------------ structure (Tables 12-14)
def test_table12_statistics_by_hand_and_weighted():
    _, records = build_records({"x": long_table({1: [["a", "b", "b"], ["a"]], 2: [["c"]]})})
    r = records["x"]
    assert dataset_statistics(r) == pytest.approx(
        {"patients": 2, "visits": 3, "visits_per_patient": 1.5, "codes_per_visit": 4 / 3, "codes_per_patient": 1.5, "unique_codes": 3}
    )
    assert dataset_statistics(r, np.array([2.0, 0.0])) == pytest.approx(
        {"patients": 2, "visits": 4, "visits_per_patient": 2, "codes_per_visit": 1.5, "codes_per_patient": 2, "unique_codes": 2}
    )
    assert count_distribution(r.visits_per_patient) == {1: 0.5, 2: 0.5}


def test_table13_vocabulary_overlap_by_hand():
    real, synthetic = np.array([0.5, 0.2, 0.0, 0.1]), np.array([0.4, 0.0, 0.3, 0.1])
    overlap = vocabulary_overlap(real, synthetic, top_k=(2,))
    assert overlap["unique_codes"] == 3 and overlap["novel_codes"] == 1
    assert overlap["coverage"] == pytest.approx(2 / 3) and overlap["jaccard"] == pytest.approx(2 / 4)
    assert overlap["top2_overlap"] == 1  # real top-2 {0, 1}, synthetic {0, 2}
    assert top_k_overlap(np.array([0.5, 0.4, 0.3, 0.2]), np.array([0.1, 0.4, 0.3, 0.5]), 2) == 1


def test_kl_and_js_by_hand():
    real, synthetic = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    assert kl_divergence(real, synthetic) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-5)
    m = np.array([0.375, 0.625])
    expected_js = 0.5 * sum(p * math.log(p / q) for p, q in zip(real, m)) + 0.5 * sum(
        p * math.log(p / q) for p, q in zip(synthetic, m)
    )
    assert js_divergence(real, synthetic) == pytest.approx(expected_js)
    assert js_divergence(real, real) == pytest.approx(0.0)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.log(2))
    # a real code never generated: finite thanks to the smoothing, and large
    assert 5 < kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])) < 20


def test_table14_cooccurrence_by_hand():
    x = sparse.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]]))
    real = cooccurrence(x, np.array([0, 1, 2]))
    expected = np.array([[0, 2 / 3, 1 / 3], [2 / 3, 0, 1 / 3], [1 / 3, 1 / 3, 0]])
    np.testing.assert_allclose(real, expected)
    np.testing.assert_allclose(cooccurrence(x, np.array([0, 1, 2]), np.array([0.0, 1.0, 0.0]))[0, 2], 1.0)
    synthetic = np.zeros((3, 3))
    synthetic[0, 1] = synthetic[1, 0] = 1 / 3
    similarity = cooccurrence_similarity(real, synthetic)
    assert similarity["cosine"] == pytest.approx(4 / math.sqrt(24))
    assert similarity["frobenius"] == pytest.approx(math.sqrt(6 / 9))

    assert cooccurrence_similarity(real, real) == pytest.approx({"cosine": 1.0, "frobenius": 0.0})


def test_icd_chapters_dotted_undotted_namespaced_and_logging_untouched():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    circulatory = icd_chapter("428.0")
    assert circulatory.startswith("ICD-9 390-459") and icd_chapter("4280") == circulatory
    assert icd_chapter("DIAGNOSIS//ICD//9//428.0") == circulatory
    assert icd_chapter("DIAGNOSIS//ICD//9//V45.81").startswith("ICD-9 V01-V91")
    assert icd_chapter("E8497").startswith("ICD-9 E000-E999")
    assert icd_chapter("DIAGNOSIS//ICD//10//I50.23").startswith("ICD-10 I00-I99")
    assert icd_chapter("LAB//50912//mg/dL") == OTHER_CHAPTER and icd_chapter("not-a-code") == OTHER_CHAPTER
    assert root.handlers == handlers and root.level == level
    names, index = chapters_of(np.array(["428.0", "401.9", "V45.81"], dtype=object))
    assert len(names) == 2 and index[0] == index[1] != index[2]
    x = sparse.csr_matrix(np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1]]))
    np.testing.assert_allclose(chapter_prevalence(x, index, len(names)), [0.5, 0.5][:: 1 if index[0] == 0 else -1])


# ------------------------------------------------------------------ privacy (§3.2)
def _aligned(records: dict[int, list[list[str]]], vocabulary_from=None):
    tables = {"a": long_table(records)}
    if vocabulary_from is not None:
        tables["b"] = long_table(vocabulary_from)
    _, built = build_records(tables)
    n_positions = max(r.visits_per_patient.max() for r in built.values())
    return [align_visits(r, n_positions) for r in built.values()]


def test_patient_distance_by_hand():
    a = {1: [["1", "2"], ["3"]], 2: [["2"]]}
    b = {1: [["1"], ["3", "4"], ["5"]]}
    left, right = _aligned(a, b)
    # a1 vs b1: |{1,2}Δ{1}| + |{3}Δ{3,4}| + |{5}| + 1 (2 vs 3 visits) = 4
    # a2 vs b1: |{2}Δ{1}| + |{3,4}| + |{5}| + 1 = 6
    assert distance_matrix(left, right).ravel().tolist() == [4, 6]
    # a1 vs a2: |{1,2}Δ{2}| + |{3}| + 1 = 3
    assert distance_matrix(left, left).tolist() == [[0, 3], [3, 0]]
    to_right, to_left = nearest_distances(left, right)
    assert to_right.tolist() == [4, 6] and to_left.tolist() == [4]


def test_nearest_other_excludes_self_but_counts_duplicates():
    (records,) = _aligned({1: [["a"]], 2: [["a"]], 3: [["a", "b"], ["c"]]})
    assert nearest_other_distances(records).tolist() == [0, 0, 1 + 1 + 1]


def test_adversarial_accuracy_ties_count_half():
    aa = adversarial_accuracy(np.array([1, 2, 3]), np.array([2, 2, 1]), np.array([0, 4]), np.array([1, 1]))
    assert aa == pytest.approx(0.5 * ((0 + 0.5 + 1) / 3 + (0 + 1) / 2))


def test_nnaar_flags_a_copy_of_training_by_hand():
    train = {1: [["a", "b"]], 2: [["c"], ["d"]], 3: [["e", "f", "g"]]}
    test = {11: [["a", "x"]], 12: [["c"], ["y"]], 13: [["e", "f"]]}
    synthetic = {21 + k: v for k, v in enumerate(train.values())}
    _, records = build_records({"train": long_table(train), "test": long_table(test), "synthetic": long_table(synthetic)})
    result = nnaar(privacy_distances(records["train"], records["test"], records["synthetic"]))
    assert result["aa_ts"] == 0.0  # every record's nearest other-set neighbour is at distance 0
    # held-out: d(e,S) = [2, 2, 1] vs d(e,E∖e) = [4, 5, 4] -> 0; d(s,E) = [2, 2, 1] vs d(s,S∖s) = [5, 5, 5] -> 0
    assert result["aa_es"] == 0.0 and result["nnaar"] == 0.0
    shuffled = {21: [["x", "y"]], 22: [["z"]], 23: [["w", "v", "u"]]}
    _, records = build_records({"train": long_table(train), "test": long_table(test), "synthetic": long_table(shuffled)})
    assert nnaar(privacy_distances(records["train"], records["test"], records["synthetic"]))["aa_ts"] > 0


def test_membership_inference_by_hand():
    members, non_members = np.array([0, 0, 1, 5]), np.array([2, 3, 1, 4])
    result = membership_inference(members, non_members, tie_order=np.arange(8))
    # lowest half by distance: 0, 0, 1 (member), 1 (non-member) -> 3 true positives of 4 predicted
    assert result == pytest.approx({"accuracy": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75})
    # all distances tied: the tie order alone decides, and exactly half are called members
    tied = membership_inference(np.zeros(2), np.zeros(2), tie_order=np.array([0.1, 0.2, 0.3, 0.4]))
    assert tied["recall"] == 1.0 and tied["accuracy"] == 1.0
    copies = membership_inference(np.zeros(50), np.full(50, 3.0), tie_order=np.random.default_rng(0).random(100))
    assert copies["f1"] == 1.0


def test_empty_attack_set_scores_nan_not_zero():
    # Precision, recall and F1 come from ehrlab.metrics: undefined is NaN (with a warning),
    # where the hand-written formulas of before reported 0.
    with pytest.warns(RuntimeWarning):
        empty = membership_inference(np.array([]), np.array([]), tie_order=np.array([]))
    assert set(empty) == {"accuracy", "precision", "recall", "f1"}
    assert all(math.isnan(value) for value in empty.values())


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_weights_and_interval():
    rng = np.random.default_rng(0)
    weights = resample_weights(10, rng)
    assert weights.sum() == 10 and weights.shape == (10,)
    assert standard_interval(2.0, [1.0, 2.0, 3.0]) == pytest.approx((2 - 1.959964, 2 + 1.959964))
    assert all(math.isnan(v) for v in standard_interval(1.0, [1.0]))
    values = rng.normal(size=500)
    estimate = values.mean()
    replicates = [{"mean": values[rng.integers(0, 500, 500)].mean()} for _ in range(200)]
    low, high = confidence_intervals({"mean": estimate}, replicates)["mean"]
    assert low < estimate < high
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(500), rel=0.25)  # ≈ 2·z·σ/√n


# ------------------------------------------------------------------ discriminator score (§3.1)
def test_discriminator_scores_by_hand():
    labels = np.array([1, 1, 0, 0])
    scores = discriminator_scores(labels, np.array([0.9, 0.5, 0.5, 0.1]))
    # pairs (positive, negative): 0.9>0.5, 0.9>0.1, 0.5=0.5 (½), 0.5>0.1 -> AUC 3.5/4
    assert scores["auc"] == pytest.approx(0.875)
    assert scores["accuracy"] == pytest.approx(0.75)  # 0.5 counts as "real"
    assert scores["score"] == pytest.approx(1 - 2 * 0.25) and scores["auc_score"] == pytest.approx(0.25)
    assert discriminator_scores(labels, np.full(4, 0.7))["auc_score"] == 1.0  # a constant guess is chance


def test_discriminator_auc_of_one_class_is_nan_with_a_warning():
    # ROC AUC is ehrlab.metrics.roc_auc: one-class labels warn instead of passing silently.
    with pytest.warns(RuntimeWarning, match="one class"):
        scores = discriminator_scores(np.ones(4), np.array([0.9, 0.5, 0.5, 0.1]))
    assert math.isnan(scores["auc"]) and scores["accuracy"] == 0.75


def _reference_distance(a: list[set], b: list[set]) -> int:
    """§3.2.1 written out literally, for checking the vectorised version."""
    aligned = sum(len(x ^ y) for x, y in zip(a, b))
    longer = a if len(a) > len(b) else b
    return aligned + sum(len(v) for v in longer[min(len(a), len(b)) :]) + int(len(a) != len(b))


def test_vectorised_distance_matches_the_definition_with_dense_and_sparse_columns(monkeypatch):
    import ehrlab.evaluation.synthetic.privacy as privacy

    rng = np.random.default_rng(0)

    def random_records(first: int, n: int) -> dict[int, list[list[str]]]:
        return {
            first + i: [[f"c{c}" for c in rng.choice(8, rng.integers(1, 5), replace=False)] for _ in range(rng.integers(1, 4))]
            for i in range(n)
        }

    a_records, b_records = random_records(0, 30), random_records(100, 25)
    expected = np.array(
        [[_reference_distance([set(v) for v in a], [set(v) for v in b]) for b in b_records.values()] for a in a_records.values()]
    )
    monkeypatch.setattr(privacy, "DENSE_COLUMNS", 5)  # most columns take the sparse path
    monkeypatch.setattr(privacy, "CHUNK_ROWS", 7)  # several row blocks
    left, right = _aligned(a_records, b_records)
    np.testing.assert_array_equal(distance_matrix(left, right), expected)
    to_right, to_left = nearest_distances(left, right)
    np.testing.assert_array_equal(to_right, expected.min(axis=1))
    np.testing.assert_array_equal(to_left, expected.min(axis=0))
    self_expected = np.array([[_reference_distance([set(v) for v in a], [set(v) for v in b]) for b in a_records.values()] for a in a_records.values()])
    np.fill_diagonal(self_expected, 10**6)
    np.testing.assert_array_equal(nearest_other_distances(left), self_expected.min(axis=1))
    # Blocks computed by several threads reduce to the same distances.
    np.testing.assert_array_equal(nearest_other_distances(left, n_jobs=3), self_expected.min(axis=1))
    np.testing.assert_array_equal(nearest_distances(left, right, n_jobs=3)[1], expected.min(axis=0))


def test_cooccurrence_through_the_pair_incidence_equals_the_weighted_product():
    """The bootstrap's one-product form equals X^T diag(w) X / Σw on a random record set, with
    a chosen code order that is not the column order and a patient holding none of the codes."""
    rng = np.random.default_rng(0)
    x = sparse.csr_matrix(rng.random((200, 30)) < 0.15)
    codes = np.array([7, 2, 19, 0, 11])
    weights = rng.poisson(1.0, 200).astype(float)
    dense = x[:, codes].toarray().astype(float)
    expected = (dense * weights[:, None]).T @ dense / weights.sum()
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(cooccurrence(x, codes, weights), expected)
