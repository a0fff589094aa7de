"""The risk-prediction family: a backbone contract and the LightningModule every risk model shares.

A risk model answers "will this patient develop the condition?" from the visits before the
prediction window (seed 000, §3). Its work is split in two:

- a :class:`RiskBackbone` (plain ``nn.Module``) turns a batch into visit embeddings
  ``e_k``, hidden states ``h_k`` and two-class logits. Exposing the first two separately is
  what lets the diffusion augmentation of seed 000 wrap *any* backbone (Appendix 6.4):
  it reads ``e_k`` and ``h_{k−1}``, synthesises ``e'_k`` and runs them back through the same
  backbone.
- :class:`RiskPredictor` (the Lightning wrapper) owns the loss (cross-entropy, Eq. 3.16),
  the optimiser and scheduler built from ``_partial_`` config nodes, and the metrics:
  ``val/*`` every validation epoch and, through :meth:`RiskPredictor.metrics`, the runner's
  ``test/*``, in percent (losses stay raw). Model selection is on validation F1 (§4.1), so ``monitor = "val/f1"``.

A new baseline is a new backbone plus a yaml file; ``MedDiffusion`` subclasses this module
and only adds its loss terms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.metrics import METRIC_NAMES, binary_classification_metrics
from ehrlab.models.base import EHRModule

Batch = dict[str, Tensor]


def last_visit(values: Tensor, visit_mask: Tensor) -> Tensor:
    """The entry of each patient's last real visit: ``values[b, n_visits[b] − 1]``.

    Visits are left-aligned (real visits first, padding after), so the last real visit is at
    index ``n_visits − 1``.
    """
    last_index = visit_mask.long().sum(dim=1).clamp(min=1) - 1
    return values[torch.arange(values.shape[0], device=values.device), last_index]


class RiskBackbone(nn.Module):
    """What a risk backbone exposes: visit embeddings, hidden states, a patient representation.

    Subclasses implement :meth:`embed_visits` and :meth:`encode`; the output layer
    ``ŷ = Softmax(W_y r + b_y)`` (Eq. 3.13) is shared here and applied to the patient
    representation ``r`` of :meth:`patient_representation`, by default ``h_K``, the hidden
    state of the last real visit. Backbones that pool their visits otherwise (attention,
    dense interpolation) override it, and pass ``representation_dim`` if ``r`` is not
    ``hidden_dim`` wide.

    Every step after :meth:`embed_visits` receives the batch too: ``batch["visit_mask"]``
    (bool [B, V]), and for time-aware backbones ``batch["time_delta"]`` (days since the
    previous visit) and ``batch["time_to_end"]`` (days to the last input visit), both
    float [B, V] and 0 at padding. A wrapper that synthesises visit embeddings (the
    diffusion augmentation) encodes them with the real batch, so synthetic visits keep the
    real visits' dates.

    Contract, checked for every backbone by tests/models/test_risk_backbones.py:

    - padding visits (``visit_mask`` False, always after the real ones) and padding codes
      (id 0) do not change the outputs for real visits;
    - :attr:`causal` backbones compute ``h_k`` from visits ``1..k`` only; the augmentation
      reads ``h_{k−1}`` as the history of visit ``k``, which for a non-causal backbone
      (bidirectional or reverse-time recurrences, attention over all visits) also carries
      later visits — its docstring says what plays ``h_k``;
    - :attr:`time_aware` backbones change their output when only the visit times change.
    """

    causal: bool = True
    time_aware: bool = False

    def __init__(self, visit_dim: int, hidden_dim: int, n_classes: int = 2, representation_dim: int | None = None):
        super().__init__()
        self.visit_dim = visit_dim
        self.hidden_dim = hidden_dim
        self.output = nn.Linear(representation_dim or hidden_dim, n_classes)  # W_y, b_y of Eq. 3.13

    def embed_visits(self, batch: Batch) -> Tensor:
        """Visit embeddings ``e_k`` [B, V, visit_dim]."""
        raise NotImplementedError

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        """Hidden states ``h_k`` [B, V, hidden_dim] from visit embeddings (real or synthetic)."""
        raise NotImplementedError

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """[B, representation_dim]: by default ``h_K``, the hidden state of the last real visit."""
        return last_visit(hidden_states, batch["visit_mask"])

    def classify(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """Two-class logits [B, 2] (the softmax of Eq. 3.13 lives in the loss)."""
        return self.output(self.patient_representation(hidden_states, batch))

    def auxiliary_losses(self, batch: Batch) -> dict[str, Tensor]:
        """The backbone's own loss terms for the forward pass over the real sequence just run
        (MedSkim's skip-rate regulariser); the predictor adds each to the loss and logs it."""
        return {}

    @property
    def code_embeddings(self) -> Tensor | None:
        """The code embedding table ``W_v`` [vocab_size, visit_dim]: the weight of the
        backbone's ``code_embedding`` module if it has one (every backbone here does)."""
        table = getattr(self, "code_embedding", None)
        return table.weight if table is not None else None

    def forward(self, batch: Batch) -> Tensor:
        return self.classify(self.encode(self.embed_visits(batch), batch), batch)


class RiskPredictor(EHRModule):
    """Lightning wrapper of a :class:`RiskBackbone`: CE loss, metrics, optimiser, selection.

    Args:
        vocabulary: code strings by id, ``vocabulary[0] == "[PAD]"``.
        backbone: ``backbone(vocab_size=...)`` builds the backbone (a ``_partial_`` node).
        optimizer: ``optimizer(params=...)`` (a ``_partial_`` node, e.g. Adam).
        scheduler: ``scheduler(optimizer=...)`` or None; it is stepped on :attr:`monitor`
            each epoch (ReduceLROnPlateau in seed 000 §4.1).
        early_stopping_patience: epochs without ``val/f1`` gain before the runner stops
            training (10 in the MedDiffusion authors' code); None disables it.

    Gradient clipping is the trainer's (``trainer.gradient_clip_val``, by norm), which the
    model's config sets to its paper's value (1.0 in the MedDiffusion authors' code).
    """

    family = "risk"
    monitor = "val/f1"
    monitor_mode = "max"

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
    ):
        super().__init__(vocabulary)
        self.save_hyperparameters(ignore=["vocabulary"])
        self.backbone = backbone(vocab_size=self.vocab_size)
        self.early_stopping_patience = early_stopping_patience
        # Per-epoch buffers of (probability of class 1, label) for the epoch-level metrics:
        # PR-AUC and kappa are not averages of per-batch values.
        self._epoch_outputs: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}

    def forward(self, batch: Batch) -> Tensor:
        """Two-class logits [B, 2] from the real visits only (what is evaluated, §6.4)."""
        return self.backbone(batch)

    @staticmethod
    def metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        """The family's metrics of a split from its labels and class-1 probabilities: PR-AUC,
        average precision, F1, kappa and ROC-AUC in percent, and the cross-entropy ``loss``
        (raw). Validation epochs and the runner's test metrics both come from here."""
        values = binary_classification_metrics(labels, probabilities)
        metrics = {name: 100.0 * values[name] for name in METRIC_NAMES}
        likelihood = np.where(labels == 1, probabilities, 1.0 - probabilities).astype(np.float64)
        metrics["loss"] = float(-np.log(np.clip(likelihood, 1e-12, 1.0)).mean()) if len(labels) else float("nan")
        return metrics

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss": ..., <named components>}``: the CE of Eq. 3.16 (batch mean), plus the
        backbone's own terms if it has any."""
        ce = F.cross_entropy(self(batch), batch["label"])
        auxiliary = self.backbone.auxiliary_losses(batch)
        if not auxiliary:
            return {"loss": ce}
        return {"ce": ce, **auxiliary, "loss": ce + sum(auxiliary.values())}

    # --- Lightning hooks -------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses = self.training_loss(batch)
        batch_size = batch["label"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, prog_bar=name == "loss", batch_size=batch_size)
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        self._epoch_outputs["val"].clear()

    def on_test_epoch_start(self) -> None:
        self._epoch_outputs["test"].clear()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        if self.trainer is not None and not self.trainer.sanity_checking:
            self._validated_this_epoch = True

    # --- manual optimisation (the GAN members and augmentation baselines: several optimisers) --

    def manual_step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        """One step of ``optimizer`` on ``loss``: backward, clipping by norm at the model's
        ``gradient_clip_val`` (Lightning refuses the trainer's under manual optimisation), step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = getattr(self, "gradient_clip_val", None)
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        """Under manual optimisation Lightning steps no scheduler: step them here on this epoch's
        validation monitor (``val/f1``), as the automatic loop would; an epoch without a
        validation leaves them alone (``callback_metrics`` would still hold an older one)."""
        if self.automatic_optimization or not getattr(self, "_validated_this_epoch", False):
            return
        self._validated_this_epoch = False
        schedulers = self.lr_schedulers()
        value = self.trainer.callback_metrics.get(self.monitor)
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            elif value is not None:
                scheduler.step(value)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Per-patient ``subject_id``, ``probability`` (of class 1) and ``label`` (if known)."""
        prediction = {"subject_id": batch["subject_id"], "probability": self(batch).softmax(dim=-1)[:, 1]}
        if "label" in batch:
            prediction["label"] = batch["label"]
        return prediction

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }

    # --- helpers ---------------------------------------------------------------------------

    def _evaluation_step(self, split: str, batch: Batch) -> None:
        logits = self(batch)
        labels = batch["label"]
        self.log(f"{split}/loss", F.cross_entropy(logits, labels), on_epoch=True, batch_size=labels.shape[0],
                 sync_dist=True)
        self._epoch_outputs[split].append((logits.softmax(dim=-1)[:, 1].detach(), labels.detach()))

    def _log_epoch_metrics(self, split: str) -> None:
        outputs = self._epoch_outputs[split]
        if not outputs:
            return
        probabilities = torch.cat([p for p, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        if self.trainer is not None and self.trainer.world_size > 1:
            # Epoch metrics need every rank's predictions (DDP pads with duplicates, which
            # changes the numbers negligibly and is the usual trade-off).
            probabilities = self.all_gather(probabilities).reshape(-1)
            labels = self.all_gather(labels).reshape(-1)
        metrics = self.metrics(labels.cpu().numpy(), probabilities.float().cpu().numpy())
        for name in METRIC_NAMES:
            # Computed from every rank's gathered predictions: identical on all ranks.
            self.log(f"{split}/{name}", metrics[name], prog_bar=name == "f1", sync_dist=True)
        outputs.clear()

