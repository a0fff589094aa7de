"""Dipole (Ma et al., KDD 2017), one of seed 000's risk baselines (Table 2, §6.2).

``model=dipole`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=dipole augment=diffusion`` is its +diffusion variant (seed 000, Appendix 6.4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone, last_visit
from ehrlab.models.risk.layers import masked_softmax, packed_rnn_states, sum_code_embeddings

ATTENTIONS = ("location", "general", "concatenation")


class DipoleBackbone(RiskBackbone):
    """Attention-based bidirectional GRU over visits.

    F. Ma, R. Chitta, J. Zhou, Q. You, T. Sun, J. Gao, "Dipole: Diagnosis Prediction in
    Healthcare via Attention-based Bidirectional Recurrent Neural Networks", KDD 2017, Methodology
    section (equation numbers below are the paper's).

    - Visit embedding (Eq. 1): ``v_k = ReLU(W_v x_k + b_v)`` with ``x_k`` the
      multi-hot visit, computed as a sum of embedding rows (padding id 0 contributes
      nothing), then dropout (``embedding_dropout``). ``e_k = v_k``.
    - Bidirectional GRU (the paper's BRNN with GRU cells): ``h_k = [→h_k; ←h_k]``. ``hidden_dim`` is the
      width of the concatenation (2p in the paper), so each direction has
      ``hidden_dim / 2`` units. Each patient's backward pass starts at its own last real
      visit (packed sequences), so padding visits change nothing; padding ``h_k`` are 0.
    - Attention with the last real visit K as the query, over ``h_1..h_{K−1}``
      (``attention`` selects the score):

      * ``"location"`` (Eq. 4): ``a_i = w_α^T h_i`` (the paper's scalar bias b_α adds
        the same constant to every score, cancels in the softmax and is left out);
      * ``"general"`` (Eq. 6): ``a_i = h_K^T W_α h_i``;
      * ``"concatenation"`` (Eq. 7): ``a_i = v_α^T tanh(W_α [h_K; h_i])``, with
        ``attention_dim`` = q, the latent width of the paper.

      ``α = softmax(a_1..a_{K−1})`` (Eq. 5, masked to real earlier visits),
      ``c = Σ_{i<K} α_i h_i`` (Eq. 8).
    - Patient representation (Eq. 9): ``h̃ = tanh(W_c [c; h_K])``, ``context_dim`` = r
      wide (default: ``hidden_dim``), then dropout (``dropout``) and the shared output
      layer ``W_s h̃ + b_s`` (Eq. 10; the softmax lives in the loss). A patient with a
      single visit has no earlier visit to attend to: ``c = 0``.

    What the contract's names hold here: ``h_k`` (what :meth:`encode` returns and what
    the diffusion augmentation reads as the history ``h_{k−1}`` of visit k) is the
    bidirectional state, which also summarises visits after k, hence ``causal = False``;
    :meth:`patient_representation` is ``h̃`` above. Dipole uses no visit times
    (``time_aware = False``).

    Hyperparameters. Widths: seed 000 §4.1 runs its baselines under the same settings,
    d_e = d_h = 256 (MedDiffusion authors' code: ``d_model = 256`` for every baseline).
    Dropout 0.1 on the embedding and on the representation: the authors' code's
    ``dropout_emb`` and ``dropout``. ``attention_dim`` (q, concatenation attention only) is
    not in the authors' code: 128 here (half of d_h). Default attention: location-based. The authors'
    public code has no class named Dipole; its closest baseline (``GRUSelf``) is a GRU
    with a location-based ``Linear(d, 1)`` score over the visits, and location-based is
    also the first variant of the paper and the default of other public Dipole
    implementations (e.g. early PyHealth). Differences from that code, where we follow the paper:
    a bidirectional GRU (theirs is one-directional), ``ReLU(W_v x + b_v)`` visit
    embedding (theirs: a plain sum of code embeddings), attention over ``h_1..h_{K−1}``
    combined with ``h_K`` through Eq. 9 (theirs: a softmax over every visit, padding
    included, and the weighted sum fed to the output layer directly).
    """

    causal = False
    time_aware = False

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        attention: str = "location",
        attention_dim: int = 128,
        context_dim: int | None = None,
        embedding_dropout: float = 0.1,
        dropout: float = 0.1,
    ):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim ({hidden_dim}) is the width of both GRU directions together: make it even")
        context_dim = context_dim or hidden_dim
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim, representation_dim=context_dim)
        self.attention = attention
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.code_bias = nn.Parameter(torch.zeros(visit_dim))  # b_v
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.gru = nn.GRU(visit_dim, hidden_dim // 2, batch_first=True, bidirectional=True)
        if attention == "location":
            self.score = nn.Linear(hidden_dim, 1, bias=False)  # w_α (Eq. 4)
        elif attention == "general":
            self.score = nn.Linear(hidden_dim, hidden_dim, bias=False)  # W_α (Eq. 6)
        else:
            self.score = nn.Sequential(  # v_α^T tanh(W_α [h_K; h_i]) (Eq. 7)
                nn.Linear(2 * hidden_dim, attention_dim, bias=False), nn.Tanh(), nn.Linear(attention_dim, 1, bias=False)
            )
        self.combine = nn.Linear(2 * hidden_dim, context_dim, bias=False)  # W_c (Eq. 9)
        self.dropout = nn.Dropout(dropout)

    def embed_visits(self, batch: Batch) -> Tensor:
        code_sum = sum_code_embeddings(self.code_embedding, batch["codes"])
        return self.embedding_dropout(torch.relu(code_sum + self.code_bias))

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        return packed_rnn_states(self.gru, visit_embeddings, batch["visit_mask"].sum(dim=1).clamp(min=1))

    def attention_weights(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """α [B, V] of Eq. 5: weights over the real visits before the last one (0 elsewhere)."""
        visit_mask = batch["visit_mask"]
        last_index = visit_mask.sum(dim=1, keepdim=True) - 1
        earlier = visit_mask & (torch.arange(visit_mask.shape[1], device=visit_mask.device) < last_index)
        query = last_visit(hidden_states, visit_mask)  # h_K [B, H]
        if self.attention == "location":
            scores = self.score(hidden_states).squeeze(-1)
        elif self.attention == "general":
            scores = (self.score(hidden_states) * query.unsqueeze(1)).sum(dim=-1)  # h_K^T (W_α h_i)
        else:
            pairs = torch.cat([query.unsqueeze(1).expand_as(hidden_states), hidden_states], dim=-1)
            scores = self.score(pairs).squeeze(-1)
        # A one-visit patient has no earlier visit: its weights are all 0 and c = 0.
        return masked_softmax(scores, earlier, dim=1, zero_empty_rows=True)

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        weights = self.attention_weights(hidden_states, batch)
        context = torch.einsum("bv,bvh->bh", weights, hidden_states)  # c (Eq. 8)
        last = last_visit(hidden_states, batch["visit_mask"])  # h_K
        return self.dropout(torch.tanh(self.combine(torch.cat([context, last], dim=-1))))  # h̃ (Eq. 9)
