"""The HiTANet risk backbone (Luo, Xu, Wang, Ma, Ma & Ma, "HiTANet: Hierarchical Time-Aware
Attention Networks for Risk Prediction on Electronic Health Records", KDD 2020), a Table 2
baseline of seed 000."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, last_visit
from ehrlab.models.risk.layers import (
    SelfAttentionBlock,
    TimeEmbedding,
    TimeFeature,
    masked_softmax,
    sinusoidal_positions,
    sum_code_embeddings,
    visit_attention_mask,
)


class HiTANetBackbone(RiskBackbone):
    """HiTANet: a time-aware transformer, then time-aware global + local attention (KDD 2020).

    The paper's two stages (Methodology), with ``Δ_k`` the gap in days from visit k to the
    patient's last visit (the batch's ``time_to_end``):

    - Visit embedding: ``v_k = W_v x_k + b_v`` for the multi-hot visit ``x_k`` (sum of code
      embedding rows, padding id 0 contributes nothing), with embedding dropout. This is
      :meth:`embed_visits` (``e_k = v_k``).
    - Local evaluation stage, time-aware transformer (:meth:`encode`): the time embedding
      ``t_k = W_t (1 − tanh((W_f Δ_k/180 + b_f)²)) + b_t`` (MedDiffusion's Eq. 3.3 borrows it;
      :class:`~ehrlab.models.risk.layers.TimeEmbedding`) is added to the visit embedding,
      together with sinusoidal positional encodings (the official HiTANet code and the
      MedDiffusion authors' baseline both add them), and ``n_layers`` transformer encoder
      layers (multi-head self-attention + feed-forward, residuals, layer norm) over the real
      visits give ``h_k``. The local attention weight of each visit is
      ``β_k = softmax_k(w_β^T h_k + b_β)``.
    - Global synthesis stage, time-aware key–query attention: the query comes from the last
      visit, ``q = ReLU(W_q h_K + b_q)``; the key of visit k from its gap only,
      ``κ_k = ReLU(W_κ (1 − tanh((W_s Δ_k/180 + b_s)²)) + b_κ)``; the global weights are
      ``α_k = softmax_k(q^T κ_k / √d_q)``.
    - Dynamic combination: ``[λ_1, λ_2] = softmax(W_λ h_K + b_λ)``,
      ``γ_k = λ_1 α_k + λ_2 β_k`` and the patient representation ``r = Σ_k γ_k h_k``, then
      dropout and the shared output layer (Eq. 3.13 of seed 000).

    What plays what: ``h_k`` is the transformer output at visit k. The transformer attends
    over all real visits (no causal mask), so ``h_k`` also carries later visits and the
    augmentation's ``h_{k−1}`` is a summary of the whole (real) sequence seen from visit
    k−1: ``causal = False``. :meth:`patient_representation` is the γ-weighted sum above
    (width ``hidden_dim``); every softmax runs over real visits only. Dates enter through
    ``t_k`` and ``κ_k``: ``time_aware = True``. The time embedding is added in
    :meth:`encode`, not in ``e_k``, so synthetic visit embeddings of the diffusion
    augmentation are stamped with the real visits' gaps, as the global keys are.

    Defaults: d = 256 (seed 000 §4.1's d_e = d_h; HiTANet also uses 256), 4 heads, 1 layer,
    feed-forward 4·d = 1024, time-feature width 64 and query/key width 64 (hence the
    √64 = 8 scale) — the values of the official HiTANet code and the MedDiffusion authors'
    baseline; dropout 0.1 after attention/feed-forward and on ``r``, and 0.1 on the visit
    embedding: the MedDiffusion authors' ``dropout`` and ``dropout_emb`` (the official
    HiTANet code uses 0.5 on ``r`` and none inside the transformer).

    Decisions where sources differ:

    - Global keys use the ``1 − tanh(·²)`` time feature before ``W_κ``, as the official
      HiTANet code does; the MedDiffusion authors' re-implementation feeds the plain linear
      map ``W_s Δ/180 + b_s`` to ``W_κ``.
    - The query and the combination weights read ``h_K`` of the last real visit (the
      MedDiffusion authors' choice); the official code appends an extra dummy visit (a
      reserved code, gap 0) after the real ones and reads its output instead.
    - ``γ`` is not renormalised: ``λ`` and both attentions each sum to 1 over the real
      visits, so ``Σ_k γ_k = 1`` exactly (both codes divide by ``Σ γ + 1e-5``, a ≈ 1e-5
      shrink).
    """

    causal = False
    time_aware = True

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        n_heads: int = 4,
        n_layers: int = 1,
        time_dim: int = 64,
        query_dim: int = 64,
        dropout: float = 0.1,
        embedding_dropout: float = 0.1,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.code_bias = nn.Parameter(torch.zeros(visit_dim))  # b_v
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.input_projection = nn.Identity() if visit_dim == hidden_dim else nn.Linear(visit_dim, hidden_dim)
        # Local stage: time-aware transformer.
        self.time_embedding = TimeEmbedding(time_dim, hidden_dim)  # W_f, b_f, W_t, b_t
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(hidden_dim, n_heads, 4 * hidden_dim, dropout) for _ in range(n_layers)
        )
        self.local_attention = nn.Linear(hidden_dim, 1)  # w_β, b_β
        # Global stage: time-aware key-query attention.
        self.query = nn.Linear(hidden_dim, query_dim)  # W_q, b_q
        self.key_time_feature = TimeFeature(time_dim)  # W_s, b_s
        self.key = nn.Linear(time_dim, query_dim)  # W_κ, b_κ
        self.combination = nn.Linear(hidden_dim, 2)  # W_λ, b_λ
        self.dropout = nn.Dropout(dropout)

    def embed_visits(self, batch: Batch) -> Tensor:
        code_sum = sum_code_embeddings(self.code_embedding, batch["codes"])
        return self.embedding_dropout(code_sum + self.code_bias)

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        x = self.input_projection(visit_embeddings)
        x = x + self.time_embedding(batch["time_to_end"].to(x.dtype))
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        mask = visit_attention_mask(batch["visit_mask"], causal=False)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def attention_weights(self, hidden_states: Tensor, batch: Batch) -> dict[str, Tensor]:
        """The global ``α``, local ``β`` and combined ``γ`` weights [B, V] (0 at padding) and
        the combination weights ``λ`` [B, 2]."""
        visit_mask = batch["visit_mask"]
        last = last_visit(hidden_states, visit_mask)  # h_K
        local = masked_softmax(self.local_attention(hidden_states).squeeze(-1), visit_mask)
        query = torch.relu(self.query(last))  # [B, d_q]
        keys = torch.relu(self.key(self.key_time_feature(batch["time_to_end"].to(hidden_states.dtype))))  # [B, V, d_q]
        scores = (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.shape[-1])
        global_ = masked_softmax(scores, visit_mask)
        combination = self.combination(last).softmax(dim=-1)
        combined = combination[:, :1] * global_ + combination[:, 1:] * local
        return {"global": global_, "local": local, "combined": combined, "combination": combination}

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """``r = Σ_k γ_k h_k`` over the real visits, with dropout."""
        combined = self.attention_weights(hidden_states, batch)["combined"]
        return self.dropout((combined.unsqueeze(1) @ hidden_states).squeeze(1))
