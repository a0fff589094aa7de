"""The four baselines of seed 004 §4.4 (Table 2): two "no change" rules and two table classifiers.

- :class:`PreviousImage`: the previous image is the forecast (no temporal change).
- :class:`PreviousLabel`: the previous image's labels are the forecast labels, skipping the
  image classifier's uncertainty; a missing previous label counts as 0 (the authors' code).
- :class:`TableClassifier`: the table encoder (Appendix B.1) over the events, mean-pooled, a
  linear multi-label head (§4.4, Appendix B.3).
- :class:`TableClassifierPrevLabel`: the same with the previous labels as a learned first
  token (Appendix B.3).

The rules are not trained (``trainable = False``); the classifiers forecast label
probabilities, not images, so the evaluation scores them on labels directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.metrics import finding_aurocs, unweighted_macro
from ehrlab.models.cxr.base import IMAGE, LABELS, Batch, ImageForecaster
from ehrlab.models.cxr.parts import load_part
from ehrlab.models.cxr.table_encoder import TABLE_ENCODER_KEY, TableEncoder, masked_mean


class PreviousImage(ImageForecaster):
    """Seed 004 §4.4 "Previous image": the forecast is the previous image itself, the "no change"
    scenario; an upper bound on the Same pairs and a lower bound on the Diff pairs (Table 2)."""

    output = IMAGE
    trainable = False

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int):
        super().__init__(findings, event_dim, image_size, max_events)
        self.save_hyperparameters()

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        return {"image": batch["prev_image"]}


class PreviousLabel(ImageForecaster):
    """Seed 004 §4.4 "Previous label": the previous image's ground-truth labels are the
    forecast, AUROC 1 on Same and 0 on Diff by construction (Table 2).

    A previous label that is not known (NaN) counts as 0, as the authors' code fills it.
    """

    output = LABELS
    trainable = False

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int):
        super().__init__(findings, event_dim, image_size, max_events)
        self.save_hyperparameters()

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        return {"label_probs": torch.nan_to_num(batch["prev_labels"].float(), nan=0.0)}


def masked_binary_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE over the (pair, finding) entries whose target is known; NaN targets (not
    evaluable under the task's label policy) are left out. 0 if no entry is known."""
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets, nan=0.0), reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


def macro_auroc(probabilities: Tensor, targets: Tensor) -> float:
    """Unweighted mean over findings of the AUROC on the rows whose target is known; findings
    without both classes among those rows are left out (NaN if none is left). The evaluation's
    own per-finding AUROC (`ehrlab.metrics.finding_aurocs`), on tensors."""
    targets = targets.float().cpu().numpy()
    aurocs, _ = finding_aurocs(targets, probabilities.float().cpu().numpy(), ~np.isnan(targets))
    return unweighted_macro(aurocs)


def load_table_encoder(encoder: TableEncoder, path: str | Path) -> None:
    """Load `encoder` from the CLIP checkpoint at `path` (``model.clip_checkpoint``): the
    weights under ``table_encoder.`` (`ehrlab.models.cxr.parts.load_part`). Its projection to
    the CLIP space is skipped when `encoder` has none (the table classifiers' head reads the
    Transformer's states, as the authors' code does).
    """
    load_part(encoder, path, TABLE_ENCODER_KEY, role="model.clip_checkpoint",
              hint=f"This model's table encoder has event_dim={encoder.event_dim} and "
                   f"{len(encoder.transformer.layers)} layers: use the text encoder and model.n_layers / "
                   "model.ffn_multiplier of the CLIP run, or no clip_checkpoint.",
              skip=("projection.",) if encoder.projection is None else ())


class TableClassifier(ImageForecaster):
    """Seed 004 §4.4 "Table classifier": the target image's labels from the events alone.

    The CLIP table encoder (Appendix B.1; :class:`~ehrlab.models.cxr.table_encoder.TableEncoder`)
    over the events, the mean of its states over the real events, a linear multi-label head;
    masked BCE (targets that are NaN are ignored), AdamW 1e-4, weight decay 0.01, β (0.9, 0.999),
    batch 128, up to 100 epochs (Appendix B.3). B.3 initialises the encoder from the CLIP
    pretraining (`clip_checkpoint`); without one it starts from scratch (the ablation of
    Table 10 does the same for EHRXDiff).

    As in the authors' code, the head reads the Transformer's D-wide states (CLIP's 768-d
    projection is not used). The checkpoint is selected on validation loss, the authors' rule
    for EHRXDiff; their table classifier script keeps the best validation macro AUROC instead,
    but that needs both classes of a finding among the validation pairs, which a small split
    may lack, while the loss is always defined. ``val/auroc`` (macro over findings) is logged
    alongside.

    Args:
        findings, event_dim, image_size, max_events: from the datamodule (only the first two are used).
        optimizer: ``optimizer(params=...)`` (a ``_partial_`` node).
        scheduler: ``scheduler(optimizer=...)`` or None (none in B.3), stepped each epoch on ``val/loss``.
        n_layers, n_heads, ffn_multiplier, dropout: the table encoder's (TableEncoder).
        clip_checkpoint: a CLIP pretraining checkpoint to initialise the encoder from (see
            :func:`load_table_encoder`); it is read again whenever the model is built.
        early_stopping_patience: validation epochs without a lower ``val/loss`` before stopping.
    """

    output = LABELS

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 n_layers: int = 2, n_heads: int | None = None, ffn_multiplier: int = 4, dropout: float = 0.1,
                 clip_checkpoint: str | None = None, early_stopping_patience: int | None = 10):
        super().__init__(findings, event_dim, image_size, max_events, early_stopping_patience)
        self.save_hyperparameters()
        self.table_encoder = TableEncoder(event_dim, output_dim=None, n_layers=n_layers, n_heads=n_heads,
                                          ffn_multiplier=ffn_multiplier, dropout=dropout)
        self.head = nn.Linear(event_dim, self.n_findings)
        if clip_checkpoint:
            load_table_encoder(self.table_encoder, Path(clip_checkpoint).expanduser())
        # The epoch's validation (probabilities, targets): AUROC is not a mean of batch values.
        self._validation_outputs: list[tuple[Tensor, Tensor]] = []

    def prefix_tokens(self, batch: Batch) -> Tensor | None:
        """Tokens placed before the events, [B, P, D]; none here."""
        return None

    def forward(self, batch: Batch) -> Tensor:
        """Logits [B, F]."""
        prefix = self.prefix_tokens(batch)
        states = self.table_encoder.hidden_states(batch["events"], batch["event_mask"], prefix)
        mask = self.table_encoder.token_mask(batch["event_mask"], 0 if prefix is None else prefix.shape[1])
        return self.head(masked_mean(states, mask))

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        return {"label_probs": torch.sigmoid(self(batch))}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = masked_binary_cross_entropy(self(batch), batch["target_labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["pair_id"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch)
        targets = batch["target_labels"]
        self.log("val/loss", masked_binary_cross_entropy(logits, targets), on_epoch=True,
                 batch_size=len(batch["pair_id"]), sync_dist=True)
        self._validation_outputs.append((torch.sigmoid(logits).detach(), targets.detach()))

    def on_validation_epoch_start(self) -> None:
        self._validation_outputs.clear()

    def on_validation_epoch_end(self) -> None:
        if not self._validation_outputs:
            return
        probabilities = torch.cat([p for p, _ in self._validation_outputs])
        targets = torch.cat([t for _, t in self._validation_outputs])
        self._validation_outputs.clear()
        if self.trainer is not None and self.trainer.world_size > 1:
            # Every rank's pairs (DDP pads with a few duplicates: a negligible change).
            probabilities = self.all_gather(probabilities).reshape(-1, self.n_findings)
            targets = self.all_gather(targets).reshape(-1, self.n_findings)
        auroc = macro_auroc(probabilities.float().cpu(), targets.float().cpu())
        if not math.isnan(auroc):  # no finding had both classes among the validation pairs
            self.log("val/auroc", auroc, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return self.optimizers_for(self.parameters())


class TableClassifierPrevLabel(TableClassifier):
    """Seed 004 §4.4 "Table classifier (w/ prev label)": the table classifier told the previous
    image's labels (Appendix B.3).

    A learned label embedding ``V ∈ R^{F × D}``: the mean of the rows of the findings whose
    previous label is 1 is prepended to the events as the first token (and, as in the authors'
    code, pooled with them). A previous label that is unknown counts as 0 (as for
    :class:`PreviousLabel`). B.3 is silent on a pair without any positive previous label: it
    gets the zero vector, which is what the authors' code computes. The authors' code divides
    the sum of the selected rows by F rather than by their number; we take the average B.3 names.
    ``V`` starts at N(0, 1/D), about the unit norm of the (normalised) event embeddings.

    Args: as :class:`TableClassifier`.
    """

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 n_layers: int = 2, n_heads: int | None = None, ffn_multiplier: int = 4, dropout: float = 0.1,
                 clip_checkpoint: str | None = None, early_stopping_patience: int | None = 10):
        super().__init__(findings, event_dim, image_size, max_events, optimizer, scheduler, n_layers, n_heads,
                         ffn_multiplier, dropout, clip_checkpoint, early_stopping_patience)
        self.label_embeddings = nn.Parameter(torch.randn(self.n_findings, event_dim) / math.sqrt(event_dim))

    def prefix_tokens(self, batch: Batch) -> Tensor:
        """The previous-label token [B, 1, D]."""
        previous = torch.nan_to_num(batch["prev_labels"].to(self.label_embeddings.dtype), nan=0.0)
        token = previous @ self.label_embeddings / previous.sum(dim=1, keepdim=True).clamp(min=1.0)
        return token.unsqueeze(1)
