"""TabDDPM augmentation baseline of seed 000 (Table 2, "TabDDPM"; §6.2).

Seed 000 (MedDiffusion) compares against TabDDPM (Kotelnikov, Baranchuk, Rubachev, Babenko,
"TabDDPM: Modelling Tabular Data with Diffusion Models", ICML 2023) used as an augmenter: "an
MLP blocks structured diffusion model to generate both numerical and categorical EHR data and
train a separate LSTM classifier as the risk prediction module" (seed 000, §6.2). Here that is
one LightningModule, :class:`TabDDPMAugmentation`: a class-conditional diffusion model over
multi-hot code vectors (:class:`BinaryCodeDiffusion` with the :class:`MLPDenoiser`) and a
risk backbone (the ``LSTMBackbone`` of ``model=lstm`` by default) trained on real and
synthetic patients. Validation, test and prediction read real patients only (inherited from
:class:`~ehrlab.models.risk.base.RiskPredictor`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor
from ehrlab.models.risk.denoiser import sinusoidal_step_embedding

#: floor under probabilities before a log: TabDDPM's log(0) (its code uses log(1e-30))
LOG_FLOOR = 1e-30
ROWS = ("visit", "patient")
SCHEDULES = ("cosine", "linear")


def cosine_beta_schedule(n_steps: int, max_beta: float = 0.999) -> Tensor:
    """β_1..β_T of Nichol & Dhariwal (2021, Eq. 17), TabDDPM's default scheduler:
    ``ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2)``, ``β_t = min(1 − ᾱ(t)/ᾱ(t−1), 0.999)``."""
    fraction = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    alpha_bar = torch.cos((fraction + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def linear_beta_schedule(n_steps: int) -> Tensor:
    """DDPM's linear β from 1e-4 to 0.02, rescaled by 1000/T so that any T ends equally noisy
    (TabDDPM's "linear" scheduler)."""
    scale = 1000.0 / n_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, n_steps, dtype=torch.float64)


class BinaryCodeDiffusion(nn.Module):
    """Multinomial diffusion (Hoogeboom et al., NeurIPS 2021) of binary features: TabDDPM's
    process for its categorical and binary columns (TabDDPM §3, "multinomial diffusion", and
    §4), here one binary feature (K = 2: absent/present) per code.

    - forward: ``q(x_t | x_{t−1}) = Cat(α_t x_{t−1} + (1 − α_t)/K)``, in closed form
      ``q(x_t | x_0) = Cat(ᾱ_t x_0 + (1 − ᾱ_t)/K)``; the prior ``x_T`` is a fair coin per code;
    - posterior: ``q(x_s | x_t, x_0) ∝ [κ x_t + (1 − κ)/K] ⊙ [ᾱ_s x_0 + (1 − ᾱ_s)/K]`` with
      ``κ = ᾱ_t/ᾱ_s`` (one step: ``α_t``; exact for any s < t, which lets the sampler skip
      steps when ``sampling_steps`` < T);
    - the denoiser predicts ``x̂_0`` (one logit per code, ``p(present) = σ(logit)``: the
      two-class softmax with the absent logit fixed at 0), and
      ``p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0)``;
    - loss (TabDDPM's ``vb_stochastic``): one step t ~ U{0..T−1} per row,
      ``T · KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) + KL(q(x_T|x_0) ‖ Cat(1/K))``, where at
      t = 0 the KL is the decoder's −log p_θ(x_0|x_1); averaged over the features (TabDDPM
      divides its sum by the number of categorical features) and the rows.

    Step indices are 0-based: index t has noise level ``ᾱ[t] = Π_{i≤t} α_i``; "index −1" is
    the clean data (ᾱ = 1).
    """

    def __init__(self, n_steps: int = 100, schedule: str = "cosine"):
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"diffusion needs at least one step, got {n_steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"noise schedule must be one of {SCHEDULES}, got {schedule!r}")
        betas = cosine_beta_schedule(n_steps) if schedule == "cosine" else linear_beta_schedule(n_steps)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        self.n_steps = n_steps
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alpha_bars", alpha_bars.float(), persistent=False)
        self.register_buffer("alpha_bars_prev", torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]]).float(),
                             persistent=False)

    def add_noise(self, clean: Tensor, steps: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw of ``x_t ~ q(x_t | x_0)`` for rows ``clean`` [N, F] (0/1) at ``steps`` [N]."""
        keep = self.alpha_bars[steps].unsqueeze(1)
        return torch.bernoulli(keep * clean + (1.0 - keep) / 2.0, generator=generator)

    @staticmethod
    def posterior(noisy: Tensor, log_clean: tuple[Tensor, Tensor], step_keep: Tensor,
                  prev_keep: Tensor) -> tuple[Tensor, Tensor]:
        """``log q(x_s = 1 | x_t, x_0)`` and ``log q(x_s = 0 | x_t, x_0)``.

        ``noisy`` is x_t (0/1), ``log_clean`` the log-probabilities of x_0 = 1 and x_0 = 0
        (exact data or the denoiser's x̂_0), ``step_keep`` κ = ᾱ_t/ᾱ_s and ``prev_keep`` ᾱ_s,
        both broadcastable to [N, 1].
        """
        step_uniform = (1.0 - step_keep) / 2.0
        log_from_one = torch.log((step_keep * noisy + step_uniform).clamp(min=LOG_FLOOR))  # q(x_t | x_s = 1)
        log_from_zero = torch.log((step_keep * (1.0 - noisy) + step_uniform).clamp(min=LOG_FLOOR))
        log_keep = torch.log(prev_keep.clamp(min=LOG_FLOOR))
        log_uniform = torch.log(((1.0 - prev_keep) / 2.0).clamp(min=LOG_FLOOR))
        one = log_from_one + torch.logaddexp(log_keep + log_clean[0], log_uniform)
        zero = log_from_zero + torch.logaddexp(log_keep + log_clean[1], log_uniform)
        norm = torch.logaddexp(one, zero)
        return one - norm, zero - norm

    @staticmethod
    def posterior_one(noisy: Tensor, clean: tuple[Tensor, Tensor], step_keep: Tensor, prev_keep: Tensor) -> Tensor:
        """``q(x_s = 1 | x_t, x_0)`` from the probabilities of x_0 = 1 and x_0 = 0: the
        posterior of :meth:`posterior` in probability space (the factors of x_s = 1 and of
        x_s = 0 are non-negative and cannot both vanish), cheaper for the sampler."""
        step_uniform = (1.0 - step_keep) / 2.0
        prev_uniform = (1.0 - prev_keep) / 2.0
        one = (step_keep * noisy + step_uniform) * (prev_keep * clean[0] + prev_uniform)
        zero = (step_keep * (1.0 - noisy) + step_uniform) * (prev_keep * clean[1] + prev_uniform)
        return one / (one + zero)

    def loss(self, denoiser: nn.Module, clean: Tensor, labels: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """TabDDPM's multinomial loss of rows ``clean`` [N, F] with classes ``labels`` [N]."""
        steps = torch.randint(0, self.n_steps, (clean.shape[0],), device=clean.device, generator=generator)
        noisy = self.add_noise(clean, steps, generator)
        logits = denoiser(noisy, steps, labels).float()
        step_keep = self.alphas[steps].unsqueeze(1)
        prev_keep = self.alpha_bars_prev[steps].unsqueeze(1)
        true = self.posterior(noisy, (torch.log(clean.clamp(min=LOG_FLOOR)), torch.log((1.0 - clean).clamp(
            min=LOG_FLOOR))), step_keep, prev_keep)
        model = self.posterior(noisy, (F.logsigmoid(logits), F.logsigmoid(-logits)), step_keep, prev_keep)
        kl = true[0].exp() * (true[0] - model[0]) + true[1].exp() * (true[1] - model[1])
        # KL(q(x_T | x_0) ‖ uniform): constant in θ, kept so the loss is TabDDPM's ELBO estimate.
        final_one = self.alpha_bars[-1] * clean + (1.0 - self.alpha_bars[-1]) / 2.0
        prior_kl = (torch.xlogy(final_one, 2.0 * final_one) + torch.xlogy(1.0 - final_one, 2.0 * (1.0 - final_one)))
        return (self.n_steps * kl + prior_kl).mean()

    def sampling_steps(self, n_steps: int | None = None) -> list[int]:
        """The descending step indices the sampler visits: all T, or ``n_steps`` evenly spaced."""
        if n_steps is None or n_steps >= self.n_steps:
            return list(range(self.n_steps - 1, -1, -1))
        if n_steps < 1:
            raise ValueError(f"sampling needs at least one step, got {n_steps}")
        grid = torch.linspace(0, self.n_steps - 1, n_steps, dtype=torch.float64).round().long().unique()
        return grid.flip(0).tolist()

    @torch.no_grad()
    def sample(self, denoiser: nn.Module, labels: Tensor, n_features: int, n_steps: int | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Ancestral sampling from the prior: rows x_0 [N, F] (0/1) of classes ``labels`` [N],
        and the last step's ``p(x_0 = 1 | x_1)`` [N, F] (used to rank codes)."""
        state = torch.bernoulli(torch.full((labels.shape[0], n_features), 0.5, device=labels.device),
                                generator=generator)
        probability = state
        steps = self.sampling_steps(n_steps)
        for index, step in enumerate(steps):
            previous = steps[index + 1] if index + 1 < len(steps) else -1
            prev_keep = self.alpha_bars[previous] if previous >= 0 else self.alpha_bars.new_ones(())
            logits = denoiser(state, torch.full_like(labels, step), labels).float()
            probability = self.posterior_one(state, (torch.sigmoid(logits), torch.sigmoid(-logits)),
                                             self.alpha_bars[step] / prev_keep, prev_keep)
            state = torch.bernoulli(probability, generator=generator)
        return state, probability


class MLPDenoiser(nn.Module):
    """TabDDPM's reverse-process network (TabDDPM §4): ``x_in = Linear(x_t) + t_emb + y_emb``,
    ``t_emb = Linear(SiLU(Linear(SinTimeEmb(t))))``, ``y_emb = Embedding(y)`` (class
    conditioning, as TabDDPM does for classification data), then
    ``MLP(x) = Linear(MLPBlock(…MLPBlock(x_in)))`` with ``MLPBlock(x) = Dropout(ReLU(Linear(x)))``.

    Its input is the state x_t itself, one 0/1 column per code (the two one-hot columns of a
    binary feature carry the same information; TabDDPM's code feeds the log of the one-hot),
    its output one logit per code for x̂_0 (see :class:`BinaryCodeDiffusion`). Defaults:
    ``embedding_dim`` 128 (``dim_t`` of the official code), ``layers`` (256, 256) and dropout 0
    (the example configuration of TabDDPM's CONFIG_DESCRIPTION.md; the paper tunes 2–8 layers
    of 128–1024 units per dataset, dropout 0).
    """

    def __init__(self, n_features: int, n_classes: int = 2, layers: Sequence[int] = (256, 256),
                 embedding_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.input = nn.Linear(n_features, embedding_dim)
        self.step_embedding = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.SiLU(),
                                            nn.Linear(embedding_dim, embedding_dim))
        self.label_embedding = nn.Embedding(n_classes, embedding_dim)
        blocks: list[nn.Module] = []
        width = embedding_dim
        for out_width in layers:
            blocks += [nn.Linear(width, int(out_width)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(out_width)
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(width, n_features)

    def forward(self, noisy: Tensor, steps: Tensor, labels: Tensor) -> Tensor:
        """Logits of x̂_0 [N, F] from x_t [N, F], steps [N] and classes [N]."""
        step_embedding = self.step_embedding(sinusoidal_step_embedding(steps, self.embedding_dim))
        hidden = self.input(noisy) + step_embedding + self.label_embedding(labels)
        return self.output(self.blocks(hidden))


# --- multi-hot rows <-> code ids --------------------------------------------------------------


def multi_hot(codes: Tensor, vocab_size: int) -> Tensor:
    """[..., vocab_size − 1] float 0/1 of code ids 1..vocab_size−1 from ``codes`` [..., C]
    (id 0 = padding is dropped; a code listed twice counts once)."""
    dense = torch.zeros(*codes.shape[:-1], vocab_size, device=codes.device)
    return dense.scatter_(-1, codes, 1.0)[..., 1:]


def code_ids(rows: Tensor, scores: Tensor, max_codes: int) -> Tensor:
    """Code ids [N, C'] (left-aligned, 0-padded, C' ≤ ``max_codes``) of the present codes of
    multi-hot ``rows`` [N, F]; a row with more than ``max_codes`` keeps its highest ``scores``."""
    ranked = torch.where(rows.bool(), scores, torch.full_like(scores, -1.0))
    values, indices = ranked.topk(min(max_codes, rows.shape[1]), dim=1)
    ids = torch.where(values >= 0, indices + 1, torch.zeros_like(indices))
    width = max(int((ids != 0).sum(dim=1).max()), 1) if ids.numel() else 1
    return ids[:, :width]


def concatenate_batches(first: Batch, second: Batch) -> Batch:
    """The patients of ``first`` then ``second``, each tensor zero-padded (False for masks)
    to the larger size along every dimension after the first. Keys of ``first`` only."""
    combined = {}
    for key, a in first.items():
        b = second.get(key)
        if not torch.is_tensor(a) or b is None or a.dim() != b.dim():
            continue
        shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]
        out = a.new_zeros((a.shape[0] + b.shape[0], *shape))
        out[(slice(0, a.shape[0]), *(slice(0, n) for n in a.shape[1:]))] = a
        out[(slice(a.shape[0], None), *(slice(0, n) for n in b.shape[1:]))] = b
        combined[key] = out
    return combined


class TabDDPMAugmentation(RiskPredictor):
    """TabDDPM (Kotelnikov et al., ICML 2023) as seed 000's augmentation baseline (Table 2,
    §6.2): a class-conditional diffusion model of multi-hot code vectors generates patients of
    each class, and a separate risk backbone (``LSTMBackbone`` under seed 000's recipe, §4.1)
    is trained on real + synthetic patients.

    Generator (TabDDPM's settings; see :class:`BinaryCodeDiffusion` and :class:`MLPDenoiser`):

    - How multi-hot codes are modelled: each code of the vocabulary (ids 1..V−1; [PAD] is never
      a feature, [UNK] is one like any code) is a binary categorical feature under multinomial
      diffusion with K = 2 (TabDDPM §4: categorical and binary features get multinomial
      diffusion, numerical ones Gaussian diffusion; there are no numerical features here).
      The MedDiffusion authors' ``models/tabddpm.py`` instead mixes the whole visit with a
      uniform over the vocabulary as a continuous input (``ᾱ x + (1 − ᾱ)/V``), with a learned
      step table and label table added, trains a bottleneck MLP (V → V/4 → V/8 → 64 and back,
      batch norm) with BCE against the multi-hot visit, and "generates" by one denoising pass
      over noised real training visits, never running the reverse chain from the prior; we
      follow TabDDPM.
    - T = 100 steps with the cosine schedule (TabDDPM tunes T ∈ {100, 1000}; its tuned
      binary-classification config for "adult" uses 100; cosine is its default scheduler),
      ancestral sampling over all T steps by default (``sampling_steps`` evenly spaced steps
      otherwise, exact for this process).
    - Class conditioning through the label embedding; the requested class of each synthetic
      patient is the class of the real patient it takes its visit layout from, so the
      synthetic classes follow the batch's (empirical) class distribution, as TabDDPM draws
      y from the training distribution.

    From rows to sequences (``row``):

    - ``"visit"`` (default, the MedDiffusion authors' way: their ``models/tabddpm.py``
      denoises each visit's multi-hot vector conditioned on the patient's label and keeps the
      patient's visits and times): a row is one real visit. A synthetic patient copies a real
      patient's layout (number of visits, ``time_delta``, ``time_to_end``, demographics) and
      class, and each of its visits is a fresh class-conditional sample. Visits are
      independent given the class (TabDDPM is a model of rows, not of sequences).
    - ``"patient"`` (TabDDPM's tabular view: one row per patient): a row is the union of a
      patient's codes over its visits; a synthetic patient is one visit holding the sampled
      codes at time 0.

    A synthetic visit keeps at most as many codes as the widest real visit of the batch
    (the DataModule's per-visit code cap), the most probable first.

    Training (one run, manual optimisation, two optimisers):

    - every step trains the denoiser on the real rows of the batch (``train/diffusion_loss``)
      with its own optimiser (TabDDPM: AdamW, lr 1e-3, weight decay 1e-5, the example config
      of its CONFIG_DESCRIPTION.md; constant lr, where TabDDPM anneals linearly over a known
      number of iterations) and no gradient clipping (neither TabDDPM nor the authors' code
      clips it);
    - the classifier trains with seed 000's recipe (Adam 1e-3, weight decay 1e-3,
      ReduceLROnPlateau on val/f1 stepped at each epoch end, gradient norm ≤
      ``gradient_clip_val`` = 1.0 applied by this module because Lightning refuses
      ``trainer.gradient_clip_val`` under manual optimisation: the yaml sets it to null);
    - for the first ``warmup_epochs`` epochs the classifier sees real patients only, so the
      generator is not random when its patients enter (TabDDPM trains the generator first);
      afterwards each step draws ``round(synthetic_ratio × B)`` synthetic patients (no
      gradient) and the classifier's loss ``train/ce`` is the CE over the B real and the
      synthetic patients together (one augmented data set, as TabDDPM's "real + synthetic"
      training). ``train/real_ce`` and ``train/synthetic_ce`` are logged beside it.
    - ``synthetic_ratio`` = 1.0: one synthetic patient per real patient, the augmentation
      volume of MedDiffusion itself (one synthetic sequence per real one, Eq. 3.14–3.15);
      TabDDPM tunes its sample count in {0.25, 0.5, 1, 2, 4, 8} × the training set.
      ``round(ratio × B)`` rounds half to even.
    - ``warmup_epochs`` = 2 is our choice (the paper and the authors' code are silent). The
      warm-up epochs are validated like any other, so model selection on val/f1 may pick one
      of them (a real-only LSTM) if synthetic patients never help.
    - Lightning counts each optimiser step in ``trainer.global_step``: two per batch here.
    - Cost: a step with synthetic patients runs ``sampling_steps`` (default T = 100) denoiser
      calls on the synthetic rows; on a CPU that dominates the step (about 17–29× an LSTM step
      at vocabulary 5,000, batch 32, on a busy 2-core CPU), so ``model.sampling_steps=10``
      is the CPU setting; on a GPU the calls are small.

    Args (beyond :class:`RiskPredictor`'s):
        denoiser: ``denoiser(n_features=..., n_classes=...)`` (a ``_partial_`` node); None:
            :class:`MLPDenoiser` at its defaults.
        denoiser_optimizer: ``denoiser_optimizer(params=...)``; None: AdamW(1e-3, wd 1e-5).
        diffusion_steps, noise_schedule: T and "cosine" | "linear".
        sampling_steps: reverse steps per sample (None: all T).
        row: "visit" or "patient" (above).
        synthetic_ratio: synthetic patients per real patient in a training step.
        warmup_epochs: epochs before synthetic patients are mixed in.
        gradient_clip_val: the classifier's gradient-norm clip (None or 0: none).
    """

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        denoiser: Callable[..., nn.Module] | None = None,
        denoiser_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        diffusion_steps: int = 100,
        noise_schedule: str = "cosine",
        sampling_steps: int | None = None,
        row: str = "visit",
        synthetic_ratio: float = 1.0,
        warmup_epochs: int = 2,
        gradient_clip_val: float | None = 1.0,
    ):
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience)
        if row not in ROWS:
            raise ValueError(f"row must be one of {ROWS}, got {row!r}")
        if synthetic_ratio < 0:
            raise ValueError(f"synthetic_ratio must be >= 0, got {synthetic_ratio}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.automatic_optimization = False
        self.row = row
        self.synthetic_ratio = synthetic_ratio
        self.warmup_epochs = warmup_epochs
        self.sampling_steps = sampling_steps
        self.gradient_clip_val = gradient_clip_val
        self.n_features = self.vocab_size - 1
        self.n_classes = self.backbone.output.out_features
        self.denoiser = (denoiser or MLPDenoiser)(n_features=self.n_features, n_classes=self.n_classes)
        self.diffusion = BinaryCodeDiffusion(diffusion_steps, noise_schedule)

    # --- the generator -----------------------------------------------------------------------

    def code_rows(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The generator's training rows [N, vocab_size − 1] (0/1) and their classes [N]:
        every real visit (``row="visit"``) or every patient's union of codes."""
        codes = multi_hot(batch["codes"], self.vocab_size)
        visit_mask = batch["visit_mask"]
        if self.row == "visit":
            return codes[visit_mask], batch["label"].unsqueeze(1).expand_as(visit_mask)[visit_mask]
        return (codes * visit_mask.unsqueeze(-1)).amax(dim=1), batch["label"]

    def diffusion_loss(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """TabDDPM's multinomial diffusion loss on the batch's rows."""
        rows, labels = self.code_rows(batch)
        return self.diffusion.loss(self.denoiser, rows, labels, generator)

    def _sample(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            return self.diffusion.sample(self.denoiser, labels, self.n_features, self.sampling_steps, generator)
        finally:
            self.denoiser.train(was_training)

    def sample_rows(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Synthetic multi-hot rows [N, vocab_size] (column 0, [PAD], always 0) of the
        requested classes ``labels`` [N]."""
        rows, _ = self._sample(labels, generator)
        return F.pad(rows, (1, 0))

    # --- synthetic patients ------------------------------------------------------------------

    def n_synthetic(self, n_real: int) -> int:
        """Synthetic patients drawn for a training step with ``n_real`` real ones."""
        return round(self.synthetic_ratio * n_real)

    @property
    def mixes_synthetic(self) -> bool:
        """Whether this training step adds synthetic patients (after the warm-up)."""
        return self.synthetic_ratio > 0 and self.current_epoch >= self.warmup_epochs

    @torch.no_grad()
    def synthetic_patients(self, batch: Batch, n: int | None = None,
                           generator: torch.Generator | None = None) -> Batch:
        """``n`` synthetic patients (default ``round(synthetic_ratio × B)``) in the batch
        format, each of the class of the real patient whose layout it copies (templates in a
        random order, each real patient used ⌊n/B⌋ or ⌈n/B⌉ times)."""
        labels = batch["label"]
        n_real = labels.shape[0]
        n = self.n_synthetic(n_real) if n is None else n
        order = torch.randperm(n_real, device=labels.device, generator=generator)
        templates = order.repeat(math.ceil(n / n_real))[:n]
        synthetic = {key: value[templates] for key, value in batch.items()
                     if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_real}
        if "subject_id" in synthetic:
            synthetic["subject_id"] = torch.full_like(synthetic["subject_id"], -1)
        if self.row == "visit":
            visit_mask = synthetic["visit_mask"]
            visit_labels = synthetic["label"].unsqueeze(1).expand_as(visit_mask)[visit_mask]
            rows, scores = self._sample(visit_labels, generator)
            ids = code_ids(rows, scores, max_codes=batch["codes"].shape[2])
            codes = ids.new_zeros((n, visit_mask.shape[1], ids.shape[1]))
            codes[visit_mask] = ids
        else:
            rows, scores = self._sample(synthetic["label"], generator)
            real_rows, _ = self.code_rows(batch)
            ids = code_ids(rows, scores, max_codes=max(int(real_rows.sum(dim=1).max()), 1))
            codes = ids.unsqueeze(1)
            zeros = torch.zeros(n, 1, device=labels.device)
            synthetic |= {"visit_mask": torch.ones(n, 1, dtype=torch.bool, device=labels.device),
                          "n_visits": torch.ones(n, dtype=torch.long, device=labels.device),
                          "time_delta": zeros, "time_to_end": zeros.clone()}
        synthetic["codes"] = codes
        return synthetic

    # --- training ----------------------------------------------------------------------------

    def training_loss(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"diffusion_loss", "ce", ["real_ce", "synthetic_ce"], <backbone terms>, "loss"}``:
        ``loss = ce + backbone terms + diffusion_loss``. The two parameter sets are disjoint and
        synthetic patients carry no gradient, so one backward gives each optimiser its own loss's
        gradient."""
        n_real = batch["label"].shape[0]
        losses = {"diffusion_loss": self.diffusion_loss(batch, generator)}
        classifier_batch = batch
        if self.mixes_synthetic and self.n_synthetic(n_real) > 0:
            classifier_batch = concatenate_batches(batch, self.synthetic_patients(batch, generator=generator))
        per_patient = F.cross_entropy(self.backbone(classifier_batch), classifier_batch["label"], reduction="none")
        losses["ce"] = per_patient.mean()
        if classifier_batch is not batch:
            losses["real_ce"] = per_patient[:n_real].detach().mean()
            losses["synthetic_ce"] = per_patient[n_real:].detach().mean()
        auxiliary = self.backbone.auxiliary_losses(classifier_batch)
        losses |= auxiliary
        losses["loss"] = losses["ce"] + sum(auxiliary.values()) + losses["diffusion_loss"]
        return losses

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        classifier_optimizer, denoiser_optimizer = self.optimizers()
        losses = self.training_loss(batch)
        classifier_optimizer.zero_grad()
        denoiser_optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        if self.gradient_clip_val:
            self.clip_gradients(classifier_optimizer, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        classifier_optimizer.step()
        denoiser_optimizer.step()
        batch_size = batch["label"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, prog_bar=name == "loss",
                     batch_size=batch_size)
        return losses["loss"].detach()

    def configure_optimizers(self):
        """[classifier (seed 000's recipe, with its scheduler), denoiser (TabDDPM's AdamW)]."""
        classifier_optimizer = self.hparams.optimizer(params=self.backbone.parameters())
        make_denoiser_optimizer = self.hparams.denoiser_optimizer or functools.partial(
            torch.optim.AdamW, lr=1e-3, weight_decay=1e-5)
        denoiser_optimizer = make_denoiser_optimizer(params=self.denoiser.parameters())
        if self.hparams.scheduler is None:
            return [classifier_optimizer, denoiser_optimizer]
        scheduler = self.hparams.scheduler(optimizer=classifier_optimizer)
        return [{"optimizer": classifier_optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}},
                {"optimizer": denoiser_optimizer}]
