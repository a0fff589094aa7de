"""The chest X-ray forecasting family (seed 004): after training, forecast the test split's
target images (or their labels) once per sampling seed, write the forecasts, and judge them
with seed 004's evaluation (clinical, demographic and image-quality consistency).

Forecasts go to the run directory as

    forecasts/seed_<s>.npz        pair_id and either images (uint8 [N, S, S]) or label_probs
                                  (float32 [N, F], columns = findings.json)
    forecasts/seed_<s>/<pair>.png every predicted image (stage generate / all)
    evaluation/                   report.md, evaluation.json, the previous | target | forecast grid

A deterministic model has one "seed" (None, written as seed_0); a generative one forecasts
once per seed in its `sampling_seeds` and the evaluation reports mean ± std over them
(seed 004 §4.5: three seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from ehrlab.data.cxr.datamodule import drop_events as drop_events_at_random, swapped_event_rows
from ehrlab.families.base import Family
from ehrlab.models.cxr.base import ENCODER


class ImageForecastFamily(Family):
    name = "cxr_forecast"
    task_kind = "cxr_forecast"
    member = "a chest X-ray forecaster"
    task_hint = "task=cxr_forecast with a chest X-ray source (data=synthetic_cxr, mimic_cxr or cxr_folder)"
    stages = ("train", "generate", "evaluate", "all")

    def check(self, cfg: DictConfig, model_class: type, task_data) -> None:
        """Also the evaluation's options, which are read only after training: a bad value or a
        test split that cannot swap events must fail before hours of training, not after."""
        super().check(cfg, model_class, task_data)
        if cfg.stage in ("generate", "evaluate", "all"):  # the stages that forecast
            settings = evaluation_settings(cfg)
            if settings.swap_events:
                swapped_event_rows(task_data.pairs["subject_id"].to_numpy(np.int64), task_data.pair_rows("test"),
                                   cfg.seed)

    def after_training(self, cfg: DictConfig, model, datamodule, task_data,
                       run_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """Forecast (stage generate / evaluate / all) then evaluate (evaluate / all)."""
        if cfg.stage == "train":
            return {}, []
        if model.output == ENCODER:  # a part of another model: its own test measures, nothing to forecast
            return (model.test_metrics(datamodule.test_dataloader()) if cfg.stage != "generate" else {}), []
        settings = evaluation_settings(cfg)
        forecasts = forecast_test_split(model, datamodule, drop_events=settings.drop_events,
                                        swap_events=settings.swap_events, event_seed=cfg.seed)
        write_forecasts(forecasts, task_data.findings, run_dir / "forecasts",
                        png=cfg.stage in ("generate", "all") and cfg.generate.write_images)
        if cfg.stage == "generate":
            return {}, []
        metrics, plots = evaluate(cfg, settings, forecasts, task_data, run_dir)
        # So that the runs of the event studies tell themselves apart in a sweep's table:
        if settings.drop_events:
            metrics["test/drop_events"] = settings.drop_events
        if settings.swap_events:
            metrics["test/swap_events"] = 1.0
        return metrics, plots


def evaluation_settings(cfg: DictConfig):
    from ehrlab.evaluation.cxr import EvaluationSettings

    return EvaluationSettings.from_config(cfg.cxr_evaluation)


def forecast_test_split(model, datamodule, drop_events: float = 0.0, swap_events: bool = False,
                        event_seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One dict per sampling seed, rows in the test split's pair order: `seed`, `pair_id`
    and `images` (uint8 [N, S, S]) or `label_probs` (float32 [N, F]).

    `swap_events` gives each pair another patient's events (the datamodule's
    `predict_dataloader(swap_events_seed=...)`); `drop_events` > 0 then drops that fraction of
    each pair's events (Appendix D.7). Both are drawn from `event_seed` (and the pair), the
    same for every sampling seed, so that the seeds differ in their sampling noise only."""
    output = "images" if model.output == "image" else "label_probs"
    forecasts = []
    for seed in model.sampling_seeds:
        pair_ids, values = [], []
        batches = (datamodule.predict_dataloader(swap_events_seed=event_seed) if swap_events
                   else datamodule.predict_dataloader())
        for batch in tqdm(batches, desc=f"forecasting the test split (seed {seed})", leave=False):
            forecast = model.forecast(drop_events_at_random(batch, drop_events, event_seed), seed=seed)
            pair_ids.append(batch["pair_id"].numpy())
            if output == "images":
                values.append(to_uint8(forecast["image"][:, 0]))
            else:
                values.append(forecast["label_probs"].float().cpu().numpy())
        forecasts.append({"seed": 0 if seed is None else int(seed), "pair_id": np.concatenate(pair_ids),
                          output: np.concatenate(values)})
    return forecasts


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] floats as the 8-bit grey levels the cached targets are stored in."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_forecasts(forecasts: list[dict], findings: list[str], folder: Path, png: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "findings.json").write_text(json.dumps(findings))
    for forecast in forecasts:
        arrays = {key: value for key, value in forecast.items() if key != "seed"}
        np.savez_compressed(folder / f"seed_{forecast['seed']}.npz", **arrays)
        if png and "images" in forecast:
            images_dir = folder / f"seed_{forecast['seed']}"
            images_dir.mkdir(exist_ok=True)
            for pair_id, image in zip(forecast["pair_id"], forecast["images"], strict=True):
                Image.fromarray(image).save(images_dir / f"{pair_id}.png")


def evaluate(cfg: DictConfig, settings, forecasts: list[dict], task_data,
             run_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """Seed 004's evaluation of the forecasts against the test split's true targets, with the
    evaluators trained once per prepared data (or the user's weights)."""
    from ehrlab.evaluation.cxr import evaluate_forecasts, load_or_train_evaluator
    from ehrlab.evaluation.cxr.report import BARS_FILE

    reference = task_data.reference("test")
    for forecast in forecasts:
        if not np.array_equal(forecast["pair_id"], reference.pair_id):
            raise RuntimeError("forecasts are not in the test split's pair order")
    evaluator = load_or_train_evaluator(settings.evaluator, data_key=task_data.cache_key,
                                        image_set=task_data.image_set,
                                        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None)
    out_dir = run_dir / "evaluation"
    metrics = evaluate_forecasts(reference, forecasts, evaluator, out_dir,
                                 model_name=cfg.model._target_.rsplit(".", 1)[-1], **settings.forecast_options())
    # The grid shows patients' images: it stays in the run directory; loggers get the
    # aggregate plot only (label models' AUROC per finding).
    return metrics, [path for path in [out_dir / BARS_FILE] if path.exists()]


CXR_FORECAST = ImageForecastFamily()
