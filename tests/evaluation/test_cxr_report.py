"""evaluate_forecasts end to end on a tiny drawn reference: the metric keys, the gt and
ceiling rows, Table 2's Previous-label row, switched-off metrics, and the written files."""

import dataclasses
import json
import math

import numpy as np
import pytest
from test_cxr_evaluators import TINY, draw_image_set, draw_images

from ehrlab.data.cxr.contract import RACE_GROUPS, ForecastReference
from ehrlab.errors import UserInputError
from ehrlab.evaluation.cxr import EvaluationSettings, evaluate_forecasts, train_evaluator

# Two label sets; ImaGenome is the headline (LABEL_SETS order) although it comes second here.
FINDINGS = ["chexpert:bar", "imagenome:square"]


def make_reference(n: int = 64, seed: int = 5) -> ForecastReference:
    rng = np.random.default_rng(seed)
    prev = (rng.random((n, 2)) < 0.5).astype(np.float32)
    flip = rng.random((n, 2)) < 0.3
    target = np.where(flip, 1 - prev, prev).astype(np.float32)
    target[rng.random((n, 2)) < 0.1] = np.nan
    prev[rng.random((n, 2)) < 0.1] = np.nan
    sex = rng.integers(0, 2, n)
    sex[:3] = 2
    age = rng.uniform(20, 90, n).astype(np.float32)
    race = np.array([*RACE_GROUPS, "OTHER"])[np.arange(n) % 4]
    # Drawn columns: [bar, square] as in FINDINGS; the drawing helper wants [square, bar].
    prev_images = draw_images(prev[:, ::-1], sex, age, rng)
    target_images = draw_images(target[:, ::-1], sex, age, rng)
    planted = np.clip(np.nan_to_num(target, nan=0.5) * 0.8 + rng.uniform(0, 0.2, (n, 2)), 0, 1).astype(np.float32)
    return ForecastReference(pair_id=np.arange(n, dtype=np.int64), subject_id=np.arange(n, dtype=np.int64) // 2,
                             findings=list(FINDINGS), prev_labels=prev, target_labels=target,
                             prev_images=prev_images, target_images=target_images, age=age, sex=sex, race=race,
                             planted=planted)


@pytest.fixture(scope="module")
def evaluator():
    def as_reference_findings(image_set):  # [square, bar] drawn -> the reference's names and order
        return dataclasses.replace(image_set, labels=image_set.labels[:, ::-1].copy(), findings=list(FINDINGS))

    return train_evaluator(as_reference_findings(draw_image_set(96, 0)), as_reference_findings(draw_image_set(48, 1)),
                           TINY, progress=False)


@pytest.fixture(scope="module")
def reference() -> ForecastReference:
    return make_reference()


def test_true_targets_as_predictions_equal_the_gt_row(tmp_path, reference, evaluator):
    predictions = [{"images": reference.target_images, "seed": s} for s in (0, 1)]
    result = evaluate_forecasts(reference, predictions, evaluator, tmp_path, model_name="oracle", grid_pairs=3)
    for key in ("auroc_all", "auroc_same", "auroc_diff", "imagenome/auroc_all", "chexpert/auroc_macro_diff",
                "imagenome/auroc/square/diff", "chexpert/auroc/bar/same", "sex_auroc", "age_pearson", "race_auroc"):
        assert result[f"test/{key}"] == pytest.approx(result[f"test/gt/{key}"], nan_ok=True), key
        assert result[f"test/{key}_std"] == pytest.approx(0.0, abs=1e-9), key
    assert result["test/auroc_all"] == result["test/imagenome/auroc_all"]
    assert result["test/gt/auroc_all"] > 0.8  # the evaluator reads the drawn findings
    assert result["test/fid"] == pytest.approx(0.0, abs=1e-3)
    assert "test/gt/fid" not in result and "test/ceiling/auroc_all" in result and "test/ceiling/fid" not in result

    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"]["test/auroc_all"] == pytest.approx(result["test/auroc_all"])
    assert saved["headline_set"] == "imagenome" and saved["seeds"] == [0, 1]
    assert (tmp_path / "forecast_grid.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    for text in ("Table 2 shape — imagenome", "Table 6 shape — chexpert", "Tables 7 / 8", "Table 3 shape",
                 "validation AUROC", "project's own evaluator", "oracle", "± 0.000", "forecast_grid.png"):
        assert text in report, text


def test_previous_labels_as_predictions_score_same_one_and_diff_zero(tmp_path, reference, evaluator):
    """Seed 004 Table 2's Previous-label row (a missing previous label predicted as 0)."""
    result = evaluate_forecasts(reference, [{"label_probs": np.nan_to_num(reference.prev_labels)}], evaluator,
                                tmp_path)
    for label_set in ("imagenome", "chexpert"):
        assert result[f"test/{label_set}/auroc_same"] == 1.0
        assert result[f"test/{label_set}/auroc_diff"] == 0.0
    assert result["test/auroc_same"] == 1.0 and result["test/auroc_diff"] == 0.0
    assert result["test/auroc_all"] == result["test/imagenome/auroc_all"] != result["test/chexpert/auroc_all"]
    assert not any(key.endswith("_std") for key in result)
    assert "test/fid" not in result and "test/age_pearson" not in result and "test/gt/age_pearson" in result
    assert (tmp_path / "finding_auroc.png").stat().st_size > 0
    assert "finding_auroc.png" in (tmp_path / "report.md").read_text()


def test_label_predictions_need_no_evaluator(tmp_path, reference):
    result = evaluate_forecasts(reference, [{"label_probs": reference.planted}], None, tmp_path)
    assert result["test/auroc_all"] == pytest.approx(result["test/ceiling/auroc_all"])
    assert not any(key.startswith("test/gt/") for key in result)


def test_missing_ages_and_races_switch_their_metrics_off_with_a_line(tmp_path, reference, evaluator):
    blank = dataclasses.replace(reference, age=np.full(len(reference.age), np.nan, np.float32),
                                race=np.full(len(reference.race), "OTHER"), planted=None)
    result = evaluate_forecasts(blank, [{"images": blank.prev_images}], evaluator, tmp_path)
    assert math.isnan(result["test/age_pearson"]) and math.isnan(result["test/gt/age_pearson"])
    assert math.isnan(result["test/race_auroc"]) and not math.isnan(result["test/sex_auroc"])
    assert result["test/fid"] > 0 and not any(key.startswith("test/ceiling/") for key in result)
    report = (tmp_path / "report.md").read_text()
    assert "age: 0 pairs with a known age" in report and "test/age_pearson is NaN" in report
    assert "race: no pair with an Asian, Black or White target" in report


def test_a_finding_with_one_class_in_a_subset_is_noted(tmp_path, reference, evaluator):
    one_class = dataclasses.replace(reference, target_labels=reference.target_labels.copy())
    one_class.target_labels[:, 0] = np.where(np.isnan(one_class.target_labels[:, 0]), np.nan, 1.0)
    result = evaluate_forecasts(one_class, [{"label_probs": reference.planted}], evaluator, tmp_path)
    assert math.isnan(result["test/chexpert/auroc/bar/all"]) and math.isnan(result["test/chexpert/auroc_all"])
    assert not math.isnan(result["test/imagenome/auroc_all"])
    assert "chexpert:bar (all)" in (tmp_path / "report.md").read_text()


def test_settings_read_the_config_node_and_refuse_unknown_keys():
    settings = EvaluationSettings.from_config({"grid_pairs": 4, "evaluator": {"epochs": 3}})
    assert settings.evaluator.epochs == 3 and settings.forecast_options()["grid_pairs"] == 4
    assert EvaluationSettings.from_config(None).evaluator.architecture == "densenet"
    with pytest.raises(UserInputError, match="cxr_evaluation"):
        EvaluationSettings.from_config({"grid": 4})


@pytest.mark.parametrize(("node", "sentence"), [
    ({}, None),
    ({"swap_events": True}, "each test pair was forecast with another patient's events"),
    ({"drop_events": 0.2}, "20% of each pair's events were dropped"),
    ({"swap_events": True, "drop_events": 0.5}, ("another patient's events instead of its own "
                                                 "(`cxr_evaluation.swap_events`); 50% of those events were")),
])
def test_the_report_says_how_the_test_events_were_changed(tmp_path, reference, node, sentence):
    settings = EvaluationSettings.from_config(node)
    evaluate_forecasts(reference, [{"label_probs": reference.planted}], None, tmp_path, **settings.forecast_options())
    report = (tmp_path / "report.md").read_text()
    assert ("Events changed at test time" in report) is (sentence is not None)
    assert sentence is None or sentence in report


def test_swap_events_must_be_a_boolean():
    with pytest.raises(UserInputError, match="swap_events='yes'"):
        EvaluationSettings.from_config({"swap_events": "yes"})


def test_predictions_of_the_wrong_length_are_refused(tmp_path, reference, evaluator):
    with pytest.raises(ValueError, match="one per reference pair"):
        evaluate_forecasts(reference, [{"images": reference.target_images[:-1]}], evaluator, tmp_path)
