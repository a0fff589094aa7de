"""Building blocks shared by the risk backbones (masking, positions, the transformer encoder
layer, MedDiffusion-style time embeddings, visit reversal and packed RNNs).

Each block here is used by at least two backbones; what is specific to one paper stays in its
module. Moving a block here changed no backbone's output (checked against the previous weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ehrlab.models.risk.base import last_visit

# HiTANet's time feature, MedDiffusion's Eq. 3.3 (which borrows it) and the MedSkim authors' code
# scale the gap by 180 days (roughly the six-month horizon of the cohorts).
TIME_SCALE_DAYS = 180.0


# --- masking and pooling ---------------------------------------------------------------------


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1, zero_empty_rows: bool = False) -> Tensor:
    """Softmax of ``scores`` over ``dim`` where ``mask`` (bool, broadcastable) is True; masked entries get weight 0.

    ``finfo.min`` instead of ``-inf``: ``exp`` of a masked entry underflows to exactly 0 whenever a row has an
    allowed entry, and a row with none gets finite uniform weights instead of NaN. ``zero_empty_rows`` multiplies
    by ``mask`` so that such a row is all 0 instead (Dipole's one-visit patients have no earlier visit to weigh);
    rows with an allowed entry are unchanged by it.
    """
    weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=dim)
    return weights * mask if zero_empty_rows else weights


READOUTS = ("last", "max")


def read_out(hidden_states: Tensor, visit_mask: Tensor, readout: str) -> Tensor:
    """[B, H] patient summary of ``hidden_states`` [B, V, H]: the last real visit's state
    (``"last"``) or the max over real visits (``"max"``, the MedDiffusion authors' pooling)."""
    return last_visit(hidden_states, visit_mask) if readout == "last" else max_over_real_visits(hidden_states, visit_mask)


def max_over_real_visits(hidden_states: Tensor, visit_mask: Tensor) -> Tensor:
    """[B, H] max-pool of ``hidden_states`` [B, V, H] over each patient's real visits (padding masked with ``finfo.min``)."""
    mask = visit_mask.unsqueeze(-1)
    return hidden_states.masked_fill(~mask, torch.finfo(hidden_states.dtype).min).amax(dim=1)


# --- visit embeddings --------------------------------------------------------------------------


def sum_code_embeddings(code_embedding: nn.EmbeddingBag, codes: Tensor) -> Tensor:
    """[B, V, d] per-visit sum of code embedding rows of ``codes`` [B, V, C] (an ``EmbeddingBag`` in
    ``mode="sum"`` with ``padding_idx=0``: padding codes contribute nothing), i.e. ``W x_k`` for the multi-hot visit."""
    n_patients, n_visits, n_codes = codes.shape
    return code_embedding(codes.reshape(-1, n_codes)).reshape(n_patients, n_visits, -1)


# --- time embedding (MedDiffusion Eq. 3.3, HiTANet, MedSkim) -------------------------------------


class TimeFeature(nn.Module):
    """The time feature of a gap Δ (days), [..., time_dim], in one of two forms the sources use.

    - ``square_inside=True`` (HiTANet; MedDiffusion Eq. 3.3): ``1 − tanh((W_f Δ/180 + b_f)²)``. It is 1 where
      the affine map crosses 0 and decays to 0 away from it, so each unit learns a window of gaps it responds to.
    - ``square_inside=False`` (the MedSkim authors' code): ``1 − tanh(W_f Δ/180 + b_f)²`` = sech², also a bump
      around the zero of the affine map but with a different profile. Kept separate because it is what that
      source computes, not a rewriting of the other form.
    """

    def __init__(self, time_dim: int, square_inside: bool = True):
        super().__init__()
        self.square_inside = square_inside
        self.linear = nn.Linear(1, time_dim)  # W_f, b_f

    def forward(self, gap_days: Tensor) -> Tensor:
        affine = self.linear((gap_days / TIME_SCALE_DAYS).unsqueeze(-1))
        return 1.0 - torch.tanh(affine**2) if self.square_inside else 1.0 - torch.tanh(affine) ** 2


class TimeEmbedding(nn.Module):
    """``W_t f(Δ) + b_t`` [..., out_dim] with ``f`` the :class:`TimeFeature` of the gap Δ in days (MedDiffusion
    Eq. 3.3 with the default ``square_inside=True``; see :class:`TimeFeature` for MedSkim's form)."""

    def __init__(self, time_dim: int, out_dim: int, square_inside: bool = True):
        super().__init__()
        self.time_dim = time_dim
        self.feature = TimeFeature(time_dim, square_inside)  # W_f, b_f
        self.projection = nn.Linear(time_dim, out_dim)  # W_t, b_t

    def forward(self, gap_days: Tensor) -> Tensor:
        return self.projection(self.feature(gap_days))


# --- transformer pieces (SAnD, HiTANet, LSAN) ---------------------------------------------------


def sinusoidal_positions(n_positions: int, dim: int, device=None, dtype=torch.float32, first: int = 0) -> Tensor:
    """[n_positions, dim] transformer encodings (Vaswani et al., 2017, §3.5) of positions ``first..first+n−1``:
    ``PE[p, 2i] = sin(p / 10000^{2i/dim})``, ``PE[p, 2i+1] = cos(p / 10000^{2i/dim})``.

    A position is a visit's index: real visits come first, so a patient's encodings do not depend on how much
    padding follows them. SAnD and HiTANet count from 0, LSAN (as the MedDiffusion authors' LSAN) from 1.
    """
    positions = torch.arange(first, first + n_positions, device=device, dtype=torch.float32)[:, None]
    frequencies = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angles = positions * frequencies  # [n, ceil(dim / 2)]
    encoding = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(start_dim=1)[:, :dim]
    return encoding.to(dtype)


def visit_attention_mask(visit_mask: Tensor, causal: bool, window: int | None = None) -> Tensor:
    """bool [B, V, V]: query visit i may attend to key visit j iff j is a real visit and, if
    ``causal``, ``j ≤ i`` (and ``i − j < window`` when a window is given).

    Every query row keeps the patient's first visit (always real) unless a window excludes
    it, and a row with nothing allowed (a padding query far past the end) still gets finite,
    uniform weights from :func:`masked_softmax`; padding queries never feed real outputs.
    """
    allowed = visit_mask[:, None, :].expand(-1, visit_mask.shape[1], -1)
    if causal:
        index = torch.arange(visit_mask.shape[1], device=visit_mask.device)
        lag = index[:, None] - index[None, :]  # i − j
        keep = lag >= 0
        if window is not None:
            keep = keep & (lag < window)
        allowed = allowed & keep
    return allowed


class SelfAttentionBlock(nn.Module):
    """One transformer encoder layer (Vaswani et al., 2017, §3.1–3.3), post-norm:
    ``x ← LN(x + Drop(MHA(x)))``, ``x ← LN(x + Drop(W_2 ReLU(W_1 x)))``.

    ``attention_mask`` (bool [B, V, V], True = query i may attend to key j; see
    :func:`visit_attention_mask`) is applied with :func:`masked_softmax`. Options for the
    backbones that use it: ``bias`` on the query/key/value and output projections (SAnD and
    HiTANet: yes; LSAN: bias-free, as the MedDiffusion authors' LSAN) and ``attention_dropout``,
    dropout on the attention weights as in the original transformer (SAnD, HiTANet; LSAN: none).
    """

    def __init__(self, dim: int, n_heads: int, feedforward_dim: int, dropout: float, bias: bool = True,
                 attention_dropout: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.attention_output = nn.Linear(dim, dim, bias=bias)
        self.attention_norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.ReLU(), nn.Linear(feedforward_dim, dim))
        self.feedforward_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def attention_weights(self, x: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head weights [B, H, V, V] and values [B, H, V, dim/H]."""
        n_patients, n_visits, dim = x.shape
        query, key, value = (
            part.reshape(n_patients, n_visits, self.n_heads, dim // self.n_heads).transpose(1, 2)
            for part in self.qkv(x).chunk(3, dim=-1)
        )
        scores = query @ key.transpose(-1, -2) / math.sqrt(dim // self.n_heads)
        return masked_softmax(scores, attention_mask[:, None]), value

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        weights, value = self.attention_weights(x, attention_mask)
        if self.attention_dropout:
            weights = self.dropout(weights)
        context = (weights @ value).transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.dropout(self.attention_output(context)))
        return self.feedforward_norm(x + self.dropout(self.feedforward(x)))


# --- recurrences over real visits ----------------------------------------------------------------


def reverse_real_visits(values: Tensor, visit_mask: Tensor) -> Tensor:
    """Each patient's real visits in reverse order, padding left where it is.

    Visit k < n of a patient with n real visits goes to position n − 1 − k; padding
    positions map to themselves. The map is its own inverse, so applying it twice
    restores the order. Run a one-directional RNN on the result to read visits K..1
    without ever reading padding before a real visit (RETAIN, MedSkim's BPRNN).
    """
    n_visits = visit_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(visit_mask.shape[1], device=visit_mask.device).expand_as(visit_mask)
    source = torch.where(visit_mask, n_visits - 1 - positions, positions)
    return values.gather(1, source.unsqueeze(-1).expand_as(values))


def packed_rnn_states(rnn: nn.RNNBase, inputs: Tensor, lengths: Tensor) -> Tensor:
    """[B, V, directions · hidden] outputs of a batch-first ``rnn`` run on each patient's first ``lengths`` visits
    only (packed sequences), 0 after them: a backward direction starts at each patient's last real visit."""
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    states, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=inputs.shape[1])
    return states
