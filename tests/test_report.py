"""`python -m ehrlab.report`: mean ± std over seeds, and heatmaps for a 2-D grid, on
hand-made job directories (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from ehrlab.errors import UserInputError
from ehrlab.report import report

GRID = [0.1, 0.5]


def write_job(root, number, overrides, metrics):
    job = root / f"{number}_meddiffusion_synthetic_heart_failure"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def lambda_grid(tmp_path):
    """λ_S × λ_D = 2 × 2, two seeds each; PR-AUC = 100·λ_S + 10·λ_D + seed."""
    number = 0
    for lambda_s in GRID:
        for lambda_d in GRID:
            for seed in (0, 1):
                value = 100 * lambda_s + 10 * lambda_d + seed
                write_job(tmp_path, number,
                          [f"model.lambda_synthetic={lambda_s}", f"model.lambda_diffusion={lambda_d}",
                           f"seed={seed}", "model=meddiffusion"],
                          {"test/pr_auc": value, "test/f1": 50.0, "test/kappa": 20.0 + seed, "data/n_patients": 9})
                number += 1
    return tmp_path


def test_grid_summary_and_heatmaps(lambda_grid):
    text = report(lambda_grid)
    summary = pd.read_csv(lambda_grid / "summary.csv")
    pr_auc = summary.loc[summary["metric"] == "test/pr_auc"].set_index(
        ["model.lambda_synthetic", "model.lambda_diffusion"])
    assert len(pr_auc) == 4 and (pr_auc["n"] == 2).all()
    assert pr_auc.loc[(0.5, 0.1), "mean"] == pytest.approx(50 + 1 + 0.5)
    assert pr_auc.loc[(0.5, 0.1), "std"] == pytest.approx(0.7071, abs=1e-4)  # sample std of {x, x+1}
    assert "data/n_patients" not in set(summary["metric"])  # only result metrics by default
    assert "51.50 ± 0.71" in text and "mean ± std over 2 seed(s)" in text
    for metric in ("test_pr_auc", "test_f1", "test_kappa"):
        assert (lambda_grid / f"heatmap_{metric}.png").stat().st_size > 1000
    assert "![heatmap_test_pr_auc](heatmap_test_pr_auc.png)" in (lambda_grid / "summary.md").read_text()


def test_one_setting_over_seeds_has_no_heatmap(tmp_path):
    for seed in range(3):
        write_job(tmp_path, seed, [f"seed={seed}"], {"test/f1": 60.0 + 3 * seed})
    text = report(tmp_path)
    assert "63.00 ± 3.00" in text
    assert not list(tmp_path.glob("heatmap_*.png"))


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no metrics.json"):
        report(tmp_path)
