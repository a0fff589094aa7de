"""Timeline (Bai et al., KDD 2018), one of seed 000's risk baselines (Table 2, §6.2).

``model=timeline`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=timeline augment=diffusion`` is its +diffusion variant (seed 000, Appendix 6.4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import masked_softmax


class TimelineBackbone(RiskBackbone):
    """Code self-attention within a visit, a per-code time-decay gate, then an LSTM over visits.

    T. Bai, S. Zhang, B. L. Egleston, S. Vucetic, "Interpretable Representation Learning
    for Healthcare via Capturing Disease Progression through Time", KDD 2018, §3 (the
    Timeline model: self-attention over a visit's codes, the disease-progression gate and
    the visit representation, then the RNN and softmax output), read together with the
    authors' public code (``tiantiantu/Timeline``).

    - Code embeddings ``c_i = W_e[code_i]`` (padding id 0 is a zero row), dropout
      (``embedding_dropout``).
    - Self-attention within visit k: ``q_i = W_Q c_i``, ``k_j = W_K c_j`` (bias-free, width
      ``attention_dim`` = a), ``A_ij = softmax_j(q_i · k_j / √a)`` over the visit's real
      codes, and the contextual code vector ``g_i = Σ_j A_ij c_j`` (the values are the
      embeddings themselves, no value projection, as in the paper and both codes).
    - Disease progression: ``δ_i = σ(θ_{code_i} − μ_{code_i} Δt_k)`` with a learned initial
      strength θ and decay rate μ per code (initialised to 1 and 0.1 per day, the authors'
      code), and ``Δt_k`` the days from visit k to the prediction time. Here the prediction
      is made at the last input visit, so ``Δt_k = t_K − t_k`` is ``batch["time_to_end"]``
      (the authors' "gap between a past visit and the visit of prediction").
    - Visit representation ``e_k = Σ_i δ_i g_i`` (visit_dim wide), computed in
      :meth:`embed_visits` because the gate needs each code's identity; padding codes
      contribute nothing.
    - ``h_1..h_K = LSTM(e_1..e_K)`` in :meth:`encode`; the prediction reads ``h_K``, the
      state at the last real visit (the default :meth:`patient_representation`).

    What the contract's names hold: ``e_k`` the gated visit representation, ``h_k`` the LSTM
    state. The LSTM runs forward and visits are left-aligned, so ``h_k`` depends on visits
    1..k only (``causal = True``); through Δt_k = t_K − t_k, ``e_k`` does depend on the date
    of the last visit, as MedDiffusion's own time embedding (Eq. 3.3) does. The gate makes
    the output depend on the times: ``time_aware = True``.

    Hyperparameters. Sizes: seed 000 §4.1 runs its baselines under the same settings and
    the MedDiffusion authors' Timeline uses ``d_model = 256`` for the embedding, the
    attention and the LSTM: visit_dim = hidden_dim = 256 and ``attention_dim=None`` meaning
    a = visit_dim. Embedding dropout 0.1 (MedDiffusion authors' ``dropout_emb``; Timeline's
    own code uses 0.2 with 80-wide layers). Gate initialisation θ = 1, μ = 0.1 per day (both
    codes; the time is in days, unscaled).
    Differences from the authors' codes: Timeline's public code runs a bidirectional LSTM
    and reads its output at the last padded step; we follow the MedDiffusion authors' code
    (one-directional LSTM read at each patient's last real visit), which keeps the backbone
    causal and padding-invariant. The attention masks padding with ``finfo.min`` instead of
    subtracting 1e20.
    """

    causal = True
    time_aware = True

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        attention_dim: int | None = None,
        embedding_dropout: float = 0.1,
        initial_strength: float = 1.0,
        decay_rate: float = 0.1,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        attention_dim = attention_dim or visit_dim
        self.code_embedding = nn.Embedding(vocab_size, visit_dim, padding_idx=0)  # W_e
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.query = nn.Linear(visit_dim, attention_dim, bias=False)  # W_Q
        self.key = nn.Linear(visit_dim, attention_dim, bias=False)  # W_K
        self.attention_scale = 1.0 / math.sqrt(attention_dim)
        self.initial_strength = nn.Parameter(torch.full((vocab_size,), float(initial_strength)))  # θ per code
        self.decay_rate = nn.Parameter(torch.full((vocab_size,), float(decay_rate)))  # μ per code (1/day)
        self.lstm = nn.LSTM(visit_dim, hidden_dim, batch_first=True)

    def code_attention(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """The contextual code vectors ``g_i`` [B, V, C, visit_dim] (0 at padding codes) and
        the attention ``A`` [B, V, C, C] within each visit."""
        code_mask = codes != 0
        embeddings = self.embedding_dropout(self.code_embedding(codes))  # c_i
        scores = self.query(embeddings) @ self.key(embeddings).transpose(-1, -2) * self.attention_scale
        attention = masked_softmax(scores, code_mask.unsqueeze(-2), dim=-1)
        return (attention @ embeddings) * code_mask.unsqueeze(-1), attention

    def progression_gate(self, codes: Tensor, days_to_prediction: Tensor) -> Tensor:
        """``δ_i = σ(θ_code − μ_code Δt)`` per code slot [B, V, C]."""
        return torch.sigmoid(self.initial_strength[codes] - self.decay_rate[codes] * days_to_prediction.unsqueeze(-1))

    def embed_visits(self, batch: Batch) -> Tensor:
        codes = batch["codes"]
        contextual, _ = self.code_attention(codes)
        gate = self.progression_gate(codes, batch["time_to_end"])
        return (gate.unsqueeze(-1) * contextual).sum(dim=2)  # e_k = Σ_i δ_i g_i

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        hidden_states, _ = self.lstm(visit_embeddings)
        return hidden_states
