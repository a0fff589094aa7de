"""MedDiffusion (seed 000): risk prediction with diffusion augmentation in visit-embedding space.

``model=meddiffusion`` is this module around the LSTM backbone of
:mod:`ehrlab.models.risk.lstm`; any other :class:`~ehrlab.models.risk.base.RiskBackbone`
gets its ``+diffusion`` variant (Appendix 6.4, Figure 3) from the ``augment`` config group:
``model=retain augment=diffusion`` keeps the backbone node and sets this class and the
paper's diffusion hyperparameters (conf/augment/diffusion.yaml).

Decisions where the paper is silent or differs from the authors' code
(see also :mod:`ehrlab.models.risk.diffusion` and :mod:`ehrlab.models.risk.denoiser`):

- Diffusion: N = 1000 steps, linear β 1e-4 → 0.02, one random step per patient, one
  denoiser call per training step, no reverse chain; synthetic ``e' = ê + (ε − ε̂)``
  (authors' code).
- Step-wise attention on the clean ``e_k`` and ``W_h h_{k−1}`` (Eq. 3.11 applied once, as
  Eq. 3.18 and the code diffuse ``ê_{k,0}``), with the paper's per-visit ``e_k``.
- Denoiser: a single-resolution residual 1-D conv net (128 channels, 2 blocks) by default,
  because the authors' 1-D UNet (128 × (1,2,4,8)) costs several LSTM steps on a CPU; the
  UNet is available as ``UNet1dDenoiser``. Both are causal along the visits; the authors'
  UNet treats the visits as channels and sees every visit (:mod:`~ehrlab.models.risk.denoiser`).
- What a synthetic visit depends on: ``e'_k = ê_k + ε_k − ε̂_k`` with
  ``ê_k = γ_e e_k + γ_h W_h h_{k−1}`` (Eq. 3.11; ``h_0 = 0``, the hidden states shifted by
  one visit), ``ε_k`` drawn independently of the data, the step n drawn per patient, and
  ``ε̂_k = ε_θ(x_{n,1..k}, n)`` from the causal denoiser (Eq. 3.18), where
  ``x_{n,j} = √ᾱ_n ê_j + √(1−ᾱ_n) ε_j``. So e'_k depends on visits 1..k only: on e_k and
  on h_{k−1}, which summarises e_1..e_{k−1} (the relaxation of Eq. 3.5–3.8's conditioning
  on e_{1..k−1} to h_{k−1}, Eq. 3.9–3.10), plus, inside the denoiser, the noisy ê of
  earlier visits (eight back for the default), also information from before visit k. No
  code of a later visit reaches it. The last visit's date enters only as Eq. 3.3 defines
  it: e_k, real and synthetic alike, embeds Δt_k = t_K − t_k (the batch's per-visit
  ``time_to_end``). The synthetic prediction ŷ' (Eq. 3.14) reads h'_K and so the whole
  synthetic sequence, as ŷ reads the whole real one.
- Loss (Eq. 3.15): ``L = CE(y, ŷ) + λ_S CE(y, ŷ') + λ_D L_Diffusion`` with batch means
  (the paper writes sums over patients), λ_S = 0.5, λ_D = 0.1. ``λ_S = 0`` (AS-3) skips
  the synthetic forward pass altogether; the denoiser is then trained by L_Diffusion only.
- Evaluation: predictions come from the real sequence only (§6.4); the synthetic branch
  exists only in training.
- Analyses (§4.6): the synthetic-code table (Table 5) and the t-SNE of real and generated
  hidden states (Figure 2) live in :mod:`ehrlab.evaluation.risk_analyses`, which reads this
  model through :meth:`MedDiffusion.augmented_sequences`, its backbone and the
  ``analysis_patients`` / ``tsne_patients`` settings; :attr:`MedDiffusion.analyses` names them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor
from ehrlab.models.risk.diffusion import DiffusionAugmentation


class AugmentedSequences(NamedTuple):
    """One batch's real and synthetic sequences, as :meth:`MedDiffusion.augmented_sequences` draws them."""

    visit_embeddings: Tensor  # e_k [B, V, visit_dim]
    hidden_states: Tensor  # h_k [B, V, hidden_dim]
    synthetic_visits: Tensor  # e'_k [B, V, visit_dim]


class MedDiffusion(RiskPredictor):
    """Risk predictor trained with diffusion-generated visit sequences (Eq. 3.1–3.18).

    Args (beyond :class:`RiskPredictor`'s):
        lambda_synthetic: λ_S, weight of the CE on the synthetic sequence (0.5; 0 is AS-3).
        lambda_diffusion: λ_D, weight of the noise-prediction loss (0.1).
        attention_dim: d_b of Eq. 3.11 (64).
        diffusion_steps, beta_start, beta_end: the noise schedule (1000, 1e-4, 0.02).
        use_history: condition on h_{k−1} (False is AS-1).
        attention: "learned" (Eq. 3.11) or "equal" (AS-2: γ = 0.5/0.5).
        denoiser: ``denoiser(visit_dim=...)`` builds ε_θ (a ``_partial_`` node); None: the
            default ``ConvDenoiser``.
        analysis_patients: training patients the §4.6 analyses read (synthetic-code table);
            ``tsne_patients`` of them enter the t-SNE plot.
    """

    #: seed 000's analyses this model supports (run by ehrlab.evaluation.risk_analyses)
    analyses = ("synthetic_codes", "hidden_state_tsne")

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        lambda_synthetic: float = 0.5,
        lambda_diffusion: float = 0.1,
        attention_dim: int = 64,
        diffusion_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        use_history: bool = True,
        attention: str = "learned",
        denoiser: Callable[..., nn.Module] | None = None,
        analysis_patients: int = 2000,
        tsne_patients: int = 200,
    ):
        # The base's save_hyperparameters() also records this subclass's arguments.
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience)
        self.lambda_synthetic = lambda_synthetic
        self.lambda_diffusion = lambda_diffusion
        self.analysis_patients = analysis_patients
        self.tsne_patients = tsne_patients
        self.augmentation = DiffusionAugmentation(
            visit_dim=self.backbone.visit_dim,
            hidden_dim=self.backbone.hidden_dim,
            attention_dim=attention_dim,
            n_steps=diffusion_steps,
            beta_start=beta_start,
            beta_end=beta_end,
            use_history=use_history,
            attention=attention,
            denoiser=denoiser,
        )

    def training_loss(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 3.15: ``L = L_LSTM + λ_S L'_LSTM + λ_D L_Diffusion`` and its named parts."""
        labels = batch["label"]
        visit_embeddings = self.backbone.embed_visits(batch)
        hidden_states = self.backbone.encode(visit_embeddings, batch)
        real_ce = F.cross_entropy(self.backbone.classify(hidden_states, batch), labels)  # Eq. 3.16
        auxiliary = self.backbone.auxiliary_losses(batch)  # of the real sequence, before the synthetic one
        augmentation = self.augmentation(visit_embeddings, hidden_states, batch["visit_mask"], generator=generator)

        losses = {"ce": real_ce, **auxiliary, "diffusion_loss": augmentation.diffusion_loss}
        loss = real_ce + sum(auxiliary.values()) + self.lambda_diffusion * augmentation.diffusion_loss
        if self.lambda_synthetic > 0:
            synthetic_hidden = self.backbone.encode(augmentation.synthetic_visits, batch)
            synthetic_ce = F.cross_entropy(self.backbone.classify(synthetic_hidden, batch), labels)  # Eq. 3.14
            losses["synthetic_ce"] = synthetic_ce
            loss = loss + self.lambda_synthetic * synthetic_ce
        losses["loss"] = loss
        return losses

    # --- what seed 000's analyses read (ehrlab.evaluation.risk_analyses) -------------------

    def augmented_sequences(self, batch: Batch, generator: torch.Generator | None = None) -> AugmentedSequences:
        """``e_k``, ``h_k`` and the synthetic ``e'_k`` of one batch, drawn as in training
        (Eq. 3.11–3.18); what the §4.6 analyses (Table 5, Figure 2) look at."""
        visit_embeddings = self.backbone.embed_visits(batch)
        hidden_states = self.backbone.encode(visit_embeddings, batch)
        synthetic = self.augmentation(visit_embeddings, hidden_states, batch["visit_mask"], generator=generator).synthetic_visits
        return AugmentedSequences(visit_embeddings, hidden_states, synthetic)
