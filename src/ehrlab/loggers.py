"""Experiment loggers (W&B by default) and what ehrlab sends to them.

Only aggregates leave the run directory: the resolved config, scalar metrics and plots of
aggregates. Patient-level records, real or synthetic, are never logged; `log_results`
refuses anything that is not a finite scalar or an image file.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger | None:
    """The configured logger writing under the run directory, or None for logger=none."""
    if not cfg.get("logger"):
        return None
    if "wandb" in cfg.logger._target_.lower():
        # Offline unless the user opted in with WANDB_MODE=online (README: `wandb sync`).
        os.environ.setdefault("WANDB_MODE", "offline")
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    logger = instantiate(cfg.logger, save_dir=str(run_dir))
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def log_results(logger: Logger | None, metrics: dict[str, float], plots: list[Path]) -> None:
    """Final scalar metrics and plot images to the logger."""
    if logger is None:
        return
    scalars = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    logger.log_metrics({f"final/{k}": v for k, v in scalars.items()})
    if isinstance(logger, WandbLogger) and plots:
        for plot in plots:
            logger.log_image(key=f"plots/{plot.stem}", images=[str(plot)])
    elif plots and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
        import matplotlib.image

        for plot in plots:
            image = matplotlib.image.imread(plot)
            logger.experiment.add_image(f"plots/{plot.stem}", image, dataformats="HWC" if image.ndim == 3 else "HW")


def finish(logger: Logger | None, succeeded: bool) -> None:
    """Close the logger's run, marked finished or failed (W&B: exit code 0 or 1). Returns
    once the run is fully written, so whatever reads the offline run next sees all of it."""
    if logger is None:
        return
    logger.finalize("success" if succeeded else "failed")
    if isinstance(logger, WandbLogger):
        import wandb

        # The run object itself, not wandb.finish(), which only closes the global run.
        logger.experiment.finish(exit_code=0 if succeeded else 1)
        # finish() can return before W&B's background service has written the run to disk
        # (seen: an offline run file holding only its header); shutting the service down
        # waits for it. The next run starts a new one (about a second).
        wandb.teardown()
