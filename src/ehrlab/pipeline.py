"""The stages of a run: prepare → train → generate → evaluate (`stage=all` runs them all).

`run.py` composes the Hydra config and calls `run(cfg)`. Each stage is a short function;
everything a run produces goes to its run directory:

    status.json          running / completed / failed (with the reason): written first
    config.yaml          resolved config
    data_stats.json      statistics of the prepared data (Table 1 of seed 000 / 12 of seed 002)
    checkpoints/         best.ckpt (on the model's own monitored metric) and last.ckpt
    metrics.json         flat JSON of every final metric (only when the run completed)
    predictions.parquet  risk models: test-split probabilities (and pr_roc_curves.png)
    synthetic.parquet    generators: the synthetic records (and synthetic.csv)
    evaluation/          generators: report.md, evaluation.json and plots of the evaluation
    *.md, *.png          a model's own analyses (MedDiffusion: synthetic_codes.md, a t-SNE)

`resume=<run dir>` continues a run in its own directory from its last.ckpt, with its saved
configuration: the checkpoint restores the weights, optimiser, scheduler, the best-checkpoint
and early-stopping trackers and the random state, so the resumed run ends where the
uninterrupted one would have.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import traceback
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from ehrlab.checkpoints import RandomStateCheckpoint, check_checkpoint_fits, load_model_weights, read_checkpoint
from ehrlab.cli import one_line_reason, user_error_in
from ehrlab.config import check_config, resumed_config
from ehrlab.data.cache import default_cache_dir, load_canonical, remove_stale_staging, staged_folder
from ehrlab.data.tasks.base import load_task_data
from ehrlab.errors import UserInputError
from ehrlab.families import Family, family_of
from ehrlab.loggers import build_logger, finish, log_results
from ehrlab.serialization import write_json

log = logging.getLogger(__name__)
# Lightning 2.6 calls a pytree API that torch 2.13 deprecates, once per step: nothing to act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")

HEADLINE_PREFIXES = ("data/n_", "data/visits_per_patient", "data/codes_per_visit", "data/planted_ceiling/", "test/",
                     "eval/", "synthetic/")
# ...but not their details: confidence bounds, per-finding and unweighted AUROCs of the CXR evaluation
DETAIL_MARKERS = ("_ci_", "/auroc/", "auroc_macro")


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the configured stage(s), or continue the run of `cfg.resume`; returns the metrics
    written to metrics.json. Raises on failure, after recording it in status.json."""
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)  # predictions and synthetic records carry patient ids
    with recorded_status(run_dir, cfg.stage):
        check_config(cfg)
        if is_first_process():
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        metrics = run_stages(cfg, run_dir)
    return metrics


def is_first_process() -> bool:
    """False on the other ranks of a DDP run (set from the launcher's environment)."""
    return rank_zero_only.rank == 0


@contextmanager
def recorded_status(run_dir: Path, stage: str):
    """status.json says running while the body runs, then completed or failed with the
    reason (a crash's traceback too). A run killed outright stays at running, which is how
    `python -m ehrlab.report` tells a killed job from a finished one."""
    if not is_first_process():
        yield
        return
    path = run_dir / "status.json"
    status = {"status": "running", "stage": stage, "started": _now(), "ended": None, "error": None,
              "error_type": None}
    write_json(path, status)
    try:
        yield
    except BaseException as error:
        user_error = user_error_in(error)
        status |= {"status": "failed", "ended": _now(), "error": one_line_reason(error),
                   "error_type": type(user_error or error).__name__}
        if user_error is None:
            status["traceback"] = traceback.format_exc()
        write_json(path, status)
        raise
    write_json(path, status | {"status": "completed", "ended": _now()})


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def run_stages(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    task_data = prepare(cfg, run_dir)
    metrics = {f"data/{k}": v for k, v in flat_numbers(task_data.stats).items()}
    if cfg.stage != "prepare":
        datamodule = task_data.datamodule(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                          pin_memory=cfg.data.pin_memory)
        # The family is checked on the model's class, before building it: a model of another
        # family would not even accept this data's constructor arguments.
        model_class = get_class(cfg.model._target_)
        family = family_of(model_class)
        family.check(cfg, model_class, task_data)
        if cfg.get("pretrain") and cfg.stage in ("train", "all"):
            metrics |= pretrain_parts(cfg, family, task_data, run_dir)
        model = instantiate(cfg.model, **datamodule.model_arguments())
        family.check_model(cfg, model)
        check_splits_not_empty(task_data)
        logger = build_logger(cfg, run_dir)
        try:
            trainer = train_or_load(cfg, model, family, datamodule, logger, run_dir)
            if trainer.is_global_zero:  # under DDP one rank tests, generates and evaluates
                stage_metrics, plots = family.after_training(cfg, model, datamodule, task_data, run_dir)
                metrics |= stage_metrics
                log_results(logger, metrics, plots)
        except BaseException:
            finish(logger, succeeded=False)
            raise
        finish(logger, succeeded=True)
        if not trainer.is_global_zero:
            return metrics
    write_metrics(run_dir, metrics)
    print_summary(run_dir, metrics)
    return metrics


def train_or_load(cfg: DictConfig, model, family: Family, datamodule, logger, run_dir: Path) -> pl.Trainer:
    """Train (stage train/all; from the run's last.ckpt when resuming) and keep the best
    weights, or load the weights of ckpt_path for the later stages."""
    trainer = build_trainer(cfg, model, logger, run_dir)
    if not getattr(model, "trainable", True):
        return trainer  # a rule such as "the previous image is the forecast": nothing to fit or load
    if cfg.stage in ("train", "all"):
        resume_from = None
        if cfg.get("resume"):
            resume_from = run_dir / "checkpoints" / "last.ckpt"
            # Read it once ourselves first: a bad or foreign file gets ehrlab's own message.
            check_checkpoint_fits(model, read_checkpoint(resume_from, role="resume"), resume_from)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        if trainer.checkpoint_callback.best_model_path:
            load_model_weights(model, trainer.checkpoint_callback.best_model_path)
    elif cfg.ckpt_path:
        load_model_weights(model, cfg.ckpt_path)
    elif not family.runs_untrained(cfg):
        raise UserInputError(f"stage={cfg.stage} needs a trained model: add ckpt_path=/path/to/checkpoint.ckpt "
                             "(a run directory's checkpoints/best.ckpt).")
    return trainer


def pretrain_parts(cfg: DictConfig, family: Family, task_data, run_dir: Path) -> dict[str, float]:
    """Train the parts the model is assembled from (``pretrain.<name>``; seed 004's autoencoder
    and CLIP encoders) unless the model already names their checkpoints; returns their test
    metrics as ``pretrain/<name>/…``.

    A part is a model of the same family with its own config block (``model``, ``data.batch_size``,
    ``epochs`` and ``trainer`` overrides: what ``model=cxr_vae`` would run) and fills the model option
    ``<name>_checkpoint`` (``pretrain.<name>.train=false`` leaves the part untrained: the model
    starts it from scratch). It is trained once per prepared data, part config and seed, as a run
    of its own in ``<cache>/pretrained/<name>-<key>/`` (single device, no logger), and later runs
    reuse it. `cfg.model` is updated in place and config.yaml rewritten, so the run records the
    checkpoints it used; the random state is reset to the run's seed afterwards, so the model
    starts the same whether its parts were trained now or read from the cache.
    """
    metrics = {}
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    for name, part in cfg.pretrain.items():
        option = f"{name}_checkpoint"
        if option not in cfg.model:
            raise UserInputError(f"pretrain.{name}: model {cfg.model._target_} has no option {option} to take it.")
        if cfg.model[option]:
            log.info("part %s: using model.%s=%s", name, option, cfg.model[option])
            continue
        if not part.get("train", True):  # e.g. Table 10's EHRXDiff without the CLIP pretraining
            log.info("part %s: not pretrained (pretrain.%s.train=false): the model starts it from scratch", name, name)
            continue
        part_cfg = part_config(cfg, part)
        part_class = get_class(part_cfg.model._target_)
        if family_of(part_class) is not family:
            raise UserInputError(f"pretrain.{name}: {part_class.__name__} is not {family.member}.")
        # `train` only says whether to train the part at all, so it is not part of what is trained
        described = {k: v for k, v in OmegaConf.to_container(part, resolve=True).items() if k != "train"}
        key = digest({"data": task_data.cache_key, "part": described, "seed": cfg.seed})
        folder = cache_dir / "pretrained" / f"{name}-{key}"
        if (folder / "metrics.json").exists():
            log.info("part %s: reusing %s (trained earlier on the same data, part config and seed)", name, folder)
        else:
            log.info("part %s: training %s once for this data (cached in %s)", name, part_class.__name__, folder)
            with staged_folder(folder) as staging:
                write_json(staging / "metrics.json", train_part(part_cfg, family, task_data, staging))
        with open(folder / "metrics.json") as file:
            metrics |= {f"pretrain/{name}/{k}": v for k, v in json.load(file).items() if v is not None}
        cfg.model[option] = str(folder / "checkpoints" / "best.ckpt")
    if is_first_process():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return metrics


def part_config(cfg: DictConfig, part: DictConfig) -> DictConfig:
    """The config of a part's own run: this run's, with the part's model, batch size and trainer
    overrides, on one device (under DDP the other ranks start only after the part is cached)."""
    part_cfg = copy.deepcopy(cfg)
    with open_dict(part_cfg):
        part_cfg.model = part.model
        part_cfg.pretrain = {}
        part_cfg.stage, part_cfg.resume, part_cfg.ckpt_path = "all", None, None
        part_cfg.data = OmegaConf.merge(cfg.data, part.get("data", {}))
        part_cfg.trainer = OmegaConf.merge(cfg.trainer, part.get("trainer", {}), {"devices": 1, "num_nodes": 1})
        if part.get("epochs") is not None:  # the part's own `epochs:` (what it declares run alone)
            part_cfg.trainer.max_epochs = part.epochs
        if "strategy" in part_cfg.trainer:
            part_cfg.trainer.strategy = "auto"
    return part_cfg


def train_part(part_cfg: DictConfig, family: Family, task_data, folder: Path) -> dict[str, float]:
    """Train one part in `folder` (checkpoints/best.ckpt) and return its test metrics."""
    pl.seed_everything(part_cfg.seed, workers=True, verbose=False)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(part_cfg, resolve=True))
    datamodule = task_data.datamodule(batch_size=part_cfg.data.batch_size, num_workers=part_cfg.data.num_workers,
                                      pin_memory=part_cfg.data.pin_memory)
    model = instantiate(part_cfg.model, **datamodule.model_arguments())
    train_or_load(part_cfg, model, family, datamodule, None, folder)
    metrics, _ = family.after_training(part_cfg, model, datamodule, task_data, folder)
    return metrics


def digest(value) -> str:
    """A short stable hash of plain data."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(cfg: DictConfig, run_dir: Path):
    """Canonical tables (cached) → task data of the task's kind (cached) → data_stats.json."""
    source = instantiate(cfg.data.source)
    task = instantiate(cfg.task)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    task_folder = cache_dir / "tasks" / f"{task.name}-{task.cache_key(source.cache_key(), cfg.split_seed)}"
    if (task_folder / "task.json").exists():
        # A hit writes nothing, so sweep up what killed runs left half-written here.
        remove_stale_staging(task_folder.parent)
        log.info("reading prepared %s task from cache %s", task.name, task_folder)
        task_data = load_task_data(task_folder)
    else:
        tables = load_canonical(source, cache_dir)
        task_data = task.build(tables, seed=cfg.split_seed)
        with staged_folder(task_folder) as staging:
            task_data.save(staging)
    # Evaluations that train their own instruments (the chest X-ray evaluators) cache them
    # under the key of the data they were trained on.
    task_data.cache_key = task_folder.name
    write_json(run_dir / "data_stats.json", task_data.stats)
    log.info("prepared %s: %s", task.name, {k: v for k, v in task_data.stats.items() if not isinstance(v, dict)})
    return task_data


def check_splits_not_empty(task_data) -> None:
    for split, size in task_data.split_sizes().items():
        if size == 0:
            raise UserInputError(f"the {split} split is empty ({task_data.stats.get('n_patients')} patients "
                                 "prepared): use more data or change task.split.")


def build_trainer(cfg: DictConfig, model: pl.LightningModule, logger, run_dir: Path) -> pl.Trainer:
    """The configured Trainer with the callbacks the model asks for."""
    if not model.automatic_optimization and cfg.trainer.get("gradient_clip_val"):
        # Lightning refuses trainer clipping under manual optimisation, with a message that
        # does not name the key to use instead.
        raise UserInputError(
            f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val}: {type(model).__name__} optimises manually "
            "and clips its own gradients; set model.gradient_clip_val instead.")
    # An absolute path: Lightning restores the best-checkpoint tracking on resume only when
    # the directory matches the one recorded in the checkpoint.
    checkpoint_dir = (run_dir / "checkpoints").resolve()
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=model.monitor,
                           mode=model.monitor_mode, auto_insert_metric_name=False, enable_version_counter=False)
    # Lightning's save_last only writes when the best checkpoint changes; resuming needs the
    # latest epoch every time, so last.ckpt has its own unmonitored callback.
    # A model without a monitored metric (a GAN: its losses do not rank models) makes best.ckpt
    # the latest epoch too; the two callbacks would then share Lightning's state key, which it
    # refuses, unless they differ in `mode` (unused without a monitor).
    last = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                           mode="max" if model.monitor is None else "min", enable_version_counter=False)
    callbacks = [best, last, RandomStateCheckpoint()]
    patience = getattr(model, "early_stopping_patience", None)
    if patience:
        callbacks.append(EarlyStopping(monitor=model.monitor, mode=model.monitor_mode, patience=patience))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger if logger is not None else False,
                       default_root_dir=str(run_dir))


def flat_numbers(stats: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, keys joined with '/'."""
    flat = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat |= flat_numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def print_summary(run_dir: Path, metrics: dict[str, float]) -> None:
    """The headline metrics on stdout; everything is in metrics.json."""
    headline = {k: v for k, v in metrics.items()
                if k.startswith(HEADLINE_PREFIXES) and not any(part in k for part in DETAIL_MARKERS)}
    width = max(map(len, headline), default=0)
    lines = [f"  {key:<{width}}  {value:10.4f}" for key, value in sorted(headline.items())]
    print("\n".join([f"ehrlab: run directory {run_dir}", *lines, f"  (all metrics: {run_dir / 'metrics.json'})"]))


def write_metrics(run_dir: Path, metrics: dict[str, float]) -> dict[str, float]:
    write_json(run_dir / "metrics.json", metrics, sort_keys=True)  # NaN (undefined metrics) as null
    return metrics
