"""The LSTM risk backbone of MedDiffusion (seed 000, §3.1–3.2 and Eq. 3.13).

``model=lstm`` is this backbone alone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=meddiffusion`` wraps the same backbone with the diffusion augmentation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import TimeEmbedding, sum_code_embeddings


class LSTMBackbone(RiskBackbone):
    """Visit embedding with time embedding (Eq. 3.1–3.3) → LSTM (Eq. 3.4) → W_y h_K (Eq. 3.13).

    - Code part (Eq. 3.2): ``v_k = ReLU(W_v x_k + b_v)`` with ``x_k`` the multi-hot visit,
      computed as a sum of embedding rows (``EmbeddingBag``, padding id 0 contributes
      nothing). A code listed twice in a visit counts twice; the DataModule lists each code
      once per visit, which makes this the multi-hot product. The authors' code instead sums
      ``ReLU(Dropout(Emb(code)))`` per code; we follow the paper's equation. Dropout (not in
      the paper; the authors use it) is applied to ``v_k``.
    - Time part (Eq. 3.3): ``t_k = W_t (1 − tanh((W_f Δt_k/180 + b_f)²)) + b_t`` with
      ``Δt_k = t_K − t_k``, the batch's ``time_to_end`` (days), computed by
      :class:`~ehrlab.models.risk.layers.TimeEmbedding` (``time_embedding``). ``use_time_embedding=False``
      drops it, which is the plain LSTM baseline of Table 2.
    - ``e_k = v_k + t_k`` (Eq. 3.1) → single-layer LSTM → ``h_k`` (Eq. 3.4). Visits are
      left-aligned and the LSTM is causal, so padding visits after the last real one cannot
      change ``h_1..h_K``; no packing needed.

    Defaults are §4.1's dimensions: d_e = d_h = 256, d_f = 64.
    """

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        time_dim: int = 64,
        dropout: float = 0.1,
        use_time_embedding: bool = True,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.code_bias = nn.Parameter(torch.zeros(visit_dim))  # b_v
        self.dropout = nn.Dropout(dropout)
        self.use_time_embedding = use_time_embedding
        self.time_aware = use_time_embedding
        if use_time_embedding:
            self.time_embedding = TimeEmbedding(time_dim, visit_dim)  # W_f, b_f, W_t, b_t
        self.lstm = nn.LSTM(visit_dim, hidden_dim, batch_first=True)

    def embed_visits(self, batch: Batch) -> Tensor:
        code_sum = sum_code_embeddings(self.code_embedding, batch["codes"])
        visit_embeddings = self.dropout(torch.relu(code_sum + self.code_bias))
        if self.use_time_embedding:
            visit_embeddings = visit_embeddings + self.time_embedding(batch["time_to_end"])
        return visit_embeddings

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        hidden_states, _ = self.lstm(visit_embeddings)
        return hidden_states
