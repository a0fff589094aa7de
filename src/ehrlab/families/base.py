"""What every model family tells the runner."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ehrlab.data.tasks.base import TaskData
from ehrlab.errors import UserInputError


class Family:
    """One family of models: the task kind it learns from, the stages that apply to it and
    its steps after training. Subclasses set the class attributes and `after_training`."""

    #: the key models use in their ``family`` attribute
    name: str
    #: the `TaskData.kind` its models learn from
    task_kind: str
    #: how messages call a member ("a risk predictor")
    member: str
    #: what a user should choose instead when the task does not fit
    task_hint: str
    #: the stages past prepare that apply to it
    stages: tuple[str, ...]

    def check(self, cfg: DictConfig, model_class: type, task_data: TaskData) -> None:
        """Refuse a task of another kind or a stage that does not apply, naming the fix."""
        model_name = model_class.__name__
        if task_data.kind != self.task_kind:
            raise UserInputError(f"{model_name} is {self.member}: use {self.task_hint} (got a {task_data.kind} task).")
        if cfg.stage != "prepare" and cfg.stage not in self.stages:
            raise UserInputError(f"stage={cfg.stage} does not apply to {self.member} ({model_name}); "
                                 f"use stage={' / '.join(self.stages)}.")
        check_options = getattr(model_class, "check_options", None)
        if check_options is not None:  # a model's own checks, before its parts are pretrained
            check_options(cfg.model)

    def check_model(self, cfg: DictConfig, model) -> None:
        """Refuse settings the built model cannot honour, before any training, so that a run
        does not train for hours and then fail on them. Nothing to check by default."""

    def runs_untrained(self, cfg: DictConfig) -> bool:
        """Whether the configured stage needs no trained weights (no training, no ckpt_path)."""
        return False

    def after_training(self, cfg: DictConfig, model, datamodule, task_data: TaskData,
                       run_dir: Path) -> tuple[dict[str, float], list[Path]]:
        """Everything after training (or loading) the model, on the first process only:
        returns the metrics for metrics.json and the plots for the logger."""
        raise NotImplementedError
