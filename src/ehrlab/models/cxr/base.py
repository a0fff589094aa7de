"""The chest X-ray forecasting family (seed 004): what every forecaster declares to the runner.

A forecaster sees a pair's previous image, the medical events between the two images and the
previous image's labels (a `CXRDataModule` batch, below) and forecasts the later image — or,
for the label baselines of §4.4, the later image's labels directly. The runner builds it as
``instantiate(cfg.model, **datamodule.model_arguments())``, fits it unless
``trainable`` is False, and calls :meth:`ImageForecaster.forecast` over the test pairs once
per entry of ``sampling_seeds`` (three seeds for a diffusion model, §4.5; ``(None,)`` for a
deterministic one); the evaluation (``ehrlab.evaluation.cxr``) judges the forecasts.

Batch (B pairs, E events, F findings, S pixels): ``prev_image``, ``target_image`` float32
[B, 1, S, S] in [0, 1]; ``events`` float32 [B, E, D] (event text embeddings, left-aligned),
``event_mask`` bool [B, E]; ``prev_labels``, ``target_labels`` float32 [B, F] in
{0, 1, NaN}; ``age`` float32 [B], ``sex`` int64 [B], ``pair_id``, ``subject_id`` int64 [B].
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from ehrlab.checkpoints import FINDINGS_KEY, MODEL_KEY, plain_data, qualified_name
from ehrlab.errors import UserInputError

Batch = dict[str, Tensor]

IMAGE, LABELS = "image", "labels"
#: the output of a part trained for other models (the autoencoder, the CLIP encoders of §3.3):
#: nothing is forecast; the family reports the part's own test metrics (`test_metrics`)
ENCODER = "encoder"


class ImageForecaster(pl.LightningModule):
    """Base of the ``cxr_forecast`` family.

    Args (the four the runner passes from the datamodule; a model ignores what it does not need):
        findings: the label columns (``<set>:<finding>``), in the order of the batch's label columns.
        event_dim: width D of the event embeddings.
        image_size: side S of the (square) images.
        max_events: the most events a pair has (the task's ``max_events``).
        early_stopping_patience: validation epochs without a better :attr:`monitor` before the
            runner stops training; None disables it.

    Subclasses set :attr:`output` and implement :meth:`compute_forecast`.
    """

    family = "cxr_forecast"
    #: what :meth:`forecast` returns: "image" (``{"image": [B, 1, S, S]}``) or "labels" (``{"label_probs": [B, F]}``);
    #: "encoder" for a part that forecasts nothing (see :meth:`test_metrics`)
    output: str = IMAGE
    #: False for rules with nothing to fit: the runner skips training and checkpoints
    trainable: bool = True
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    #: the seeds :meth:`forecast` is run with on the test pairs; (None,) for a deterministic model
    sampling_seeds: tuple[int | None, ...] = (None,)

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int,
                 early_stopping_patience: int | None = None):
        super().__init__()
        if not findings:
            raise UserInputError("the task has no findings to forecast (no label column with both classes in the "
                                 "training split): check the data's label columns.")
        self.findings = list(findings)
        self.event_dim = event_dim
        self.image_size = image_size
        self.max_events = max_events
        self.early_stopping_patience = early_stopping_patience

    @property
    def n_findings(self) -> int:
        return len(self.findings)

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        """The model's forecast for a batch already on its device (see :meth:`forecast`)."""
        raise NotImplementedError

    def optimizers_for(self, parameters) -> Any:
        """``configure_optimizers``'s answer for the config's ``optimizer`` (a partial taking
        ``params``) and ``scheduler`` (None, or a partial taking ``optimizer``, stepped each
        epoch on :attr:`monitor`), the two hyperparameters every trained forecaster has."""
        optimizer = self.hparams.optimizer(params=parameters)
        if self.hparams.scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.hparams.scheduler(optimizer=optimizer), "monitor": self.monitor,
                                 "interval": "epoch"}}

    def test_metrics(self, dataloader) -> dict[str, float]:
        """A part's (``output == "encoder"``) own measures on the test pairs, keys ``test/…``
        (an autoencoder's reconstruction error, the CLIP encoders' retrieval accuracy)."""
        raise NotImplementedError

    def forecast(self, batch: Batch, seed: int | None = None) -> dict[str, Tensor]:
        """``{"image": float32 [B, 1, S, S] in [0, 1]}`` or ``{"label_probs": float32 [B, F]}``.

        Inference: the batch is moved to the model's device and the model runs in eval mode
        without gradients (its previous mode is restored). `seed` fixes a generative model's
        noise; deterministic models ignore it.
        """
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.compute_forecast(batch, seed)
        finally:
            self.train(was_training)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """The forecast with the first sampling seed, and each pair's ``pair_id``."""
        return {**self.forecast(batch, seed=self.sampling_seeds[0]), "pair_id": batch["pair_id"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data only, so that ehrlab reads its own checkpoints with a weights-only load
        # (ehrlab.checkpoints): the hyperparameters hold Hydra's partial optimiser factories.
        checkpoint[MODEL_KEY] = qualified_name(type(self))
        checkpoint[FINDINGS_KEY] = list(self.findings)  # checked by ehrlab.checkpoints.check_checkpoint_fits
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_data(checkpoint["hyper_parameters"])
