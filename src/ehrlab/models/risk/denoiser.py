"""Noise-prediction networks ε_θ(x_n, n) over a patient's sequence of visit embeddings.

The paper leaves ε_θ unspecified (Eq. 3.18). The authors' code
(``zhongyuan1996/ddim_medskim``, ``models/LSTM_ddim.py`` with ``models/unet.py``) builds
``UNetModel(in_channels=50, model_channels=128, out_channels=50, num_res_blocks=2)``, a 1-D
UNet with channel multipliers (1, 2, 4, 8) and a sinusoidal step embedding, and feeds it
``x_n`` of shape [B, 50 visits, 256]: ``Conv1d`` reads axis 1 as channels, so their visits
are the channels and the convolutions, down- and up-sampling run along the embedding axis.
Its first convolution mixes all 50 visit channels, so every predicted ε̂_k depends on every
visit of the sequence, later ones included, and the number of visits is fixed at 50.

Ours run along the visit axis instead (the embedding dimensions are the channels) and are
**causal**: ε̂_k depends on ``x_{n,1..k}`` and the step n only, never on a later visit.
That is what Eq. 3.5–3.10 ask of the generation of visit k (conditioned on
``e_{1..k−1}``, relaxed to ``h_{k−1}`` in Eq. 3.9); a denoiser that read visit k+1 would
let the synthetic visit k copy information the real visit k does not have. Every
convolution is left-padded (kernel 3 sees visits k−2, k−1, k), so padding visits, which
come after the real ones, cannot reach a real visit either. The authors' layout is not
offered: mixing all visits is the point of its visit channels, and it ties the network to
one sequence length.

- :class:`ConvDenoiser` (default): residual blocks at a single resolution (128 channels,
  two blocks of two kernel-3 convolutions, so visit k sees visits k−8..k), a fraction of
  the UNet's cost (bench/bench_risk_training.py).
- :class:`UNet1dDenoiser`: sized like the authors' UNet (``model.denoiser._target_=
  ...UNet1dDenoiser``), with causal down- and up-sampling along the visits.

Both take ``(noisy_visits [B, V, d_e], steps [B], visit_mask [B, V])`` and return the
predicted noise [B, V, d_e]. Padding visits are also zeroed before every convolution and
normalisation is per visit (LayerNorm, not GroupNorm over the sequence), so neither the
number nor the contents of padding visits influence real ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_step_embedding(steps: Tensor, dim: int) -> Tensor:
    """Transformer-style embedding of integer diffusion steps [B] → [B, dim] (DDPM §4)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=steps.device) / half)
    angles = steps.float().unsqueeze(1) * frequencies.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class StepEmbedding(nn.Module):
    """Sinusoidal step embedding followed by a two-layer MLP, as in DDPM's UNet."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, steps: Tensor) -> Tensor:
        return self.mlp(sinusoidal_step_embedding(steps, self.dim))


class ResidualBlock1d(nn.Module):
    """(LayerNorm → SiLU → Conv1d) twice with the step embedding added in between, plus a skip.

    Works on [B, L, C] tensors; ``mask`` [B, L] zeroes padding positions before each conv.
    Both convolutions are causal along L (see :func:`_causal_conv_over_visits`).
    """

    def __init__(self, in_channels: int, out_channels: int, step_dim: int, kernel_size: int = 3):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size)
        self.step_projection = nn.Linear(step_dim, out_channels)
        self.norm2 = nn.LayerNorm(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size)
        self.skip = nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, step_embedding: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        hidden = _causal_conv_over_visits(self.conv1, F.silu(self.norm1(x)) * keep)
        hidden = hidden + self.step_projection(step_embedding).unsqueeze(1)
        hidden = _causal_conv_over_visits(self.conv2, F.silu(self.norm2(hidden)) * keep)
        return (self.skip(x) + hidden) * keep


def _causal_conv_over_visits(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv`` (built without padding) over the visit axis of x [B, L, C], left-padded by
    ``kernel_size − 1`` zeros: output j reads inputs ``j·stride − (kernel_size − 1) ..
    j·stride``, never a later one. With stride 1 the length is kept; with stride 2 output
    j summarises visits up to 2j."""
    left_padding = conv.kernel_size[0] - 1
    return conv(F.pad(x.transpose(1, 2), (left_padding, 0))).transpose(1, 2)


class ConvDenoiser(nn.Module):
    """Default ε_θ: linear in → ``n_blocks`` causal residual conv blocks (one resolution) →
    linear out; ε̂_k sees visits ``k − 2·n_blocks·(kernel_size − 1) .. k``."""

    def __init__(self, visit_dim: int, channels: int = 128, n_blocks: int = 2, kernel_size: int = 3):
        super().__init__()
        self.step_embedding = StepEmbedding(channels)
        self.input = nn.Linear(visit_dim, channels)
        self.blocks = nn.ModuleList(
            ResidualBlock1d(channels, channels, channels, kernel_size) for _ in range(n_blocks)
        )
        self.output = nn.Sequential(nn.LayerNorm(channels), nn.SiLU(), nn.Linear(channels, visit_dim))

    def forward(self, noisy_visits: Tensor, steps: Tensor, visit_mask: Tensor) -> Tensor:
        step_embedding = self.step_embedding(steps)
        hidden = self.input(noisy_visits) * visit_mask.unsqueeze(-1)
        for block in self.blocks:
            hidden = block(hidden, step_embedding, visit_mask)
        return self.output(hidden) * visit_mask.unsqueeze(-1)


class UNet1dDenoiser(nn.Module):
    """ε_θ sized like the authors' 1-D UNet: channels ``channels × channel_mult`` per level,
    ``n_res_blocks`` blocks per level, skip connections by concatenation, but over the visit
    axis and causal. Attention blocks of the image UNet are left out (sequences are ≤ 50
    visits).

    Causality across resolutions: position j of level l stands for visit ``j·2^l`` and
    depends on visits ≤ ``j·2^l`` only. Downsampling is a causal stride-2 convolution
    (coarse j reads fine 2j−2, 2j−1, 2j); upsampling repeats coarse j into fine 2j and
    2j+1, both at or after visit ``j·2^l``, then applies a causal convolution. The sequence
    is zero-padded at the end to a multiple of 2^(levels−1); a coarse position is real iff
    the visit it stands for is (``mask[:, ::2]``), so padding stays inert at every level.
    """

    def __init__(
        self,
        visit_dim: int,
        channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 4, 8),
        n_res_blocks: int = 2,
    ):
        super().__init__()
        self.n_levels = len(channel_mult)
        self.step_embedding = StepEmbedding(channels)
        self.input = nn.Linear(visit_dim, channels)
        level_channels = [channels * m for m in channel_mult]

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_channels = []
        current = channels
        for level, out_channels in enumerate(level_channels):
            blocks = nn.ModuleList()
            for _ in range(n_res_blocks):
                blocks.append(ResidualBlock1d(current, out_channels, channels))
                current = out_channels
            self.down_blocks.append(blocks)
            skip_channels.append(current)
            if level < self.n_levels - 1:
                self.downsamples.append(nn.Conv1d(current, current, 3, stride=2))
        self.middle = ResidualBlock1d(current, current, channels)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(self.n_levels)):
            out_channels = level_channels[level]
            blocks = nn.ModuleList()
            for block_index in range(n_res_blocks):
                in_channels = current + (skip_channels[level] if block_index == 0 else 0)
                blocks.append(ResidualBlock1d(in_channels, out_channels, channels))
                current = out_channels
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(nn.Conv1d(current, current, 3))
        self.output = nn.Sequential(nn.LayerNorm(current), nn.SiLU(), nn.Linear(current, visit_dim))

    def forward(self, noisy_visits: Tensor, steps: Tensor, visit_mask: Tensor) -> Tensor:
        n_visits = noisy_visits.shape[1]
        multiple = 2 ** (self.n_levels - 1)
        padded_length = math.ceil(n_visits / multiple) * multiple
        pad = padded_length - n_visits
        x = F.pad(noisy_visits, (0, 0, 0, pad))
        mask = F.pad(visit_mask.float(), (0, pad))

        step_embedding = self.step_embedding(steps)
        hidden = self.input(x) * mask.unsqueeze(-1)
        skips, masks = [], []
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                hidden = block(hidden, step_embedding, mask)
            skips.append(hidden)
            masks.append(mask)
            if level < self.n_levels - 1:
                hidden = _causal_conv_over_visits(self.downsamples[level], hidden)
                mask = mask[:, ::2]
                hidden = hidden * mask.unsqueeze(-1)
        hidden = self.middle(hidden, step_embedding, mask)
        for up_index, blocks in enumerate(self.up_blocks):
            level = self.n_levels - 1 - up_index
            mask = masks[level]
            hidden = torch.cat([hidden, skips[level]], dim=-1)
            for block in blocks:
                hidden = block(hidden, step_embedding, mask)
            if level > 0:
                hidden = hidden.repeat_interleave(2, dim=1)
                hidden = _causal_conv_over_visits(self.upsamples[up_index], hidden) * masks[level - 1].unsqueeze(-1)
        return (self.output(hidden) * mask.unsqueeze(-1))[:, :n_visits]
