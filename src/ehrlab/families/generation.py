"""The generator family (seed 002): after training, generate synthetic patients and evaluate
them against the real splits with the architecture-agnostic suite."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ehrlab.data.schema import SYNTHETIC_SUBJECT_ID_START
from ehrlab.data.tasks.base import TaskData
from ehrlab.errors import UserInputError
from ehrlab.families.base import Family


class GeneratorFamily(Family):
    name = "generation"
    task_kind = "generation"
    member = "a generator"
    task_hint = "task=generation"
    stages = ("train", "generate", "evaluate", "all")

    def check_model(self, cfg: DictConfig, model) -> None:
        labels = requested_labels(cfg)
        if labels is not None and cfg.stage in ("train", "all", "generate"):
            model.label_vector(labels)  # raises, naming the model's labels, on a bad request

    def runs_untrained(self, cfg: DictConfig) -> bool:
        # stage=evaluate without ckpt_path evaluates records already written (synthetic_path,
        # or the run's own synthetic.parquet), whatever tool made them.
        return cfg.stage == "evaluate"

    def after_training(self, cfg: DictConfig, model, datamodule, task_data: TaskData,
                       run_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """generate (stage generate/all, or evaluate of a checkpoint) then evaluate (evaluate/all)."""
        metrics, plots = {}, []
        if cfg.stage in ("generate", "all") or (cfg.stage == "evaluate" and cfg.ckpt_path and not cfg.synthetic_path):
            metrics |= generate(cfg, model, task_data, run_dir)
        if cfg.stage in ("evaluate", "all"):
            evaluation, plots = evaluate_synthetic_records(cfg, task_data, run_dir)
            metrics |= evaluation | family_discriminator_score(evaluation, flat=model.flat)
        return metrics, plots


def family_discriminator_score(evaluation: dict[str, float], flat: bool) -> dict[str, float]:
    """Seed 002 Table 1's "Disc. Score" (Appendix E): the Random Forest's score for a flat
    generator (one pseudo-visit per patient: a sequence model has nothing to read), the LSTM's
    for a sequential one, as ``eval/disc_score`` (and its interval). Both discriminators'
    own scores stay in the metrics."""
    name = "random_forest" if flat else "lstm"
    return {key.replace(f"eval/disc_{name}_score", "eval/disc_score"): value for key, value in evaluation.items()
            if key.startswith(f"eval/disc_{name}_score")}


def requested_labels(cfg: DictConfig):
    """generate.labels as plain Python: label names or a vector (label-conditioned generators), or None."""
    labels = cfg.generate.get("labels")
    if labels is not None and not isinstance(labels, str):
        labels = OmegaConf.to_container(labels)
    return labels


def generate(cfg: DictConfig, model, task_data: TaskData, run_dir: Path) -> dict[str, float]:
    """Synthetic patients in the long format. Their ids count up from
    SYNTHETIC_SUBJECT_ID_START, a range no reader lets a real patient into: a synthetic id
    never equals a real one and says nothing about the real ids."""
    from ehrlab.evaluation.synthetic.records import build_records
    from ehrlab.evaluation.synthetic.structure import dataset_statistics

    n = cfg.generate.n_patients or task_data.splits["train"].n_patients
    records = model.generate(n, seed=cfg.generate.seed, batch_size=cfg.generate.batch_size,
                             labels=requested_labels(cfg))
    records["subject_id"] = records["subject_id"].astype("int64") + SYNTHETIC_SUBJECT_ID_START
    records.to_parquet(run_dir / "synthetic.parquet", index=False)
    records.to_csv(run_dir / "synthetic.csv", index=False)
    _, built = build_records({"synthetic": records})
    metrics = {f"synthetic/{k}": v for k, v in dataset_statistics(built["synthetic"]).items()}  # Table 12's row
    record_labels = model.record_labels(records)
    if record_labels is not None:  # share of generated patients carrying each label
        record_labels = record_labels.reindex(pd.unique(records["subject_id"]), fill_value=False)
        metrics |= {f"synthetic/label_prevalence/{name}": float(record_labels[name].mean()) for name in record_labels}
    return metrics


def evaluate_synthetic_records(cfg: DictConfig, task_data: TaskData, run_dir: Path) -> tuple[dict, list[Path]]:
    from ehrlab.evaluation.synthetic import evaluate_synthetic, plot_paths
    from ehrlab.evaluation.synthetic.records import read_long_table

    path = Path(cfg.synthetic_path) if cfg.synthetic_path else run_dir / "synthetic.parquet"
    if not path.exists():
        raise UserInputError(f"no synthetic records at {path}: run stage=generate first, or give "
                             "synthetic_path=/path/to/synthetic.parquet.")
    synthetic = read_long_table(path, "synthetic_path")
    vocabulary = task_data.vocabulary
    out_dir = run_dir / "evaluation"
    metrics = evaluate_synthetic(task_data.splits["train"].to_long_table(vocabulary),
                                 task_data.splits["test"].to_long_table(vocabulary),
                                 synthetic, out_dir, **cfg.evaluate)
    return metrics, plot_paths(out_dir)


GENERATION = GeneratorFamily()
