"""Flat generators: a patient as one vector over the vocabulary (seed 002 §2.1, Figure 1).

MedGAN and CorGAN do not model visits. A patient's record becomes one row of the matrix
they learn: a binary indicator per code (the code occurs in some visit) or, in MedGAN's
count mode (§2.2), the number of the patient's visits that hold the code. Their output is
the same kind of row, which the long table holds as a single pseudo-visit per patient
(``visit_id`` 0; seed 002 Table 12: 1.00 visits per patient "by construction"); count mode
adds the ``count`` column.

Columns that are never a generated code are zero in both directions: 0 (``[PAD]``) and the
task vocabulary's ``[UNK]``, the stand-in for held-out codes the training split lacks.
"""

from __future__ import annotations

from typing import Any

import torch

from ehrlab.data.schema import UNKNOWN_CODE
from ehrlab.models.generative.base import Generator

MODES = ("binary", "count")


class FlatGenerator(Generator):
    """Base of the generators that see a patient as one row over the vocabulary."""

    flat = True

    def __init__(self, vocabulary: list[str], mode: str = "binary", optimizer: Any = None):
        super().__init__(vocabulary, optimizer=optimizer)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        code_columns = torch.ones(self.vocab_size, dtype=torch.bool)
        code_columns[0] = False
        code_columns[[i for i, code in enumerate(self.vocabulary) if code == UNKNOWN_CODE]] = False
        self.register_buffer("code_columns", code_columns, persistent=False)

    @property
    def emits_counts(self) -> bool:
        return self.mode == "count"

    def patient_matrix(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float [B, vocab_size]: per code, 1 if any real visit holds it (binary mode) or the
        number of real visits that hold it (count mode; a code appears once per visit)."""
        codes = batch["codes"]
        n_visit_slots = codes.shape[1]
        is_real = torch.arange(n_visit_slots, device=codes.device)[None, :] < batch["n_visits"][:, None]
        per_visit = torch.zeros(*codes.shape[:2], self.vocab_size, device=codes.device)
        per_visit.scatter_(2, codes, 1.0)  # repeats within a visit count once
        counts = (per_visit * is_real[..., None]).sum(dim=1)
        counts = counts * self.code_columns
        return counts if self.mode == "count" else counts.clamp(max=1.0)

    def matrix_codes(self, matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``sample_codes``' output for integer rows [n, vocab_size]: one pseudo-visit per patient;
        count mode adds each code's count."""
        matrix = matrix.long() * self.code_columns
        patient, code = matrix.nonzero(as_tuple=True)
        visit = torch.zeros_like(patient)
        if self.mode == "count":
            return patient, visit, code, matrix[patient, code]
        return patient, visit, code


class AutoencoderGAN(FlatGenerator):
    """What MedGAN and CorGAN share: an autoencoder pretrained on the patient rows for
    ``autoencoder_epochs`` epochs, then a GAN whose generator maps noise into the autoencoder's
    latent space, decoded into records (seed 002 §2.2–2.3: "trained in two stages").

    One Lightning fit runs both phases under manual optimisation (no private training loop):
    the phase follows ``current_epoch``, so a resumed run continues in the right one. A
    subclass builds ``self.autoencoder`` (with ``decode``), ``self.generator`` and its
    discriminator or critic, and implements ``reconstruction_loss`` and ``training_step``.
    Validation logs the reconstruction loss; nothing is monitored (``monitor = None``): a GAN's
    losses do not rank checkpoints, so best.ckpt is the latest epoch.
    """

    monitor = None

    def __init__(self, vocabulary: list[str], mode: str, autoencoder_epochs: int, noise_dim: int,
                 optimizer: Any = None):
        super().__init__(vocabulary, mode=mode, optimizer=optimizer)
        if autoencoder_epochs < 0:
            raise ValueError(f"need autoencoder_epochs >= 0, got {autoencoder_epochs}")
        self.automatic_optimization = False
        self.autoencoder_epochs = autoencoder_epochs
        self.noise_dim = noise_dim

    def reconstruction_loss(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pretraining phase's loss (reconstruction); the adversarial phase has no single one."""
        return self.reconstruction_loss(self.patient_matrix(batch))

    def in_pretraining(self) -> bool:
        return self.current_epoch < self.autoencoder_epochs

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.noise_dim, generator=generator, device=self.device)

    def decode_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Generated records [n, V] (probabilities, or non-negative counts) of noise [n, noise_dim]."""
        return self.autoencoder.decode(self.generator(noise))

    def manual_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def autoencoder_step(self, rows: torch.Tensor, optimizer) -> None:
        """One step of the pretraining phase: the reconstruction loss of the batch's rows."""
        loss = self.reconstruction_loss(rows)
        self.manual_step(optimizer, loss)
        self.log("train/autoencoder_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=rows.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("val/reconstruction_loss", loss, prog_bar=True, batch_size=batch["codes"].shape[0], sync_dist=True)
        return loss
