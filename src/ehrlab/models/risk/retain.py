"""RETAIN (Choi et al., NeurIPS 2016), one of seed 000's risk baselines (Table 2, §6.2).

``model=retain`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=retain augment=diffusion`` is its +diffusion variant (seed 000, Appendix 6.4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import masked_softmax, reverse_real_visits, sum_code_embeddings


class RetainBackbone(RiskBackbone):
    """Two reverse-time GRUs give visit weights α and variable weights β over linear visit embeddings.

    E. Choi, M. T. Bahadori, J. A. Kulas, A. Schuetz, W. F. Stewart, J. Sun, "RETAIN: An
    Interpretable Predictive Model for Healthcare using Reverse Time Attention Mechanism",
    NeurIPS 2016, Methodology section (Eq. 1–6; equation numbers are the paper's).

    - Embedding (Eq. 1): ``v_k = W_emb x_k``, linear and bias-free (what keeps the
      contributions of Eq. 6 exact), a sum of embedding rows (padding id 0 contributes
      nothing), then dropout (``embedding_dropout``). ``e_k = v_k``.
    - Visit-level attention (Eq. 2): ``g_K, …, g_1 = RNN_α(v_K, …, v_1)`` run from each
      patient's last real visit back to the first; ``a_k = w_α^T g_k``,
      ``α = softmax(a_1..a_K)`` over the real visits (the paper's scalar bias b_α shifts
      every score alike, cancels in the softmax and is left out).
    - Variable-level attention (Eq. 3): ``h^β_K, …, h^β_1 = RNN_β(v_K, …, v_1)``,
      ``β_k = tanh(W_β h^β_k + b_β)`` (visit_dim wide).
    - Context (Eq. 4): ``c = Σ_k α_k β_k ⊙ v_k``; prediction (Eq. 5): ``W c + b`` (the
      shared output layer; the softmax lives in the loss), after dropout on ``c``
      (``context_dropout``).

    What the contract's names hold here. RETAIN has no forward per-visit hidden state: its
    RNN states run in reverse time and c is a weighted sum of the embeddings. ``h_k``
    (what :meth:`encode` returns) is visit k's term of Eq. 4, ``α_k β_k ⊙ v_k``, and
    :meth:`patient_representation` is their sum ``c``, so ``W h_k`` is exactly visit k's
    share of the logit (:meth:`code_contributions` splits it further over the codes, Eq. 6).
    ``h_k`` is therefore ``visit_dim`` wide, and :attr:`hidden_dim` (the contract's width
    of ``h_k``) equals ``visit_dim``; the constructor's ``hidden_dim`` argument is the
    width p = q of RNN_α and RNN_β (:attr:`rnn_dim`). Both α (normalised over every real
    visit) and the reverse-time RNNs make ``h_k`` depend on later visits:
    ``causal = False``; the diffusion augmentation's ``h_{k−1}`` is visit k−1's weighted
    term. RETAIN as compared in seed 000 uses no visit times (``time_aware = False``;
    RetainEx is the time-aware variant).

    Hyperparameters. Widths: seed 000 §4.1 runs its baselines under the same settings,
    d_e = d_h = 256 (MedDiffusion authors' code: ``d_model = 256`` for the embedding and
    both GRUs). Dropout 0.1 on the embedding and on the context: the authors' code's
    ``dropout`` applied to both (RETAIN applies dropout at these two places).
    Differences from the authors' code, where we follow the paper: their GRUs run
    forward in time (the paper's defining reverse order is used here) and their
    softmax runs over every position, padding included (masked here).
    """

    causal = False
    time_aware = False

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        embedding_dropout: float = 0.1,
        context_dropout: float = 0.1,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=visit_dim)
        self.rnn_dim = hidden_dim
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_emb
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.alpha_rnn = nn.GRU(visit_dim, hidden_dim, batch_first=True)  # RNN_α
        self.beta_rnn = nn.GRU(visit_dim, hidden_dim, batch_first=True)  # RNN_β
        self.alpha_score = nn.Linear(hidden_dim, 1, bias=False)  # w_α
        self.beta_gate = nn.Linear(hidden_dim, visit_dim)  # W_β, b_β
        self.context_dropout = nn.Dropout(context_dropout)

    def embed_visits(self, batch: Batch) -> Tensor:
        code_sum = sum_code_embeddings(self.code_embedding, batch["codes"])
        return self.embedding_dropout(code_sum)

    def attention(self, visit_embeddings: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """α [B, V] (Eq. 2, 0 at padding) and β [B, V, visit_dim] (Eq. 3)."""
        visit_mask = batch["visit_mask"]
        # Reversed, each patient's real visits still come first and padding last, so the
        # one-directional GRUs never read padding before a real visit.
        reversed_visits = reverse_real_visits(visit_embeddings, visit_mask)
        alpha_states = reverse_real_visits(self.alpha_rnn(reversed_visits)[0], visit_mask)  # g_k
        beta_states = reverse_real_visits(self.beta_rnn(reversed_visits)[0], visit_mask)  # h^β_k
        alpha = masked_softmax(self.alpha_score(alpha_states).squeeze(-1), visit_mask, dim=1, zero_empty_rows=True)
        beta = torch.tanh(self.beta_gate(beta_states))
        return alpha, beta

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        alpha, beta = self.attention(visit_embeddings, batch)
        return alpha.unsqueeze(-1) * beta * visit_embeddings  # α_k β_k ⊙ v_k, the terms of Eq. 4

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        # Padding terms are 0 (α = 0 there): the sum over all positions is c of Eq. 4.
        return self.context_dropout(hidden_states.sum(dim=1))

    def code_contributions(self, batch: Batch) -> Tensor:
        """Eq. 6: ``ω(y, x_{k,j}) = α_k W (β_k ⊙ W_emb[:, j])`` for every code slot [B, V, C, n_classes].

        Padding slots are 0. In ``eval()`` mode the contributions sum, over visits and
        codes, to the logits minus the output bias ``b``.
        """
        codes = batch["codes"]
        alpha, beta = self.attention(self.embed_visits(batch), batch)
        code_vectors = self.code_embedding.weight[codes] * (codes != 0).unsqueeze(-1)  # W_emb[:, j] per slot
        weighted = alpha[..., None, None] * beta.unsqueeze(2) * code_vectors
        return weighted @ self.output.weight.T
