"""RetainEx (Kwon et al., IEEE TVCG 2019), one of seed 000's risk baselines (Table 2, §6.2).

``model=retainex`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=retainex augment=diffusion`` is its +diffusion variant (seed 000, Appendix 6.4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import masked_softmax, packed_rnn_states, sum_code_embeddings

TIME_KEYS = ("time_delta", "time_to_end")


def time_features(days: Tensor) -> Tensor:
    """RetainEx's three time features of a visit, ``[t, 1/(t+1), 1/log(e+t)]`` [..., 3] (t in days)."""
    return torch.stack([days, 1.0 / (days + 1.0), 1.0 / torch.log(math.e + days)], dim=-1)


def bidirectional_states(rnn: nn.LSTM, inputs: Tensor, visit_mask: Tensor) -> Tensor:
    """A bidirectional LSTM over each patient's real visits only [B, V, 2 · hidden], 0 at padding.

    Packing by the number of real visits makes the backward direction start at each
    patient's last real visit, so padding visits never enter a real visit's state.
    """
    return packed_rnn_states(rnn, inputs, visit_mask.sum(dim=1))


class RetainExBackbone(RiskBackbone):
    """RETAIN with bidirectional LSTMs for α and β, time features, and a second embedding.

    B. C. Kwon, M.-J. Choi, J. T. Kim, E. Choi, Y. B. Kim, S. Kwon, J. Sun, J. Choo,
    "RetainVis: Visual Analytics with Interpretable and Interactive Recurrent Neural
    Networks on Electronic Medical Records", IEEE TVCG 25(1), 2019 (VAST 2018), the RetainEx
    model of its model section (the changes to RETAIN and its Figure of the architecture),
    read together with the authors' public code (``minjechoi/RetainVis``,
    ``models/retain_ex.py``). RETAIN's equations: Choi et al., NeurIPS 2016, Eq. 1–5.

    - Two embeddings (RetainEx's additional embedding matrix): ``v^a_k = W^a x_k`` feeds the
      RNNs that produce the attention, ``v^b_k = W^b x_k`` is what the attention weighs.
      Both are linear, bias-free sums of embedding rows (padding id 0 contributes nothing).
      They are stored as one table ``[W^a | W^b]``: ``e_k = [v^a_k ; v^b_k]``, so the
      diffusion augmentation synthesises both, and each is ``visit_dim / 2`` wide.
    - Time (RetainEx's time-interval features): ``u_k = [v^a_k ; t_k, 1/(t_k+1), 1/log(e+t_k)]``
      with ``t_k`` in days. RetainVis's code computes t as the days since the previous
      visit (1 for the first); we use ``batch["time_delta"]`` (days since the previous
      visit, 0 for the first), hence ``1/(t+1)`` (the MedDiffusion authors' form) where
      RetainVis's code has ``1/t`` with t ≥ 1. ``time_key="time_to_end"`` instead feeds the
      days to the last visit (t_K − t_k), as the MedDiffusion authors' code does.
    - α (RETAIN Eq. 2 with a biLSTM): ``g_k = biLSTM_α(u_1..u_K)``, ``α = softmax_k(w_α^T g_k)``
      over the real visits (bias-free ``w_α`` as in both codes; padding masked).
    - β (RETAIN Eq. 3 with a biLSTM): ``β_k = tanh(W_β biLSTM_β(u_1..u_K)_k)`` (bias-free,
      as in both codes), ``visit_dim / 2`` wide.
    - Context and output (RETAIN Eq. 4–5): ``c = Σ_k α_k β_k ⊙ v^b_k``, ``ŷ = W_y D(c) + b``
      with dropout D (``dropout``) on the context (MedDiffusion authors' code).

    What the contract's names hold here. RetainEx has no causal per-visit state: ``h_k``
    (what :meth:`encode` returns) is visit k's term of the context, ``h_k = α_k U (β_k ⊙
    v^b_k)``, and :meth:`patient_representation` is their sum ``U c`` (then dropout), so
    ``W_y h_k`` is exactly visit k's share of the logit (:meth:`code_contributions` splits
    it over the codes, RetainVis's contribution score). ``U`` maps the ``visit_dim / 2``-wide
    term to ``hidden_dim``: the identity when the two widths agree (the defaults), else a
    bias-free linear map; as the output layer is linear, ``W_y U`` is just a factorised
    ``W_out`` and, for two classes and ``hidden_dim ≥ 2``, expresses the same models.
    α (normalised over every real visit) and the bidirectional LSTMs make ``h_k`` depend on
    later visits: ``causal = False``; the diffusion augmentation's ``h_{k−1}`` is visit
    k−1's weighted term. Visit times enter the LSTMs: ``time_aware = True``.

    Hyperparameters (RetainVis is silent on sizes; MedDiffusion authors' code,
    ``d_model = 256``): each embedding 256 wide, so ``visit_dim = 512`` (the two embeddings
    side by side), LSTM hidden size 256 per direction = ``hidden_dim`` (= the width of
    ``h_k``, making ``U`` the identity), context dropout 0.1.
    Differences from the MedDiffusion authors' code, where we follow RetainVis: their
    LSTMs are one-directional (RetainEx's are bidirectional, as in RetainVis's code), their
    time is t_K − t_k (here the previous-visit interval by default) and their α softmax
    also runs over padding (masked here).
    """

    causal = False
    time_aware = True

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 512,
        hidden_dim: int = 256,
        dropout: float = 0.1,
        time_key: str = "time_delta",
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        if visit_dim % 2:
            raise ValueError(f"visit_dim holds two embeddings side by side and must be even, got {visit_dim}")
        if time_key not in TIME_KEYS:
            raise ValueError(f"time_key must be one of {TIME_KEYS}, got {time_key!r}")
        self.time_key = time_key
        self.embedding_dim = visit_dim // 2
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # [W^a | W^b]
        rnn_input = self.embedding_dim + 3
        self.alpha_rnn = nn.LSTM(rnn_input, hidden_dim, batch_first=True, bidirectional=True)  # biLSTM_α
        self.beta_rnn = nn.LSTM(rnn_input, hidden_dim, batch_first=True, bidirectional=True)  # biLSTM_β
        self.alpha_score = nn.Linear(2 * hidden_dim, 1, bias=False)  # w_α
        self.beta_gate = nn.Linear(2 * hidden_dim, self.embedding_dim, bias=False)  # W_β
        self.term_projection = (  # U
            nn.Identity() if self.embedding_dim == hidden_dim else nn.Linear(self.embedding_dim, hidden_dim, bias=False)
        )
        self.dropout = nn.Dropout(dropout)

    def embed_visits(self, batch: Batch) -> Tensor:
        return sum_code_embeddings(self.code_embedding, batch["codes"])

    def attention(self, visit_embeddings: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """α [B, V] (0 at padding, summing to 1 over each patient's real visits) and β [B, V, visit_dim / 2]."""
        visit_mask = batch["visit_mask"]
        attention_embeddings = visit_embeddings[..., : self.embedding_dim]  # v^a
        rnn_inputs = torch.cat([attention_embeddings, time_features(batch[self.time_key])], dim=-1)  # u_k
        scores = self.alpha_score(bidirectional_states(self.alpha_rnn, rnn_inputs, visit_mask)).squeeze(-1)
        alpha = masked_softmax(scores, visit_mask, dim=1, zero_empty_rows=True)
        beta = torch.tanh(self.beta_gate(bidirectional_states(self.beta_rnn, rnn_inputs, visit_mask)))
        return alpha, beta

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        alpha, beta = self.attention(visit_embeddings, batch)
        weighed_embeddings = visit_embeddings[..., self.embedding_dim :]  # v^b
        return alpha.unsqueeze(-1) * self.term_projection(beta * weighed_embeddings)  # α_k U(β_k ⊙ v^b_k)

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        # Padding terms are 0 (α = 0 there): the sum over all positions is U c.
        return self.dropout(hidden_states.sum(dim=1))

    def code_contributions(self, batch: Batch) -> Tensor:
        """Each code slot's share of the logits, ``α_k W_y U (β_k ⊙ W^b[c])`` [B, V, C, n_classes].

        RetainVis's contribution of code c at visit k; padding slots are 0. In ``eval()``
        mode they sum, over visits and codes, to the logits minus the output bias.
        """
        codes = batch["codes"]
        alpha, beta = self.attention(self.embed_visits(batch), batch)
        code_vectors = self.code_embedding.weight[codes, self.embedding_dim :] * (codes != 0).unsqueeze(-1)  # W^b[c]
        terms = alpha[..., None, None] * self.term_projection(beta.unsqueeze(2) * code_vectors)
        return terms @ self.output.weight.T
