"""MaskEHR augmentation baseline of seed 000 (Table 2, "EHR Augmentation"; §6.2, reference [26]).

Ma, Wang, Gao, Xiao, Zhou: "Rare Disease Prediction by Generating Quality-Assured Electronic
Health Records", SIAM International Conference on Data Mining (SDM) 2020, pp. 514–522. The
system has three parts that train together: MaskEHR, a generator of EHR sequences for the
patients *with* the disease (the rare, positive class) that fills in masked parts of real
positive sequences and is trained adversarially; an RL-Selector, a reinforcement-learning
policy that keeps only the generated sequences that help; and the predictor, trained on the
real patients plus the selected synthetic positives. Seed 000 summarises it as "only
generates synthetic data for positive cases using generative adversarial networks and
reinforcement learning techniques" and runs it "under the same settings" (§4.1) as the other
baselines; its predictor here is the LSTM of ``model=lstm`` (``LSTMBackbone``, Eq. 3.1–3.4,
3.13) under seed 000's recipe.

Only the abstract of the SDM paper was available to us, and the MedDiffusion authors' public
code (``zhongyuan1996/ddim_medskim``) contains no MaskEHR (``models/GAN_baselines.py`` and
``GAN_runner.py`` hold ehrGAN, GcGAN, actGAN and medGAN in hidden-state space). The mechanism
below follows the abstract's three components and MaskGAN (Fedus, Goodfellow, Dai, ICLR 2018),
whose name and in-filling GAN trained by policy gradient MaskEHR's title refers to; every
detail that the sources do not fix is our decision and is listed here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor
from ehrlab.models.risk.layers import reverse_real_visits, sum_code_embeddings


def draw_visit_masks(visit_mask: Tensor, mask_rate: float, generator: torch.Generator | None = None) -> Tensor:
    """bool [N, V]: each real visit masked with probability ``mask_rate``, at least one per patient."""
    draws = torch.rand(visit_mask.shape, device=visit_mask.device, generator=generator)
    draws = draws.masked_fill(~visit_mask, 2.0)
    masked = (draws < mask_rate) & visit_mask
    # The real visit with the smallest draw is always masked (real visits draw < 1 < padding's 2).
    masked[torch.arange(len(masked), device=masked.device), draws.argmin(dim=1)] = True
    return masked


class BidirectionalGRU(nn.Module):
    """Per-visit ``[forward state; backward state]`` [N, V, 2·hidden] over the real visits only:
    a forward GRU on the left-aligned visits (padding comes after every real visit) and a
    second GRU on each patient's real visits reversed. Same result as a packed bidirectional
    GRU, but both run on the padded tensor, which is several times faster on CPU."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.forward_rnn = nn.GRU(input_dim, hidden_dim, batch_first=True)
        self.backward_rnn = nn.GRU(input_dim, hidden_dim, batch_first=True)

    def forward(self, inputs: Tensor, visit_mask: Tensor) -> Tensor:
        forward_states, _ = self.forward_rnn(inputs)
        backward_states, _ = self.backward_rnn(reverse_real_visits(inputs, visit_mask))
        return torch.cat([forward_states, reverse_real_visits(backward_states, visit_mask)], dim=-1)


def multi_hot(codes: Tensor, vocab_size: int) -> Tensor:
    """float [M, vocab_size] from code ids [M, C] (id 0 = padding lands in column 0)."""
    return torch.zeros(codes.shape[0], vocab_size, device=codes.device).scatter_(1, codes, 1.0)


class MaskedVisitGenerator(nn.Module):
    """MaskEHR's generator: fills in masked visits of a real positive patient with sampled codes.

    Visits are code sets; the encoder reads the visit sequence with each masked visit replaced
    by a learned ``[MASK]`` embedding (bidirectional GRU over the real visits only), and
    each masked visit is decoded into one Bernoulli per code (ids 1..vocab−1; padding is never
    emitted) from its context state. Visits are filled in parallel given the unmasked context,
    not one after the other as MaskGAN's autoregressive decoder does (decision: one pass, no
    loop over visits). A drawn visit keeps at most ``C`` codes (the batch's code width, the
    DataModule's per-visit cap), the most probable of the drawn ones, and at least one (the most
    probable code when nothing is drawn). Unmasked visits and every visit date stay the real
    patient's.
    """

    def __init__(self, vocab_size: int, hidden_dim: int = 256):
        super().__init__()
        self.vocab_size = vocab_size
        self.code_embedding = nn.EmbeddingBag(vocab_size, hidden_dim, mode="sum", padding_idx=0)
        self.mask_embedding = nn.Parameter(torch.randn(hidden_dim) * 0.1)  # the [MASK] visit
        self.encoder = BidirectionalGRU(hidden_dim, hidden_dim)
        self.decoder = nn.Linear(2 * hidden_dim, vocab_size - 1)  # logits of codes 1..vocab−1
        nn.init.constant_(self.decoder.bias, -math.log(vocab_size))  # ~1 code per visit at start

    def forward(self, codes: Tensor, visit_mask: Tensor, masked: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Filled-in ``codes`` [N, V, C], and per masked visit (row-major order of ``masked``):
        ``log π(visit)`` [M] of the emitted code set and the NLL [M] of the real visit (MLE)."""
        inputs = sum_code_embeddings(self.code_embedding, codes)
        inputs = torch.where(masked.unsqueeze(-1), self.mask_embedding.to(inputs.dtype), inputs)
        context = self.encoder(inputs, visit_mask)
        logits = self.decoder(context[masked]).float()  # [M, vocab − 1]
        real = multi_hot(codes[masked], self.vocab_size)[:, 1:]
        real_nll = F.binary_cross_entropy_with_logits(logits, real, reduction="none").sum(dim=-1)

        probabilities = logits.detach().sigmoid()
        drawn = torch.bernoulli(probabilities, generator=generator)
        n_slots = min(codes.shape[-1], logits.shape[-1])
        scores, order = (probabilities + drawn).topk(n_slots, dim=-1)  # drawn codes first, most probable first
        keep = scores > 1.0
        keep[:, 0] = True  # never an empty visit
        emitted = torch.zeros_like(logits).scatter_(1, order, keep.to(logits.dtype))
        log_prob = -F.binary_cross_entropy_with_logits(logits, emitted, reduction="none").sum(dim=-1)

        visit_codes = F.pad((order + 1) * keep, (0, codes.shape[-1] - n_slots))
        filled = codes.clone()
        filled[masked] = visit_codes.to(codes.dtype)
        return filled, log_prob, real_nll


class MaskedVisitDiscriminator(nn.Module):
    """Judges each masked visit real or generated given the rest of the sequence (MaskGAN's
    per-token discriminator): summed code embeddings plus a learned flag on the visits in
    question, a bidirectional GRU over the real visits, one logit per visit. Real sequences are judged with
    the same masks as their generated copies, so the flag carries no label information."""

    def __init__(self, vocab_size: int, hidden_dim: int = 128):
        super().__init__()
        self.code_embedding = nn.EmbeddingBag(vocab_size, hidden_dim, mode="sum", padding_idx=0)
        self.question_embedding = nn.Parameter(torch.randn(hidden_dim) * 0.1)
        self.encoder = BidirectionalGRU(hidden_dim, hidden_dim)
        self.output = nn.Linear(2 * hidden_dim, 1)

    def forward(self, codes: Tensor, visit_mask: Tensor, masked: Tensor) -> Tensor:
        """Logits [M] of "real" for the masked visits (row-major order of ``masked``)."""
        inputs = sum_code_embeddings(self.code_embedding, codes)
        inputs = inputs + masked.unsqueeze(-1).to(inputs.dtype) * self.question_embedding.to(inputs.dtype)
        states = self.encoder(inputs, visit_mask)
        return self.output(states[masked]).squeeze(-1).float()


class SelectionPolicy(nn.Module):
    """RL-Selector: keep (1) or drop (0) each generated sequence, a Bernoulli policy on its state
    (the predictor's patient representation and P(positive), the discriminator's mean
    P(real) over its generated visits, and the fraction of its visits that were generated)."""

    n_extra_features = 3

    def __init__(self, representation_dim: int, hidden_dim: int = 64):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(representation_dim + self.n_extra_features, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, states: Tensor) -> Tensor:
        """Logits [N] of keeping each sequence."""
        return self.network(states).squeeze(-1).float()


class SyntheticPositives(NamedTuple):
    """One step's generated positives, as :meth:`MaskEHRAugmentation.synthesise` draws them."""

    batch: Batch  # the synthetic patients in the DataModule's format, label 1, real dates
    sources: Tensor  # [N] index in the real batch of the positive each one was generated from
    masked: Tensor  # bool [N, V] the visits the generator filled in
    log_prob: Tensor  # [M] log π of each generated visit (graph to the generator)
    real_nll: Tensor  # [M] NLL of the source's real visit at each masked visit (graph to the generator)


class MaskEHRAugmentation(RiskPredictor):
    """MaskEHR (Ma et al., SDM 2020) around seed 000's LSTM predictor: GAN + RL augmentation of
    the positive (rare) class only; val/test/predict read real patients only (inherited).

    One training step on a real batch (manual optimisation, four optimisers, in this order):

    1. *Generate.* ``N = round(synthetic_ratio · n_pos)`` synthetic patients from the batch's
       ``n_pos`` positives (each positive ⌊ratio⌋ times, the remainder a random subset of them;
       none when the batch has no positive). Each copy gets its own random visit mask (rate
       ``mask_rate``, ≥ 1 visit) and :class:`MaskedVisitGenerator` fills the masked visits.
       Negatives are never a source; every synthetic patient is labelled 1.
    2. *Discriminator* (:class:`MaskedVisitDiscriminator`): BCE on the masked visits, the source
       positive's real visit "real", the generated one "fake" (mean of the two).
    3. *Generator*: codes are discrete, so it is trained by policy gradient (REINFORCE, as in
       MaskGAN): reward of a generated visit ``r = log D(visit)`` from the discriminator of step
       2 (before its update), advantage ``r − mean(r)`` over the step's generated visits
       (MaskGAN learns a critic instead: decision, a batch-mean baseline), loss
       ``−mean(A · log π) + λ_MLE · mean NLL(real masked visit)``. The MLE term is MaskGAN's
       maximum-likelihood in-filling, kept on throughout rather than as a pre-training phase
       (decision: no separate pre-training stage exists in the runner).
    4. *Predictor* (the backbone): cross-entropy (Eq. 3.16) over the real batch plus the
       synthetic positives the RL-Selector keeps (a plain mean over all kept samples, as adding
       them to the training set does), plus the backbone's own auxiliary losses.
    5. *RL-Selector* (:class:`SelectionPolicy`): one Bernoulli keep/drop action per synthetic
       patient, drawn before step 4. The paper's reward is the predictor's improvement on
       held-out data; here it is the improvement of the predictor's cross-entropy on the step's
       *real* patients, evaluated deterministically (eval mode) just before and just after the
       predictor's update, ``R = CE_before − CE_after``, minus a moving-average baseline
       (momentum ``reward_baseline_momentum``); loss ``−(R − b) · mean log π(a)``. Decision:
       validation data must not shape training in this runner (it selects checkpoints), so the
       real training batch is the reference. ``use_selector=False`` keeps every synthetic
       patient (MaskEHR without RL-Selector) and has no fourth optimiser.

    Synthetic patients are generated in code space (discrete visits the predictor embeds as it
    embeds real ones), unlike MedDiffusion and the authors' GAN baselines, which generate
    embeddings or hidden states: MaskEHR generates EHR data. The generator and discriminator
    read codes and visit order, not the dates (our simplification); a synthetic patient keeps
    its source's dates, age and gender. :meth:`training_loss` (inherited) is the real batch's
    CE alone; training goes through :meth:`training_step`. A batch without positives trains
    the predictor alone (one optimiser step). Under DDP this module has not been run.

    The predictor's optimiser and ReduceLROnPlateau scheduler are seed 000's (``optimizer``,
    ``scheduler``); the scheduler is stepped on ``val/f1`` at the end of each training epoch
    (after validation), by this module since Lightning does not step schedulers under manual
    optimisation. The generator, discriminator and selector share ``gan_optimizer`` (Adam,
    lr 1e-3, no weight decay: the MedDiffusion authors' GAN_runner.py for its GAN baselines)
    and are not scheduled. Gradients are clipped by norm to ``gradient_clip_val`` (1.0, the
    authors' ``max_grad_norm``) for each optimiser's parameters separately, by this module:
    Lightning refuses ``trainer.gradient_clip_val`` under manual optimisation, so the yaml sets
    that to null. ``trainer.global_step`` counts optimiser steps, i.e. three or four per batch.

    Args (beyond :class:`RiskPredictor`'s):
        synthetic_ratio: synthetic patients per real positive of the batch (1.0: doubles the
            positives before selection; neither the seed nor the sources we could read give
            MaskEHR's amount, so the one-to-one ratio is our default).
        mask_rate: probability that a real visit of a positive is masked and regenerated (0.5,
            our choice; ≥ 1 visit is always masked).
        generator_dim: width of the generator's code embedding and GRU (256, the authors'
            ``d_model`` of their GAN generators, generator_baseline.py).
        discriminator_dim: width of the discriminator (128, the authors' discriminator
            ``h_model``, generator_baseline.py).
        lambda_mle: weight of the generator's MLE in-filling loss (1.0, our choice).
        use_selector: train and apply the RL-Selector (True).
        selector_hidden_dim: hidden width of the selection policy (64, our choice).
        reward_baseline_momentum: momentum of the selector's moving-average reward baseline (0.9).
        gan_optimizer: ``gan_optimizer(params=...)`` for generator, discriminator and selector.
        gradient_clip_val: gradient-norm clip of every optimiser (None or 0: no clipping).
    """

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        synthetic_ratio: float = 1.0,
        mask_rate: float = 0.5,
        generator_dim: int = 256,
        discriminator_dim: int = 128,
        lambda_mle: float = 1.0,
        use_selector: bool = True,
        selector_hidden_dim: int = 64,
        reward_baseline_momentum: float = 0.9,
        gan_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        gradient_clip_val: float | None = 1.0,
    ):
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience)
        if synthetic_ratio < 0:
            raise ValueError(f"synthetic_ratio must be >= 0, got {synthetic_ratio}")
        if not 0.0 < mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
        self.automatic_optimization = False
        self.synthetic_ratio = synthetic_ratio
        self.mask_rate = mask_rate
        self.lambda_mle = lambda_mle
        self.reward_baseline_momentum = reward_baseline_momentum
        self.gradient_clip_val = gradient_clip_val
        self.generator = MaskedVisitGenerator(self.vocab_size, generator_dim)
        self.discriminator = MaskedVisitDiscriminator(self.vocab_size, discriminator_dim)
        representation_dim = self.backbone.output.in_features
        self.selector = SelectionPolicy(representation_dim, selector_hidden_dim) if use_selector else None
        # The selector's moving-average reward baseline, saved with the weights (resuming).
        self.register_buffer("reward_baseline", torch.zeros(()))
        self.register_buffer("reward_count", torch.zeros((), dtype=torch.long))

    # --- augmentation ----------------------------------------------------------------------

    def n_synthetic(self, n_positives: int) -> int:
        """Synthetic patients for a batch with ``n_positives`` positives: round(ratio · n_pos)."""
        return math.floor(self.synthetic_ratio * n_positives + 0.5)

    def synthesise(self, batch: Batch, generator: torch.Generator | None = None) -> SyntheticPositives | None:
        """Step 1: synthetic positives from the batch's positives (None if there are none)."""
        labels = batch["label"]
        positives = torch.nonzero(labels == 1).squeeze(1)
        n_synthetic = self.n_synthetic(len(positives))
        if n_synthetic == 0:
            return None
        whole, remainder = divmod(n_synthetic, len(positives))
        extra = torch.randperm(len(positives), device=labels.device, generator=generator)[:remainder]
        sources = torch.cat([positives.repeat(whole), positives[extra]])
        n_patients = labels.shape[0]
        synthetic = {key: value[sources] for key, value in batch.items()
                     if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_patients}
        masked = draw_visit_masks(synthetic["visit_mask"], self.mask_rate, generator)
        codes, log_prob, real_nll = self.generator(synthetic["codes"], synthetic["visit_mask"], masked, generator)
        synthetic["codes"] = codes
        synthetic["label"] = torch.ones_like(synthetic["label"])
        return SyntheticPositives(synthetic, sources, masked, log_prob, real_nll)

    def discriminator_loss(self, batch: Batch, synthetic: SyntheticPositives) -> tuple[Tensor, Tensor]:
        """Step 2's BCE and the logits of the generated visits (detached, for the rewards)."""
        real_codes = batch["codes"][synthetic.sources]
        visit_mask = synthetic.batch["visit_mask"]
        real_logits = self.discriminator(real_codes, visit_mask, synthetic.masked)
        fake_logits = self.discriminator(synthetic.batch["codes"], visit_mask, synthetic.masked)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                      + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        return loss, fake_logits.detach()

    def generator_loss(self, synthetic: SyntheticPositives, fake_logits: Tensor) -> dict[str, Tensor]:
        """Step 3: REINFORCE on ``log D`` with a batch-mean baseline, plus λ_MLE · in-filling NLL."""
        reward = F.logsigmoid(fake_logits)
        advantage = reward - reward.mean()
        policy_loss = -(advantage * synthetic.log_prob).mean()
        mle = synthetic.real_nll.mean()
        return {"generator_loss": policy_loss + self.lambda_mle * mle, "generator_mle": mle,
                "generator_reward": reward.mean()}

    def selector_states(self, representation: Tensor, probability: Tensor, synthetic: SyntheticPositives,
                        fake_logits: Tensor) -> Tensor:
        """[N, representation_dim + 3] states of the RL-Selector (all detached)."""
        masked = synthetic.masked
        per_patient = torch.zeros(masked.shape, device=masked.device)
        per_patient[masked] = fake_logits.sigmoid()
        n_masked = masked.sum(dim=1).clamp(min=1)
        realness = per_patient.sum(dim=1) / n_masked
        generated_fraction = n_masked / synthetic.batch["visit_mask"].sum(dim=1).clamp(min=1)
        extra = torch.stack([probability, realness, generated_fraction.float()], dim=1)
        return torch.cat([representation, extra.to(representation.dtype)], dim=1).detach()

    # --- training --------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizers = self.optimizers()
        classifier_opt, generator_opt, discriminator_opt = optimizers[:3]
        selector_opt = optimizers[3] if self.selector is not None else None
        labels = batch["label"]
        n_real = labels.shape[0]
        logs: dict[str, Tensor] = {}

        synthetic = self.synthesise(batch)
        if synthetic is not None:
            discriminator_loss, fake_logits = self.discriminator_loss(batch, synthetic)
            self.manual_step(discriminator_opt, discriminator_loss)
            generator_losses = self.generator_loss(synthetic, fake_logits)
            self.manual_step(generator_opt, generator_losses["generator_loss"])
            logs |= {"discriminator_loss": discriminator_loss, **generator_losses,
                     "n_synthetic": torch.tensor(float(len(synthetic.sources)))}

        use_selector = synthetic is not None and self.selector is not None
        if use_selector:  # before the training forward: backbones may keep state for auxiliary_losses
            ce_before = self._real_cross_entropy(batch)
        # The predictor on the real batch and the synthetic positives in one forward pass.
        combined = batch if synthetic is None else _concatenate(batch, synthetic.batch)
        hidden = self.backbone.encode(self.backbone.embed_visits(combined), combined)
        representation = self.backbone.patient_representation(hidden, combined)
        logits = self.backbone.output(representation)
        per_sample_ce = F.cross_entropy(logits, combined["label"], reduction="none")
        keep = torch.ones_like(per_sample_ce)
        selector_log_prob = None
        if use_selector:
            states = self.selector_states(representation[n_real:], logits[n_real:].detach().softmax(-1)[:, 1],
                                          synthetic, fake_logits)
            selector_logits = self.selector(states)
            actions = torch.bernoulli(selector_logits.detach().sigmoid())
            selector_log_prob = -F.binary_cross_entropy_with_logits(selector_logits, actions, reduction="none")
            keep[n_real:] = actions
            logs["selected_fraction"] = actions.mean()
        classifier_loss = (per_sample_ce * keep).sum() / keep.sum()
        auxiliary = self.backbone.auxiliary_losses(combined)
        classifier_loss = classifier_loss + sum(auxiliary.values(), torch.zeros((), device=logits.device))
        self.manual_step(classifier_opt, classifier_loss)
        logs |= {"ce": per_sample_ce[:n_real].mean().detach(), **auxiliary, "classifier_loss": classifier_loss}

        if selector_log_prob is not None:
            reward = ce_before - self._real_cross_entropy(batch)
            advantage = reward - self._update_reward_baseline(reward)
            selector_loss = -advantage * selector_log_prob.mean()
            self.manual_step(selector_opt, selector_loss)
            logs |= {"selector_loss": selector_loss, "selector_reward": reward}

        logs["loss"] = classifier_loss  # what the progress bar and train/loss show: the predictor's
        for name, value in logs.items():
            self.log(f"train/{name}", value.detach().float(), on_step=True, on_epoch=True, prog_bar=name == "loss",
                     batch_size=n_real)

    def configure_optimizers(self):
        optimizers = [self.hparams.optimizer(params=self.backbone.parameters())]
        gan_optimizer = self.hparams.gan_optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizers += [gan_optimizer(params=self.generator.parameters()),
                       gan_optimizer(params=self.discriminator.parameters())]
        if self.selector is not None:
            optimizers.append(gan_optimizer(params=self.selector.parameters()))
        if self.hparams.scheduler is None:
            return optimizers
        # Stepped by on_train_epoch_end (manual optimisation): no monitor key for Lightning.
        return optimizers, [self.hparams.scheduler(optimizer=optimizers[0])]

    # --- helpers ---------------------------------------------------------------------------

    @torch.no_grad()
    def _real_cross_entropy(self, batch: Batch) -> Tensor:
        """The predictor's mean CE on the real batch in eval mode (the selector's reward)."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return F.cross_entropy(self.backbone(batch), batch["label"]).float()
        finally:
            self.backbone.train(was_training)

    def _update_reward_baseline(self, reward: Tensor) -> Tensor:
        """The baseline to subtract from this step's reward (the reward itself on the first
        step), then the moving average moves towards the reward."""
        if int(self.reward_count) == 0:
            self.reward_baseline.fill_(reward.item())
        baseline = self.reward_baseline.clone()
        momentum = self.reward_baseline_momentum
        self.reward_baseline.mul_(momentum).add_((1.0 - momentum) * reward.detach())
        self.reward_count.add_(1)
        return baseline


def _concatenate(real: Batch, synthetic: Batch) -> Batch:
    """The real batch followed by the synthetic patients (the keys both have)."""
    return {key: torch.cat([real[key], synthetic[key]]) for key in synthetic if key in real}
