"""The risk-prediction family (seed 000): after training, test on the whole test split and
run the analyses the model declares."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from ehrlab.data.tasks.base import TaskData
from ehrlab.evaluation.prediction import plot_pr_and_roc_curves
from ehrlab.families.base import Family


class RiskFamily(Family):
    name = "risk"
    task_kind = "risk"
    member = "a risk predictor"
    task_hint = "a risk task such as task=heart_failure"
    stages = ("train", "evaluate", "all")

    def after_training(self, cfg: DictConfig, model, datamodule, task_data: TaskData,
                       run_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """Test metrics from the predictions on the whole test split, those predictions and
        their PR/ROC curves (every stage past prepare), then the analyses the model declares
        (its `analyses`, run by ehrlab.evaluation.risk_analyses; evaluate/all). Analyses may
        plot patient-level points (a t-SNE): they stay in the run directory; only the aggregate
        curves go to the logger."""
        predictions = predict_test_split(model, datamodule)
        predictions.to_parquet(run_dir / "predictions.parquet", index=False)
        metrics = {f"test/{name}": value
                   for name, value in model.metrics(predictions["label"].to_numpy(),
                                                    predictions["probability"].to_numpy()).items()}
        plots = []
        curves = run_dir / "pr_roc_curves.png"
        if plot_pr_and_roc_curves(predictions["label"], predictions["probability"], curves,
                                  title=f"{type(model).__name__}, test split"):
            plots.append(curves)
        if cfg.stage in ("evaluate", "all"):
            from ehrlab.evaluation.risk_analyses import run_risk_analyses

            metrics |= run_risk_analyses(model, datamodule, run_dir)
        return metrics, plots


def predict_test_split(model, datamodule) -> pd.DataFrame:
    """Every test patient's prediction at the loaded (best) weights, in this process: under
    DDP, Lightning's test and predict loops would give each rank a padded shard instead."""
    model.eval()
    with torch.no_grad():
        outputs = [model.predict_step({k: v.to(model.device) for k, v in batch.items()}, index)
                   for index, batch in enumerate(datamodule.test_dataloader())]
    return pd.DataFrame({k: torch.cat([o[k] for o in outputs]).float().cpu().numpy()
                         if k == "probability" else torch.cat([o[k] for o in outputs]).cpu().numpy()
                         for k in outputs[0]})


RISK = RiskFamily()
