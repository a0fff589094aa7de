"""ehrGAN augmentation (seed 000's Table 2 baseline): an encoder–decoder GAN generates visit
sequences near real patients, and an LSTM risk predictor trains on real + synthetic patients.

Che, Cheng, Zhai, Sun and Liu, "Boosting Deep Learning Risk Prediction with Generative
Adversarial Networks for Electronic Health Records", ICDM 2017 (ehrGAN). Seed 000 (MedDiffusion)
lists it among three augmentation baselines of Table 2 (§2: 90-day windows and an
encoder–decoder CNN; §6.2: "learn and generate EHR data and then trains a CNN predictor
separately"). ``model=ehrgan_aug`` is :class:`EhrGANAugmentation` around the
:class:`~ehrlab.models.risk.lstm.LSTMBackbone` of ``model=lstm``, under seed 000's recipe.

The mechanism and where each piece comes from:

- **Generator** (ehrGAN's encoder–decoder CNN, §III of the paper): the source patient's visits
  ``x`` (multi-hot over the vocabulary, embedded as a sum of code vectors) are encoded by two
  1-D convolutions along the visits into a latent ``h`` per visit; a random part of ``h`` is
  replaced with noise, ``h̃ = (1 − m) ⊙ h + m ⊙ z`` with ``m ~ Bernoulli(noise_ratio)`` and
  ``z ~ N(0, I)`` elementwise (the paper's partial noise replacement, which it reads as
  *variational contrastive divergence*: the generator is a learned transition from a real
  record to a sample in its neighbourhood, as one MCMC step of contrastive divergence starts
  from the data); two convolutions decode ``h̃`` and a linear layer gives per-visit code logits.
  Sizes are the MedDiffusion authors' (``models/ehrGAN.py`` + ``ehrGAN_runner``): 200-d code
  vectors (their word2vec size), 100-d middle layer, 100-d latent, kernel 3, noise ratio 0.5
  (their mask is ``randn > 0``), dropout 0.1.
- **Discriminator**: a text-CNN over the visit sequence (filter widths 3, 4, 5 with 100 maps
  each, ReLU, max over real visits, a linear logit), the authors' ``CNNDiscriminator`` sizes,
  reading multi-hot visits through its own code projection. GAN losses are the standard
  non-saturating ones: ``L_D = BCE(D(x), 1) + BCE(D(x̃), 0)``, ``L_G = BCE(D(x̃), 1)`` (the
  authors' runner; no reconstruction term).
- **Classifier** — a deviation from the paper, on purpose: ehrGAN trains a CNN predictor;
  here the classifier is the same ``LSTMBackbone`` as ``model=lstm`` (issue 14: every
  augmentation baseline ends in the same LSTM classifier so the comparison is fair).
- **Labels of synthetic patients**: each synthetic sequence carries its *source patient's*
  label, ``ỹ = y`` (ehrGAN's semi-supervised augmentation: the generator only produces
  "plausible labeled" records in the neighbourhood of a labelled one; the authors' code
  appends the generated set with the source labels). Visit mask, visit count and times
  (``time_delta``, ``time_to_end``) are the source patient's too; only the codes are new.
- **Ratio**: ``synthetic_ratio`` synthetic patients per real patient in each training step,
  ``n = round(ratio · B)``; default 1.0, the authors' setting (one generated copy of every
  training patient, appended to the training set). For ratio ≤ 1 the sources are a random
  subset of the batch without repetition; above 1 every patient is a source ⌊ratio⌋ or
  ⌈ratio⌉ times, each copy with its own noise.
- **Classifier loss**: cross-entropy averaged over the real *and* synthetic patients of the step
  (each synthetic patient weighs as a real one, as in the authors' combined training set):
  ``L_C = (B · CE_real + n · CE_synthetic) / (B + n)``; ``ce`` and ``synthetic_ce`` are logged too.

Decisions where the paper is silent, or where it and the authors' code differ:

- **Codes of a synthetic visit**: the ``k`` codes with the highest decoder logits, ``k`` = the
  number of non-padding codes of the source visit (capped by the slots ``C`` and the number of
  real codes), left-aligned in the ``codes`` tensor [B, V, C] like the DataModule's. So the
  synthetic patient has the source's shape (visits, codes per visit) and goes through the
  backbone's own ``embed_visits``. ``[PAD]`` and ``[UNK]`` are never generated (their logits
  are masked). The authors instead decode each code slot's vector to its nearest word2vec
  code (deterministic too); the paper's CNN predictor reads the generated matrix directly.
- **Gradient through the discrete visits**: the discriminator reads the hard top-k visits
  (multi-hot ``x``, embedded as ``x W``); the generator's gradient flows through the sigmoid
  ``p`` of its logits (straight-through estimator, as if ``x̃ = x + p − stop_grad(p)``; the
  dense ``p W`` is never computed in the forward pass, only ``∂L/∂(xW) Wᵀ`` in the backward). The discriminator's real input drops ``[UNK]``
  (synthetic visits never hold it, so it would give fakes away).
- **90-day windows**: not reproduced. ehrGAN aggregates events in fixed 90-day windows
  (seed 000 §2, §4.3 blames the information loss on them); here one step is one visit, as
  for every other model, so the LSTM classifier and its time embedding see the same units.
- **Convolutions along visits**: the authors' convolutions run along the code slots of one
  visit; ours run along visits, as the paper's CNN runs along time. Stride-1 transposed
  convolutions are plain convolutions, so the decoder convolves too (:class:`VisitConv`: one
  linear map per window of visits, which trains several times faster than ``Conv1d`` on
  CPUs and is the same function). Batch norm (the authors') is replaced by layer norm over channels, so that padding visits cannot leak into
  the statistics; activations are zeroed at padding visits after every layer, which makes
  generator and discriminator invariant to extra padding visits.
- **One training run, three optimisers** (the paper and the authors train the GAN first,
  then the predictor): every step updates the discriminator, then the generator against the
  updated discriminator, then the classifier on the real batch + the step's synthetic
  patients (their codes are discrete: no gradient reaches the generator from the classifier).
  During the first ``warmup_epochs`` epochs (default 1, ours: an untrained decoder emits
  noise) the GAN trains but the classifier reads real patients only.
- **Optimisers**: classifier = the recipe's ``optimizer`` (Adam 1e-3, weight decay 1e-3) with
  its ReduceLROnPlateau on ``val/f1``, stepped here at the end of each training epoch (after
  validation) because Lightning does not step schedulers under manual optimisation.
  Generator: Adam 1e-3, weight decay 1e-3; discriminator: Adam 1e-3, no weight decay (the
  authors' ehrGAN runner; they exempt biases from decay, we do not). The GAN's learning
  rates stay constant (the authors schedule them on a GAN validation loss this module has no
  use for).
- **Gradient clipping**: by norm, ``gradient_clip_val`` (1.0, the authors' ``max_grad_norm``)
  for each optimiser's parameters, done here. Lightning refuses ``Trainer(gradient_clip_val)``
  under manual optimisation, so ``conf/model/ehrgan_aug.yaml`` sets ``trainer.gradient_clip_val:
  null`` and the model holds the value (override ``model.gradient_clip_val``, not the trainer's).
- **Evaluation** reads real patients only (:meth:`RiskPredictor.forward`).
- Lightning counts every optimiser step in ``trainer.global_step``: three per batch here
  (two with ``synthetic_ratio: 0``, which trains no GAN and is the plain LSTM).
- Cost: the generator's output layer and the straight-through gradient are dense over the
  vocabulary ([n, V, vocab] per step). On one CPU thread at §4.1's sizes, vocabulary 4,894,
  64 patients × 20 visits × 20 codes, a step takes about 11× an ``model=lstm`` step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.data.schema import PAD_CODE, UNKNOWN_CODE
from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor


class VisitConv(nn.Module):
    """A 1-D convolution along the visits of [B, V, in_dim] values, zero-padded to keep V outputs
    (``(w − 1) // 2`` visits before, ``w // 2`` after, as ``padding="same"``), computed as one
    linear map of each window of ``w`` visits (much faster than ``Conv1d``'s backward on CPUs)."""

    def __init__(self, in_dim: int, out_dim: int, width: int):
        super().__init__()
        self.width = width
        self.linear = nn.Linear(in_dim * width, out_dim)

    def forward(self, values: Tensor) -> Tensor:
        padded = F.pad(values, (0, 0, (self.width - 1) // 2, self.width // 2))
        windows = padded.unfold(1, self.width, 1)  # [B, V, in_dim, width]
        return self.linear(windows.reshape(*windows.shape[:2], -1))


class _StraightThrough(torch.autograd.Function):
    """Forward: the embedded hard visits ``x W`` as given. Backward: the gradient also reaches the
    soft visits ``p`` as if the forward had been ``x W + p W − stop_grad(p W)`` (straight-through),
    without computing the dense ``p W`` whose value is zero."""

    @staticmethod
    def forward(ctx, embedded: Tensor, probabilities: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return embedded.view_as(embedded)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        return grad, grad @ weight.to(grad.dtype).T, None


class ConvBlock(nn.Module):
    """Convolution along visits → LeakyReLU → LayerNorm → Dropout, zeroed at padding visits."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, dropout: float, norm: bool = True):
        super().__init__()
        self.conv = VisitConv(in_dim, out_dim, kernel_size)
        self.norm = nn.LayerNorm(out_dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, values: Tensor, visit_mask: Tensor) -> Tensor:
        hidden = self.dropout(self.norm(F.leaky_relu(self.conv(values))))
        return hidden * visit_mask[..., None]


class VisitSequenceGenerator(nn.Module):
    """ehrGAN's encoder–decoder generator with partial noise replacement of the latent code.

    ``x → Σ code vectors → Enc (2 conv) → h; h̃ = (1 − m) ⊙ h + m ⊙ z; h̃ → Dec (2 conv) → logits``
    over the vocabulary per visit, with ``[PAD]``/``[UNK]`` logits at the dtype's minimum.
    """

    def __init__(self, vocab_size: int, allowed: Tensor, code_dim: int = 200, latent_dim: int = 100,
                 kernel_size: int = 3, noise_ratio: float = 0.5, dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio must lie in [0, 1], got {noise_ratio}")
        middle = code_dim // 2
        self.noise_ratio = noise_ratio
        self.code_embedding = nn.EmbeddingBag(vocab_size, code_dim, mode="sum", padding_idx=0)
        self.encoder = nn.ModuleList([ConvBlock(code_dim, middle, kernel_size, dropout),
                                      ConvBlock(middle, latent_dim, kernel_size, dropout)])
        self.decoder = nn.ModuleList([ConvBlock(latent_dim, middle, kernel_size, dropout),
                                      ConvBlock(middle, code_dim, kernel_size, 0.0, norm=False)])
        self.output = nn.Linear(code_dim, vocab_size)
        self.register_buffer("allowed", allowed, persistent=False)

    def encode(self, codes: Tensor, visit_mask: Tensor) -> Tensor:
        """Latent code ``h`` [B, V, latent_dim], 0 at padding visits."""
        n_patients, n_visits, n_codes = codes.shape
        hidden = self.code_embedding(codes.reshape(-1, n_codes)).reshape(n_patients, n_visits, -1)
        for block in self.encoder:
            hidden = block(hidden, visit_mask)
        return hidden

    def replace_with_noise(self, latent: Tensor, visit_mask: Tensor, generator: torch.Generator | None = None
                           ) -> Tensor:
        """``h̃ = (1 − m) ⊙ h + m ⊙ z``, ``m ~ Bernoulli(noise_ratio)``, ``z ~ N(0, I)``, elementwise."""
        replaced = torch.rand(latent.shape, generator=generator, device=latent.device) < self.noise_ratio
        noise = torch.randn(latent.shape, generator=generator, device=latent.device, dtype=latent.dtype)
        return torch.where(replaced, noise, latent) * visit_mask[..., None]

    def decode(self, latent: Tensor, visit_mask: Tensor) -> Tensor:
        """Code logits [B, V, vocab_size]; ``[PAD]`` and ``[UNK]`` can never be chosen."""
        hidden = latent
        for block in self.decoder:
            hidden = block(hidden, visit_mask)
        logits = self.output(hidden)
        return logits.masked_fill(~self.allowed.bool(), torch.finfo(logits.dtype).min)

    def forward(self, codes: Tensor, visit_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        latent = self.replace_with_noise(self.encode(codes, visit_mask), visit_mask, generator)
        return self.decode(latent, visit_mask)


class SequenceDiscriminator(nn.Module):
    """Text-CNN critic over multi-hot visit sequences: code vectors summed per visit (``x W``),
    parallel convolutions of several widths along the visits, ReLU, max over real visits,
    dropout, one logit.

    Visits come as ``codes`` [B, V, C] (ids the critic must not see mapped to 0 beforehand);
    synthetic ones also with their decoder probabilities [B, V, vocab_size], through which the
    generator's gradient flows (straight-through).
    """

    def __init__(self, vocab_size: int, code_dim: int = 200, n_filters: int = 100,
                 widths: Sequence[int] = (3, 4, 5), dropout: float = 0.1):
        super().__init__()
        self.code_embedding = nn.EmbeddingBag(vocab_size, code_dim, mode="sum", padding_idx=0)  # W
        self.convs = nn.ModuleList([VisitConv(code_dim, n_filters, int(w)) for w in widths])
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(n_filters * len(self.convs), 1)

    def embed(self, codes: Tensor, probabilities: Tensor | None = None) -> Tensor:
        """``x W`` [B, V, code_dim] for the multi-hot visits ``x`` of ``codes``; with
        ``probabilities``, their gradient is ``∂L/∂(x W) Wᵀ`` (straight-through)."""
        n_patients, n_visits, n_codes = codes.shape
        embedded = self.code_embedding(codes.reshape(-1, n_codes)).reshape(n_patients, n_visits, -1)
        if probabilities is None:
            return embedded
        return _StraightThrough.apply(embedded, probabilities, self.code_embedding.weight)

    def forward(self, codes: Tensor, visit_mask: Tensor, probabilities: Tensor | None = None) -> Tensor:
        """Real-vs-synthetic logits [B]."""
        mask = visit_mask[..., None]
        embedded = self.embed(codes, probabilities) * mask
        # ReLU features are ≥ 0 and every patient has a real visit, so zeroing the padding
        # visits leaves the max over real visits unchanged.
        features = torch.cat([F.relu(conv(embedded)) * mask for conv in self.convs], dim=-1)
        return self.output(self.dropout(features.amax(dim=1))).squeeze(-1)


class SyntheticSequences(NamedTuple):
    """One step's synthetic patients."""

    batch: Batch  # the DataModule's batch contract; codes generated, everything else the source's
    probabilities: Tensor  # [n, V, vocab_size] σ(decoder logits), 0 for [PAD]/[UNK]: the straight-through path
    source_index: Tensor  # [n] row of the real batch each synthetic patient comes from


class EhrGANAugmentation(RiskPredictor):
    """ehrGAN (Che et al., ICDM 2017) augmentation around a risk backbone, trained in one run.

    See the module docstring for the mechanism, its sources and the decisions taken.

    Args (beyond :class:`RiskPredictor`'s):
        synthetic_ratio: synthetic patients per real patient in each step (1.0, authors).
        noise_ratio: fraction of latent entries replaced by N(0, 1) noise (0.5, authors).
        code_dim, latent_dim, kernel_size: generator sizes (200, 100, 3; authors).
        discriminator_filters, discriminator_widths: text-CNN critic (100 maps of widths 3, 4, 5; authors).
        gan_dropout: dropout in generator and discriminator (0.1, authors).
        warmup_epochs: epochs in which only the GAN uses synthetic sequences (1, ours).
        generator_optimizer, discriminator_optimizer: ``_partial_`` optimisers (None: ``optimizer``).
        gradient_clip_val: max gradient norm per optimiser (1.0; None or 0 disables).
    """

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        synthetic_ratio: float = 1.0,
        noise_ratio: float = 0.5,
        code_dim: int = 200,
        latent_dim: int = 100,
        kernel_size: int = 3,
        discriminator_filters: int = 100,
        discriminator_widths: Sequence[int] = (3, 4, 5),
        gan_dropout: float = 0.1,
        warmup_epochs: int = 1,
        generator_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        discriminator_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        gradient_clip_val: float | None = 1.0,
    ):
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience)
        if synthetic_ratio < 0:
            raise ValueError(f"synthetic_ratio must be ≥ 0, got {synthetic_ratio}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be ≥ 0, got {warmup_epochs}")
        self.automatic_optimization = False
        self.synthetic_ratio = float(synthetic_ratio)
        self.warmup_epochs = warmup_epochs
        self.gradient_clip_val = gradient_clip_val
        # Codes a synthetic visit may hold: every id but [PAD] and [UNK].
        allowed = torch.tensor([code not in (PAD_CODE, UNKNOWN_CODE) for code in self.vocabulary], dtype=torch.float)
        self.register_buffer("allowed_codes", allowed, persistent=False)
        self.generator = VisitSequenceGenerator(self.vocab_size, allowed, code_dim, latent_dim, kernel_size,
                                                noise_ratio, gan_dropout)
        self.discriminator = SequenceDiscriminator(self.vocab_size, code_dim, discriminator_filters,
                                                   tuple(discriminator_widths), gan_dropout)

    # --- generation ------------------------------------------------------------------------

    def n_synthetic(self, n_real: int) -> int:
        """Synthetic patients in a step with ``n_real`` real ones: ``round(synthetic_ratio · n_real)``."""
        return round(self.synthetic_ratio * n_real)

    def source_rows(self, n_real: int, n_synthetic: int, generator: torch.Generator | None = None) -> Tensor:
        """[n_synthetic] rows of the real batch: a random permutation repeated as often as needed,
        so each patient is a source ⌊n/B⌋ or ⌈n/B⌉ times."""
        permutation = torch.randperm(n_real, generator=generator).to(self.device)
        return permutation[torch.arange(n_synthetic, device=self.device) % n_real]

    def generate(self, batch: Batch, n_synthetic: int | None = None,
                 generator: torch.Generator | None = None) -> SyntheticSequences:
        """Synthetic patients from the batch's real ones (their visits, times and labels)."""
        n_real = batch["label"].shape[0]
        n_synthetic = self.n_synthetic(n_real) if n_synthetic is None else n_synthetic
        rows = self.source_rows(n_real, n_synthetic, generator)
        source = {key: value[rows] for key, value in batch.items()
                  if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n_real}
        codes, visit_mask = source["codes"], source["visit_mask"]
        logits = self.generator(codes, visit_mask, generator)

        # k codes per visit: as many as the source visit holds (no padding), capped by the slots
        # and by the number of codes that may be generated.
        n_allowed = int(self.allowed_codes.sum().item())
        n_slots = min(codes.shape[-1], n_allowed)
        n_codes = (codes != 0).sum(dim=-1).clamp(max=n_slots) * visit_mask
        top = logits.topk(n_slots, dim=-1).indices  # [n, V, n_slots], distinct ids, best first
        keep = torch.arange(n_slots, device=codes.device) < n_codes[..., None]
        synthetic_codes = torch.zeros_like(codes)
        synthetic_codes[..., :n_slots] = torch.where(keep, top, torch.zeros_like(top))

        probabilities = torch.sigmoid(logits) * visit_mask[..., None]  # σ(finfo.min) = 0 at [PAD]/[UNK]
        return SyntheticSequences(dict(source, codes=synthetic_codes), probabilities, rows)

    # --- losses ----------------------------------------------------------------------------

    def known_codes(self, codes: Tensor) -> Tensor:
        """``codes`` with [UNK] (and any other id a synthetic visit cannot hold) set to padding:
        the discriminator's view of real visits."""
        return torch.where(self.allowed_codes[codes].bool(), codes, torch.zeros_like(codes))

    def discriminator_loss(self, batch: Batch, synthetic: SyntheticSequences) -> Tensor:
        """``BCE(D(x), 1) + BCE(D(x̃), 0)``, each a batch mean; the generator gets no gradient."""
        real = self.discriminator(self.known_codes(batch["codes"]), batch["visit_mask"])
        fake = self.discriminator(synthetic.batch["codes"], synthetic.batch["visit_mask"])
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def generator_loss(self, synthetic: SyntheticSequences) -> Tensor:
        """Non-saturating ``BCE(D(x̃), 1)``; reaches the generator through the probabilities."""
        fake = self.discriminator(synthetic.batch["codes"], synthetic.batch["visit_mask"], synthetic.probabilities)
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def classifier_losses(self, batch: Batch, synthetic: Batch | None = None) -> dict[str, Tensor]:
        """CE over the real patients and, if given, the synthetic ones together (``loss``), with
        ``ce`` (real) and ``synthetic_ce`` logged apart; plus the backbone's own terms."""
        if synthetic is None:
            logits = self(batch)
            ce = F.cross_entropy(logits, batch["label"])
            auxiliary = self.backbone.auxiliary_losses(batch)
            return {"ce": ce, **auxiliary, "loss": ce + sum(auxiliary.values())}
        n_real = batch["label"].shape[0]
        combined = {key: torch.cat([batch[key], synthetic[key]]) for key in synthetic}
        per_patient = F.cross_entropy(self.backbone(combined), combined["label"], reduction="none")
        auxiliary = self.backbone.auxiliary_losses(combined)
        return {"ce": per_patient[:n_real].mean(), "synthetic_ce": per_patient[n_real:].mean(), **auxiliary,
                "loss": per_patient.mean() + sum(auxiliary.values())}

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The classifier's loss of one step with synthetic patients from the current generator
        (what :meth:`training_step` optimises for the classifier; the GAN's updates are apart)."""
        if self.n_synthetic(batch["label"].shape[0]) == 0:
            return self.classifier_losses(batch)
        with torch.no_grad():
            synthetic = self.generate(batch)
        return self.classifier_losses(batch, synthetic.batch)

    # --- Lightning hooks -------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        classifier_optimizer, generator_optimizer, discriminator_optimizer = self.optimizers()
        n_real = batch["label"].shape[0]
        losses: dict[str, Tensor] = {}
        synthetic = None
        if self.n_synthetic(n_real) > 0:
            synthetic = self.generate(batch)
            discriminator_loss = self.discriminator_loss(batch, synthetic)
            self.manual_step(discriminator_optimizer, discriminator_loss)
            self.toggle_optimizer(generator_optimizer)  # the discriminator is frozen for this pass
            generator_loss = self.generator_loss(synthetic)  # against the updated discriminator
            self.manual_step(generator_optimizer, generator_loss)
            self.untoggle_optimizer(generator_optimizer)
            losses = {"discriminator_loss": discriminator_loss.detach(), "generator_loss": generator_loss.detach()}
        with_synthetic = synthetic is not None and self.current_epoch >= self.warmup_epochs
        classifier = self.classifier_losses(batch, synthetic.batch if with_synthetic else None)
        self.manual_step(classifier_optimizer, classifier["loss"])
        losses |= {name: value.detach() for name, value in classifier.items()}
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, prog_bar=name == "loss", batch_size=n_real)
        return classifier["loss"].detach()

    def configure_optimizers(self):
        """Classifier (with the scheduler, if any), generator, discriminator — in this order."""
        hparams = self.hparams
        classifier = hparams.optimizer(params=self.backbone.parameters())
        generator = (hparams.generator_optimizer or hparams.optimizer)(params=self.generator.parameters())
        discriminator = (hparams.discriminator_optimizer or hparams.optimizer)(params=self.discriminator.parameters())
        first: dict[str, Any] = {"optimizer": classifier}
        if hparams.scheduler is not None:
            first["lr_scheduler"] = {"scheduler": hparams.scheduler(optimizer=classifier), "interval": "epoch"}
        return [first, {"optimizer": generator}, {"optimizer": discriminator}]


__all__ = ["EhrGANAugmentation", "SequenceDiscriminator", "SyntheticSequences", "VisitSequenceGenerator"]
