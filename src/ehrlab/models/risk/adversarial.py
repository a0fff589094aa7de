"""GAN generators inside MedDiffusion's framework (seed 000, §4.5, Table 4).

``python run.py model=lstm augment=medgan`` is Table 4's "medGAN" row and
``augment=medgan_att`` its "medGAN+Att" row; ``augment=ehrgan|gcgan|actgan[_att]`` likewise.
Any risk backbone works (``model=retain augment=gcgan_att``). The generators and
discriminators are in :mod:`ehrlab.models.risk.gans`; this module trains them end to end with
the risk model, as MedDiffusion trains its diffusion module (Eq. 3.14–3.16), with the
diffusion module replaced by a GAN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor
from ehrlab.models.risk.diffusion import StepwiseAttention
from ehrlab.models.risk.gans import VisitGenerator, masked_mean


@dataclass
class AdversarialPass:
    """One batch's forward pass: what the classifier side and the discriminator both read."""

    visit_embeddings: Tensor  # e_k [B, V, d_e]
    hidden_states: Tensor  # h_k [B, V, d_h]
    generator_inputs: Tensor  # e_k, or ê_k with step-wise attention [B, V, d_e]
    synthetic_visits: Tensor  # e'_k [B, V, d_e], zero at padding visits
    adversarial_mask: Tensor  # bool [B, V]: real visits of the patients that get a synthetic sequence


def _adversarial_loss(logits: Tensor, target: float, mask: Tensor) -> Tensor:
    """Binary cross-entropy of per-visit discriminator logits against ``target`` (1 real, 0
    synthetic), averaged over the visits in ``mask``."""
    losses = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return masked_mean(losses, mask)


class GANAugmentedPredictor(RiskPredictor):
    """A risk backbone trained with a GAN's synthetic visit sequences (seed 000, §4.5, Table 4).

    MedDiffusion's framework with the diffusion module replaced by a GAN generator G and a
    discriminator D (Zhong et al., SDM 2024, §4.5: "we first fit these methods with our LSTM
    hidden state learner and classifier in MedDiffusion. Each GAN generator utilizes visit
    embeddings e_k for synthetic visits [...] we later introduce the Step-wise Attention
    Mechanism to all baselines, labeled as (+Att)"). Per training step:

    1. Real sequence: ``e_k = embed_visits``, ``h_k = encode(e)``, ``CE(y, ŷ)`` (Eq. 3.16).
    2. Generator input ``x_k = e_k``; with ``stepwise_attention`` (+Att) ``x_k = ê_k`` of
       Eq. 3.11, ``ê_k = γ_e e_k + γ_h W_h h_{k−1}`` (``h_0 = 0``), from MedDiffusion's
       :class:`~ehrlab.models.risk.diffusion.StepwiseAttention`. Without it nothing of
       ``h`` reaches the generator (and the attention module does not exist).
    3. ``e'_k = G(x_k, noise)`` (zero at padding visits), re-encoded with the real batch
       (the real visits' dates and mask), ``CE(y, ŷ')`` (Eq. 3.14) on the patients the
       generator serves (all; the positive class only for actGAN).
    4. The classifier side — backbone, output layer, G (its encoder and decoder included)
       and the attention — takes one optimiser step on
       ``L = CE + aux + λ_S CE' + λ_G L_G (+ G's own terms)`` with the non-saturating
       generator loss ``L_G = −log σ(D(e'))``, D frozen.
    5. D takes one step on ``L_D = ½[BCE(D(e), 1) + BCE(D(e'), 0)]`` with e and e' detached.

    Every loss is a mean over the included patients (CE) or real visits (adversarial), one
    synthetic sequence per included patient per step (1:1 with the real ones; actGAN: one per
    positive patient). Evaluation and prediction read the real sequence only (inherited).

    Decisions (the paper says no more than the quote above; the MedDiffusion authors'
    ``ALL_GAN_runner.py`` / ``models/ALL_GAN.py`` did the rest):

    - Where G's parameters go: the authors build G inside the risk model, so their main
      optimiser (Adam, weight decay) steps it on CE + λ_S CE' + L_G, and a second Adam steps
      G again on the same gradients. Here G is in the classifier-side optimiser only (one
      step per batch on the same loss, no double step); D has its own optimiser
      (``discriminator_optimizer``, Adam lr 1e-3 without weight decay, as the authors').
    - L_G reaches the backbone through e (the authors do not detach it either); D's real
      samples are the backbone's e_k, detached. The authors' D compares G's output with
      ``Dec(Enc(x))`` — the GAN's own reconstruction, never trained to reconstruct — which
      with +Att is a decoded ê; real visit embeddings are what "real" means here.
    - Order within a step as the authors': classifier side first, then D on the same e'.
    - λ_S = 0.5 (§4.1 and the authors' ``lambda_CE_gen_loss``), λ_G = 1 (unweighted there).
    - The authors predict with a 3-layer MLP on h_K for these runs; here the backbone's own
      output layer, as in every other seed-000 model of this project.
    - Manual optimisation: Lightning refuses ``trainer.gradient_clip_val`` with it, so the
      augment yamls set it to null and this model clips each optimiser's gradients by norm
      to ``gradient_clip_val`` (1.0, the recipe's value) itself — both optimisers, as the
      trainer's setting would under automatic optimisation (the authors clip the risk
      model's parameters only, D's not). The scheduler (the recipe's
      ReduceLROnPlateau) is built for each optimiser and stepped on ``val/f1`` at the end of
      every training epoch that ran a validation (the authors step all three of theirs on
      validation loss each epoch).

    Args (beyond :class:`RiskPredictor`'s):
        generator: ``generator(visit_dim=...)`` builds a :class:`~ehrlab.models.risk.gans.VisitGenerator`.
        discriminator: ``discriminator(visit_dim=...)`` builds D (per-visit logits).
        discriminator_optimizer: ``(params=...)``; None: the model's ``optimizer``.
        stepwise_attention: feed ê_k (Eq. 3.11) instead of e_k to G (Table 4's +Att).
        attention_dim: d_b of Eq. 3.11 (64).
        lambda_synthetic: λ_S, weight of CE on the synthetic sequence (0 skips it).
        lambda_generator: λ_G, weight of the generator's adversarial loss.
        gradient_clip_val: max gradient norm per optimiser step; None or 0 disables clipping.
    """

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        *,
        generator: Callable[..., VisitGenerator],
        discriminator: Callable[..., nn.Module],
        discriminator_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        stepwise_attention: bool = False,
        attention_dim: int = 64,
        lambda_synthetic: float = 0.5,
        lambda_generator: float = 1.0,
        gradient_clip_val: float | None = 1.0,
    ):
        # The base's save_hyperparameters() also records this subclass's arguments.
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience)
        self.automatic_optimization = False
        visit_dim, hidden_dim = self.backbone.visit_dim, self.backbone.hidden_dim
        self.generator = generator(visit_dim=visit_dim)
        self.discriminator = discriminator(visit_dim=visit_dim)
        self.attention = StepwiseAttention(visit_dim, hidden_dim, attention_dim) if stepwise_attention else None
        self.lambda_synthetic = lambda_synthetic
        self.lambda_generator = lambda_generator
        self.gradient_clip_val = gradient_clip_val

    # --- the generator's side ---------------------------------------------------------------

    def synthesise(self, visit_embeddings: Tensor, hidden_states: Tensor, visit_mask: Tensor, labels: Tensor,
                   rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, e')``: the generator input (e_k, or ê_k with step-wise attention) and the
        synthetic visit embeddings, both [B, V, d_e] and zero at padding visits."""
        keep = visit_mask.unsqueeze(-1).to(visit_embeddings.dtype)
        if self.attention is not None:
            # h_{k−1} for visit k; the first visit has no history (h_0 = 0).
            previous_hidden = torch.cat([torch.zeros_like(hidden_states[:, :1]), hidden_states[:, :-1]], dim=1)
            inputs, _ = self.attention(visit_embeddings, previous_hidden)
        else:
            inputs = visit_embeddings
        inputs = inputs * keep
        return inputs, self.generator(inputs, visit_mask, labels, rng=rng)

    def adversarial_pass(self, batch: Batch, rng: torch.Generator | None = None) -> AdversarialPass:
        visit_mask = batch["visit_mask"]
        visit_embeddings = self.backbone.embed_visits(batch)
        hidden_states = self.backbone.encode(visit_embeddings, batch)
        inputs, synthetic = self.synthesise(visit_embeddings, hidden_states, visit_mask, batch["label"], rng)
        included = self.generator.synthetic_patients(batch["label"])
        return AdversarialPass(visit_embeddings, hidden_states, inputs, synthetic, visit_mask & included[:, None])

    def _classifier_side(self, batch: Batch, rng: torch.Generator | None = None) -> tuple[dict[str, Tensor], AdversarialPass]:
        labels = batch["label"]
        passed = self.adversarial_pass(batch, rng)
        real_ce = F.cross_entropy(self.backbone.classify(passed.hidden_states, batch), labels)  # Eq. 3.16
        auxiliary = self.backbone.auxiliary_losses(batch)  # of the real sequence, before the synthetic one
        own = self.generator.auxiliary_losses(passed.visit_embeddings, batch["visit_mask"])
        generator_loss = _adversarial_loss(self.discriminator(passed.synthetic_visits, passed.adversarial_mask),
                                           1.0, passed.adversarial_mask)

        losses = {"ce": real_ce, **auxiliary, "generator_loss": generator_loss, **own}
        loss = real_ce + sum(auxiliary.values()) + self.lambda_generator * generator_loss
        loss = loss + sum(self.generator.loss_weights.get(name, 1.0) * value for name, value in own.items())
        if self.lambda_synthetic > 0:
            synthetic_hidden = self.backbone.encode(passed.synthetic_visits, batch)
            per_patient = F.cross_entropy(self.backbone.classify(synthetic_hidden, batch), labels, reduction="none")
            synthetic_ce = masked_mean(per_patient, passed.adversarial_mask.any(dim=1))  # Eq. 3.14
            losses["synthetic_ce"] = synthetic_ce
            loss = loss + self.lambda_synthetic * synthetic_ce
        losses["loss"] = loss
        return losses, passed

    def discriminator_loss(self, passed: AdversarialPass) -> Tensor:
        """``L_D = ½[BCE(D(e), 1) + BCE(D(e'), 0)]`` over the included real visits, on detached
        e and e' (D's step does not reach the backbone or G)."""
        mask = passed.adversarial_mask
        real = _adversarial_loss(self.discriminator(passed.visit_embeddings.detach(), mask), 1.0, mask)
        fake = _adversarial_loss(self.discriminator(passed.synthetic_visits.detach(), mask), 0.0, mask)
        return 0.5 * (real + fake)

    def training_loss(self, batch: Batch, rng: torch.Generator | None = None) -> dict[str, Tensor]:
        """Every loss of a step: ``loss`` is the classifier side's (what its optimiser
        minimises; its backward also reaches D through L_G, which :meth:`training_step`
        prevents by freezing D), ``discriminator_loss`` D's."""
        losses, passed = self._classifier_side(batch, rng)
        losses["discriminator_loss"] = self.discriminator_loss(passed)
        return losses

    # --- manual optimisation -----------------------------------------------------------------

    def _discriminator_parameter_ids(self) -> set[int]:
        return {id(p) for p in self.discriminator.parameters()}

    def configure_optimizers(self):
        discriminator_ids = self._discriminator_parameter_ids()
        classifier_side = [p for p in self.parameters() if id(p) not in discriminator_ids]
        optimizer = self.hparams.optimizer(params=classifier_side)
        make_discriminator_optimizer = self.hparams.discriminator_optimizer or self.hparams.optimizer
        discriminator_optimizer = make_discriminator_optimizer(params=self.discriminator.parameters())
        optimizers = [optimizer, discriminator_optimizer]
        if self.hparams.scheduler is None:
            return optimizers
        # Plain schedulers (no Lightning dict): under manual optimisation this model steps them.
        return optimizers, [self.hparams.scheduler(optimizer=o) for o in optimizers]

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizer, discriminator_optimizer = self.optimizers()
        self.toggle_optimizer(optimizer)  # D frozen: L_G's gradient flows through D into e' only
        losses, passed = self._classifier_side(batch)
        self.manual_step(optimizer, losses["loss"])
        self.untoggle_optimizer(optimizer)

        self.toggle_optimizer(discriminator_optimizer)
        losses["discriminator_loss"] = self.discriminator_loss(passed)
        self.manual_step(discriminator_optimizer, losses["discriminator_loss"])
        self.untoggle_optimizer(discriminator_optimizer)

        batch_size = batch["label"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, prog_bar=name == "loss",
                     batch_size=batch_size)
