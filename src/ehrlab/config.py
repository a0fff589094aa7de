"""Hydra wiring shared by run.py, the pipeline and the tests: sweeps, run ids, resuming a
run in place, and the checks a composed configuration must pass before any work starts.

Sweep configs live in the top-level `sweeps/` folder (where users look for them) rather
than in `conf/`; they are registered here as the `sweep` config group, in the global
package, so that `python run.py -m sweep=seeds` works.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from ehrlab.errors import UserInputError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"
SWEEPS_DIR = PROJECT_ROOT / "sweeps"
STAGES = ("prepare", "train", "generate", "evaluate", "all")


def model_label(model: str, augment: str | None) -> str:
    """A run's model as directory names and reports show it: ``retain`` or
    ``retain+diffusion`` (``model=retain augment=diffusion``)."""
    return model if augment in (None, "none") else f"{model}+{augment}"


def register_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    """Register what conf/ needs beyond its files: the `sweep` group from sweeps/, the
    `ehrlab_model` resolver of the run-directory names, and the sweeper plugin."""
    # The sweeper that lists failed jobs (conf/config.yaml selects it); importing its
    # module registers its config node.
    import hydra_plugins.ehrlab_sweeper.ehrlab_sweeper  # noqa: F401

    OmegaConf.register_new_resolver("ehrlab_model", model_label, replace=True)

    store = ConfigStore.instance()
    names = []
    for path in sorted(sweeps_dir.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names


def set_run_id() -> str:
    """A per-invocation id in the run directory's name: jobs started in the same second
    (parallel sweeps, several shells) never share a directory. Child processes of a
    multirun inherit the parent's id; their subdirectories differ by job number."""
    return os.environ.setdefault("EHRLAB_RUN_ID", secrets.token_hex(3))


# --- resuming a run in place ----------------------------------------------------------------

def resume_in_place(argv: list[str]) -> list[str]:
    """`python run.py resume=DIR` continues the run in DIR itself: Hydra's run directory
    becomes DIR, and Hydra writes no new `.hydra/` record over the original run's."""
    resume = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("resume=")]
    if not resume or any(arg in ("-m", "--multirun") for arg in argv):
        return argv
    return [*argv, f"hydra.run.dir={resume[-1]}", "hydra.output_subdir=null"]


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The saved configuration of the run in `cfg.resume`, with the command line's key
    overrides (e.g. `trainer.max_epochs=60`) applied; config group choices cannot change."""
    run_dir = Path(cfg.resume)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UserInputError(f"resume={cfg.resume}: no config.yaml there; give the directory of an earlier run "
                             "(outputs/<date>/<time>_<model>_<data>_<task>_<id>).")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise UserInputError(f"resume={cfg.resume}: the run has no checkpoints/last.ckpt (it ended before its "
                             "first epoch did); start it again instead.")
    saved = OmegaConf.load(saved_path)
    if "split_seed" not in saved:  # saved before split_seed existed, when the run's seed drew the split
        saved.split_seed = saved.seed
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} | {"sweep"}
    for override in command_line_overrides():
        key = override.key_or_group
        if key == "resume" or key.startswith("hydra"):
            continue
        if key in groups or override.is_delete() or override.package:
            raise UserInputError(f"resume= continues a run with its saved configuration; only keys may change "
                                 f"(e.g. trainer.max_epochs=60), not {override.input_line}.")
        OmegaConf.update(saved, key, override.value(), merge=True, force_add=override.is_add())
    with open_dict(saved):
        saved.resume = str(run_dir)
        saved.run_dir = str(run_dir)
    return saved


def command_line_overrides() -> list[Any]:
    """The overrides the user typed for this job (parsed), or none outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    return OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))


# --- checks before any work -------------------------------------------------------------------

_ABSENT = object()


def _whole(minimum: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


_CHECKS = [
    # key, test, what the value must be
    ("data.batch_size", _whole(1), "a whole number ≥ 1"),
    ("data.num_workers", _whole(0), "a whole number ≥ 0"),
    ("trainer.max_epochs", lambda v: v is None or v == -1 or _whole(1)(v), "a whole number ≥ 1 (or -1: no limit)"),
    ("generate.n_patients", lambda v: v is None or _whole(1)(v), "a whole number ≥ 1, or null (the training split's size)"),
    ("generate.batch_size", _whole(1), "a whole number ≥ 1"),
    ("evaluate.n_bootstrap", _whole(0), "a whole number ≥ 0"),
    ("evaluate.discriminator_epochs", _whole(1), "a whole number ≥ 1"),
    ("seed", _whole(0), "a whole number ≥ 0"),
    ("split_seed", _whole(0), "a whole number ≥ 0"),
    ("model.early_stopping_patience", lambda v: v is None or _whole(1)(v),
     "a whole number ≥ 1, or null (no early stopping)"),
]


def augments_training(model: str) -> bool:
    """Whether conf/model/<model>.yaml builds more than a plain backbone under RiskPredictor:
    a generator, MedDiffusion and its ablations, an augmentation baseline (its own `_target_`,
    or an `/augment/...` config among its defaults, followed through the model group)."""
    path = CONFIG_DIR / "model" / f"{model}.yaml"
    if not path.is_file():
        return False  # Hydra itself reports an unknown option
    node = OmegaConf.load(path)
    target = OmegaConf.select(node, "model._target_", default=None)
    if target is not None and target != "ehrlab.models.risk.base.RiskPredictor":
        return True
    for entry in node.get("defaults", []):
        if isinstance(entry, str) and entry.startswith("/augment"):
            return True
        # another model of the group (lstm_plain's lstm); recipe/ and _self_ add no model
        if (isinstance(entry, str) and entry != "_self_" and not entry.startswith(("recipe/", "/"))
                and augments_training(entry)):
            return True
    return False


def _check_augment_choice() -> None:
    """`augment=<member>` wraps a plain risk backbone; on a model that is already more than that
    it would silently replace or break the model's own training, so it is refused."""
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    augment, model = choices.get("augment"), choices.get("model")
    if augment not in (None, "none") and model and augments_training(model):
        raise UserInputError(
            f"augment={augment} wraps a plain risk backbone (model=lstm, retain, hitanet, ...); model={model} is "
            "a generator or already augments its training. Choose a backbone, or leave augment=none.")


def check_config(cfg: DictConfig) -> None:
    """Refuse nonsense values before any data is read, naming the key (a job of a sweep
    fails alone and says why)."""
    if cfg.stage not in STAGES:
        raise UserInputError(f"stage={cfg.stage} is not a stage; valid: {', '.join(STAGES)}.")
    for key, test, requirement in _CHECKS:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not test(value):
            raise UserInputError(f"{key}={value}: must be {requirement}.")
    _check_augment_choice()
    if cfg.get("resume") and cfg.stage not in ("train", "all"):
        raise UserInputError(f"resume= continues training; it cannot be combined with stage={cfg.stage}.")
    if cfg.get("ckpt_path") and cfg.stage in ("train", "all"):
        raise UserInputError("ckpt_path= is the model for stage=generate or stage=evaluate; to continue training a "
                             "run, use resume=<its run directory>.")
