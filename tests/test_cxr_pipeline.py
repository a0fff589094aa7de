"""The chest X-ray forecasting family through the runner: the phantom source, the
cxr_forecast task, the four baselines of seed 004 §4.4 and the evaluation, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ehrlab import pipeline
from ehrlab.errors import UserInputError

# A phantom small enough for a unit test: ~40 patients, 32² images, a two-epoch evaluator.
TINY_CXR = ["data=synthetic_cxr", "task=cxr_forecast", "data.source.n_patients=40", "data.source.image_size=32",
            "cxr_evaluation.evaluator.epochs=2", "cxr_evaluation.grid_pairs=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """stage=all of each baseline on the same prepared data (one evaluator, trained once)."""
    from support import compose_config

    done = {}
    for model in ("previous_label", "previous_image", "table_classifier"):
        run_dir = tmp_path_factory.mktemp(model)
        done[model] = run_dir, pipeline.run(compose_config([*TINY_CXR, f"model={model}"], run_dir, cache_dir))
    return done


def test_previous_label_is_perfect_on_same_and_wrong_on_diff(runs):
    """Seed 004 Table 2's Previous-label row: 1.000 on Same, 0.000 on Diff, by construction."""
    _, metrics = runs["previous_label"]
    assert metrics["test/auroc_same"] == pytest.approx(1.0)
    assert metrics["test/auroc_diff"] == pytest.approx(0.0)
    assert 0.0 < metrics["test/auroc_all"] < 1.0
    # the phantom's true posterior is reported beside it, and no image metric for a label model
    assert 0.5 < metrics["test/ceiling/auroc_same"] <= 1.0
    assert "test/fid" not in metrics


def test_previous_image_is_judged_through_the_evaluator(runs):
    run_dir, metrics = runs["previous_image"]
    for key in ("test/auroc_all", "test/auroc_same", "test/auroc_diff", "test/gt/auroc_all", "test/fid",
                "test/sex_auroc", "test/age_pearson"):
        assert key in metrics, key
    assert metrics["test/fid"] > 0  # previous images are not the targets
    forecast = np.load(run_dir / "forecasts" / "seed_0.npz")
    n_test = json.loads((run_dir / "data_stats.json").read_text())["split_pairs"]["test"]
    assert forecast["images"].shape == (n_test, 32, 32) and forecast["images"].dtype == np.uint8
    assert len(list((run_dir / "forecasts" / "seed_0").glob("*.png"))) == n_test
    report = (run_dir / "evaluation" / "report.md").read_text()
    assert "PreviousImage" in report and "FID" in report
    assert (run_dir / "evaluation" / "evaluation.json").is_file()
    assert list((run_dir / "evaluation").glob("*.png"))
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # a rule: nothing was trained


def test_rules_forecast_what_they_copy(runs, cache_dir):
    """Previous image: the forecast is the cached previous image, pixel for pixel."""
    from ehrlab.data.tasks.base import load_task_data

    run_dir, _ = runs["previous_image"]
    (folder,) = (cache_dir / "tasks").glob("cxr_forecast-*")
    reference = load_task_data(folder).reference("test")
    forecast = np.load(run_dir / "forecasts" / "seed_0.npz")
    np.testing.assert_array_equal(forecast["pair_id"], reference.pair_id)
    np.testing.assert_array_equal(forecast["images"], reference.prev_images)


def test_a_trained_table_classifier_reloads_to_the_same_evaluation(runs, make_config, tmp_path):
    run_dir, metrics = runs["table_classifier"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    again = pipeline.run(make_config(*TINY_CXR, "model=table_classifier", "stage=evaluate",
                                     f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"))
    for key in ("test/auroc_all", "test/auroc_same", "test/auroc_diff"):
        assert again[key] == pytest.approx(metrics[key], nan_ok=True)


def test_one_evaluator_serves_every_model_of_the_same_data(runs, cache_dir):
    assert len(list((cache_dir / "cxr_evaluators").iterdir())) == 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=previous_image", "task=heart_failure"], "is a chest X-ray forecaster: use task=cxr_forecast"),
    ([*TINY_CXR, "model=lstm"], "is a risk predictor"),
])
def test_a_model_and_a_task_of_different_families_are_refused(overrides, message, make_config, runs):
    with pytest.raises(UserInputError, match=message):
        pipeline.run(make_config(*overrides))
