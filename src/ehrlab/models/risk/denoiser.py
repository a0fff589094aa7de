"""Noise-prediction networks ε_θ(x_n, n) over a patient's sequence of visit embeddings.

The paper leaves ε_θ unspecified (Eq. 3.18); the authors' code uses a 1-D UNet over the
visit axis (model channels 128, channel multipliers 1,2,4,8, two residual blocks per level,
sinusoidal step embedding). On a CPU that UNet alone costs several LSTM steps, so the
default here is :class:`ConvDenoiser`, the same residual blocks at a single resolution
(128 channels, two blocks, kernel 3 along visits): each visit still sees its neighbours, at
a fraction of the cost (bench/bench_risk_training.py). :class:`UNet1dDenoiser` is the
paper-code-sized option (``model.denoiser._target_=...UNet1dDenoiser``).

Both take ``(noisy_visits [B, V, d_e], steps [B], visit_mask [B, V])`` and return the
predicted noise [B, V, d_e]. Padding visits are zeroed before every convolution and
normalisation is per visit (LayerNorm, not GroupNorm over the sequence), so padding visits
never influence real ones.
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
    """

    def __init__(self, in_channels: int, out_channels: int, step_dim: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.norm1 = nn.LayerNorm(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.step_projection = nn.Linear(step_dim, out_channels)
        self.norm2 = nn.LayerNorm(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding)
        self.skip = nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, step_embedding: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        hidden = _conv_over_visits(self.conv1, F.silu(self.norm1(x)) * keep)
        hidden = hidden + self.step_projection(step_embedding).unsqueeze(1)
        hidden = _conv_over_visits(self.conv2, F.silu(self.norm2(hidden)) * keep)
        return (self.skip(x) + hidden) * keep


def _conv_over_visits(conv: nn.Conv1d, x: Tensor) -> Tensor:
    return conv(x.transpose(1, 2)).transpose(1, 2)


class ConvDenoiser(nn.Module):
    """Default ε_θ: linear in → ``n_blocks`` residual conv blocks (one resolution) → linear out."""

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
    ``n_res_blocks`` blocks per level, stride-2 down/up-sampling along the visit axis, skip
    connections by concatenation. The sequence is zero-padded to a multiple of
    2^(levels−1); the mask is max-pooled with it so padding stays inert at every level.
    Attention blocks of the image UNet are left out (sequences are ≤ 50 visits).
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
                self.downsamples.append(nn.Conv1d(current, current, 3, stride=2, padding=1))
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
                self.upsamples.append(nn.Conv1d(current, current, 3, padding=1))
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
                hidden = _conv_over_visits(self.downsamples[level], hidden)
                mask = F.max_pool1d(mask.unsqueeze(1), 2).squeeze(1)
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
                hidden = _conv_over_visits(self.upsamples[up_index], hidden) * masks[level - 1].unsqueeze(-1)
        return (self.output(hidden) * mask.unsqueeze(-1))[:, :n_visits]
