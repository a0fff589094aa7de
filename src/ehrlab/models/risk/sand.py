"""The SAnD risk backbone (Song et al., "Attend and Diagnose: Clinical Time Series Analysis
Using Attention Models", AAAI 2018), a Table 2 baseline of seed 000.

Its transformer pieces (sinusoidal positional encodings, the post-norm self-attention block
with NaN-free masking, the visit attention mask) live in :mod:`~ehrlab.models.risk.layers`,
shared with HiTANet and LSAN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import (
    SelfAttentionBlock,
    sinusoidal_positions,
    sum_code_embeddings,
    visit_attention_mask,
)


class SAnDBackbone(RiskBackbone):
    """SAnD: masked self-attention over visits + dense interpolation (Song et al., AAAI 2018).

    The paper's sections (Proposed Approach) map onto the contract as follows:

    - Input embedding ("a 1D convolutional layer" with kernel size 1, i.e. a linear map of
      each time step's features): ``e_k = W_v x_k + b_v`` for the multi-hot visit ``x_k``,
      computed as a sum of embedding rows (``EmbeddingBag``, padding id 0 contributes
      nothing). Linear, as the paper's 1-D conv and the MedDiffusion authors' code (sum of
      code embeddings + a bias vector) both are. This is :meth:`embed_visits`.
    - Positional encoding: the sinusoidal encodings of the transformer, added to the
      (projected) ``e_k`` in :meth:`encode`, by visit index.
    - Attention module: ``n_layers`` stacked blocks of masked multi-head self-attention and
      a position-wise feed-forward sub-layer (the paper's 1-D convs with kernel size 1),
      each with a residual connection and layer normalisation. The mask enforces causality
      (visit k attends to visits ≤ k); ``attention_window = r`` additionally restricts it to
      the r most recent visits, the paper's restricted self-attention (None: no limit, the
      MedDiffusion authors' setting).
    - Dense interpolation (Algorithm 1): with T the patient's number of real visits,
      ``s_t = M t / T`` and ``u_m = Σ_{t=1..T} (1 − |s_t − m| / M)² h_t`` for m = 1..M. The
      sum runs over the real visits only (padding weights are zero), vectorised as one
      batched matrix product. ``U = [u_1; …; u_M]`` (M·hidden_dim) is the patient
      representation, followed by the shared linear output layer and softmax ("Linear and
      Softmax layers").

    What plays what: ``h_k`` is the attention module's output at visit k; causal masking
    makes it a function of visits 1..k only, so ``causal = True`` and the augmentation's
    ``h_{k−1}`` is an honest history. :meth:`patient_representation` is the dense
    interpolation ``U`` (width ``interpolation_factor · hidden_dim``, passed as
    ``representation_dim``), with dropout. SAnD uses visit order only, not dates:
    ``time_aware = False``.

    Defaults: d = 256 (seed 000 §4.1's d_e = d_h), 4 heads, 1 attention layer, M = 4,
    dropout 0.1 and no window — the MedDiffusion authors' SAnD settings (the paper tunes
    N, M and r per task). Where paper and authors' code differ we follow the paper: the
    authors' code has no feed-forward sub-layer (it is built but commented out of the
    forward pass) and no causal mask (only a key-padding mask); both are part of SAnD's
    attention module here. ``visit_dim ≠ hidden_dim`` is allowed through a linear
    projection of ``e_k`` (identity when equal, as by default).
    """

    causal = True
    time_aware = False

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        n_heads: int = 4,
        n_layers: int = 1,
        interpolation_factor: int = 4,
        attention_window: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim,
                         representation_dim=interpolation_factor * hidden_dim)
        self.interpolation_factor = interpolation_factor
        self.attention_window = attention_window
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.code_bias = nn.Parameter(torch.zeros(visit_dim))  # b_v
        self.input_projection = nn.Identity() if visit_dim == hidden_dim else nn.Linear(visit_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(hidden_dim, n_heads, 4 * hidden_dim, dropout) for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def embed_visits(self, batch: Batch) -> Tensor:
        code_sum = sum_code_embeddings(self.code_embedding, batch["codes"])
        return code_sum + self.code_bias

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        x = self.input_projection(visit_embeddings)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        mask = visit_attention_mask(batch["visit_mask"], causal=True, window=self.attention_window)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def interpolation_weights(self, visit_mask: Tensor) -> Tensor:
        """Algorithm 1's weights [B, M, V]: ``(1 − |M t / T − m| / M)²`` for real visits
        t = 1..T, 0 for padding visits."""
        n_visits = visit_mask.shape[1]
        dtype = torch.get_default_dtype()
        real_visits = visit_mask.sum(dim=1).clamp(min=1).to(dtype)  # T
        t = torch.arange(1, n_visits + 1, device=visit_mask.device, dtype=dtype)
        m = torch.arange(1, self.interpolation_factor + 1, device=visit_mask.device, dtype=dtype)
        s = self.interpolation_factor * t[None, :] / real_visits[:, None]  # [B, V]
        weights = (1.0 - (s[:, None, :] - m[None, :, None]).abs() / self.interpolation_factor) ** 2
        return weights * visit_mask[:, None, :]

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """The dense interpolation ``U`` flattened to [B, M · hidden_dim], with dropout."""
        weights = self.interpolation_weights(batch["visit_mask"]).to(hidden_states.dtype)
        return self.dropout((weights @ hidden_states).flatten(start_dim=1))
