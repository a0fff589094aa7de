"""Diffusion-based augmentation of visit embeddings (seed 000, §3.3, Eq. 3.5–3.12 and 3.18).

:class:`DiffusionAugmentation` is a plain ``nn.Module`` that needs only a backbone's visit
embeddings ``e_k`` and hidden states ``h_k``; it returns synthetic visit embeddings ``e'_k``
and the diffusion loss. :class:`~ehrlab.models.risk.meddiffusion.MedDiffusion` runs ``e'``
back through the backbone (Appendix 6.4: any backbone gets a ``+diffusion`` variant).

How one training step forms the synthetic sequence (the paper is silent; the authors'
public code does this, and so do we):

1. Step-wise attention (Eq. 3.11): ``u_k = W_h h_{k−1}`` (``h_0 = 0``),
   ``[γ_e, γ_h] = Softmax(W_a tanh(W_b [e_k; u_k] + b_b))``, ``ê_k = γ_e e_k + γ_h u_k``.
   The paper writes the attention at every diffusion step n on ``e_{k,n}``; the code (and
   Eq. 3.17–3.18, which diffuse ``ê_{k,0}``) apply it once to the clean ``e_k``. We use the
   paper's ``e_k`` for visit k (the public code reuses the first visit's e for every k,
   which looks like a bug).
2. Forward process in closed form (DDPM Eq. 4, the marginal of Eq. 3.6): one step
   ``n ~ U{1..N}`` per patient, shared by its visits, ``x_n = √ᾱ_n ê + √(1−ᾱ_n) ε``.
   N = 1000, β linear from 1e-4 to 0.02 (the authors' and DDPM's values).
3. One denoiser call ``ε̂ = ε_θ(x_n, n)``; ``L_Diffusion = ‖ε − ε̂‖²`` (Eq. 3.18), averaged
   over real visits and dimensions (the paper sums over k; the mean keeps λ_D = 0.1
   meaningful across sequence lengths, as in the authors' MSE).
4. No reverse chain during training: ``e' = ê + (ε − ε̂)``, the clean embedding perturbed
   by the denoiser's residual error. (The exact one-step estimate
   ``x̂_0 = ê + √((1−ᾱ_n)/ᾱ_n)(ε − ε̂)`` multiplies that residual by up to ~160 at large n,
   which would swamp the classifier; the authors' unit scale is what their numbers use.)

Ablations (§4.4): ``use_history=False`` is AS-1 (``ê_k = e_k``, no h_{k−1}, no attention);
``attention="equal"`` is AS-2 (``γ_e = γ_h = 0.5``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.denoiser import ConvDenoiser

ATTENTION_MODES = ("learned", "equal")


def linear_beta_schedule(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_1..β_N linearly spaced (DDPM §4), float64 for an accurate cumulative product."""
    return torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)


class NoiseSchedule(nn.Module):
    """β_n, ᾱ_n = Π_{i≤n}(1 − β_i) and the closed-form forward sample (marginal of Eq. 3.6).

    Steps are 0-based indices here: ``steps = 0`` is the paper's n = 1.
    """

    def __init__(self, n_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = linear_beta_schedule(n_steps, beta_start, beta_end)
        self.n_steps = n_steps
        self.register_buffer("betas", betas.float())
        self.register_buffer("alpha_bars", torch.cumprod(1.0 - betas, dim=0).float())

    def add_noise(self, clean: Tensor, noise: Tensor, steps: Tensor) -> Tensor:
        """``x_n = √ᾱ_n x_0 + √(1−ᾱ_n) ε`` with one step per patient (``steps`` [B])."""
        alpha_bar = self.alpha_bars[steps].view(-1, *([1] * (clean.dim() - 1)))
        return alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise


class StepwiseAttention(nn.Module):
    """Eq. 3.11: weigh the visit embedding against the projected previous hidden state.

    ``mode="equal"`` fixes ``γ_e = γ_h = 0.5`` (AS-2) and has no W_a, W_b.
    Returns ``ê_k`` [B, V, d_e] and the weights ``[γ_e, γ_h]`` [B, V, 2].
    """

    def __init__(self, visit_dim: int, hidden_dim: int, attention_dim: int = 64, mode: str = "learned"):
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self.mode = mode
        self.history_projection = nn.Linear(hidden_dim, visit_dim, bias=False)  # W_h
        if mode == "learned":
            self.score_hidden = nn.Linear(2 * visit_dim, attention_dim)  # W_b, b_b
            self.score_output = nn.Linear(attention_dim, 2, bias=False)  # W_a

    def forward(self, visit_embeddings: Tensor, previous_hidden: Tensor) -> tuple[Tensor, Tensor]:
        history = self.history_projection(previous_hidden)
        if self.mode == "learned":
            scores = self.score_output(torch.tanh(self.score_hidden(torch.cat([visit_embeddings, history], dim=-1))))
            weights = scores.softmax(dim=-1)
        else:
            weights = visit_embeddings.new_full((*visit_embeddings.shape[:-1], 2), 0.5)
        aggregated = weights[..., :1] * visit_embeddings + weights[..., 1:] * history
        return aggregated, weights


@dataclass
class AugmentationOutput:
    synthetic_visits: Tensor  # e'_k [B, V, d_e], zero at padding visits
    diffusion_loss: Tensor  # scalar, Eq. 3.18 (masked mean)
    attention_weights: Tensor  # [γ_e, γ_h] per visit [B, V, 2]
    aggregated_visits: Tensor  # ê_k [B, V, d_e], the diffused x_0


class DiffusionAugmentation(nn.Module):
    """Synthetic visit embeddings from (e_k, h_{k−1}) by one DDPM training step (§3.3).

    Args:
        visit_dim, hidden_dim: the wrapped backbone's d_e and d_h.
        attention_dim: d_b of Eq. 3.11 (64 in §4.1).
        n_steps, beta_start, beta_end: the linear noise schedule (1000, 1e-4, 0.02).
        use_history: False for AS-1 (no h_{k−1}).
        attention: "learned" (Eq. 3.11) or "equal" (AS-2).
        denoiser: ``denoiser(visit_dim=...)`` builds ε_θ; default :class:`ConvDenoiser`.
    """

    def __init__(
        self,
        visit_dim: int,
        hidden_dim: int,
        attention_dim: int = 64,
        n_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        use_history: bool = True,
        attention: str = "learned",
        denoiser: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.schedule = NoiseSchedule(n_steps, beta_start, beta_end)
        self.use_history = use_history
        self.attention = StepwiseAttention(visit_dim, hidden_dim, attention_dim, attention) if use_history else None
        self.denoiser = (denoiser or ConvDenoiser)(visit_dim=visit_dim)

    def forward(
        self,
        visit_embeddings: Tensor,
        hidden_states: Tensor,
        visit_mask: Tensor,
        generator: torch.Generator | None = None,
    ) -> AugmentationOutput:
        keep = visit_mask.unsqueeze(-1).to(visit_embeddings.dtype)
        if self.attention is not None:
            # h_{k−1} for visit k; the first visit has no history (h_0 = 0).
            previous_hidden = torch.cat(
                [torch.zeros_like(hidden_states[:, :1]), hidden_states[:, :-1]], dim=1
            )
            aggregated, weights = self.attention(visit_embeddings, previous_hidden)
        else:
            aggregated = visit_embeddings
            # AS-1: the visit alone, i.e. γ_e = 1, γ_h = 0.
            weights = F.one_hot(torch.zeros_like(visit_mask, dtype=torch.long), 2).to(visit_embeddings.dtype)
        aggregated = aggregated * keep

        n_patients = visit_embeddings.shape[0]
        device = visit_embeddings.device
        steps = torch.randint(0, self.schedule.n_steps, (n_patients,), device=device, generator=generator)
        noise = torch.randn(aggregated.shape, device=device, dtype=aggregated.dtype, generator=generator) * keep
        noisy = self.schedule.add_noise(aggregated, noise, steps)
        predicted_noise = self.denoiser(noisy, steps, visit_mask)

        residual = (noise - predicted_noise) * keep
        n_values = keep.sum().clamp(min=1.0) * visit_embeddings.shape[-1]
        diffusion_loss = residual.pow(2).sum() / n_values
        return AugmentationOutput(
            synthetic_visits=aggregated + residual,
            diffusion_loss=diffusion_loss,
            attention_weights=weights,
            aggregated_visits=aggregated,
        )
