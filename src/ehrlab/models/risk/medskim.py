"""MedSkim risk backbone (Table 2 baseline of seed 000).

Suhan Cui, Junyu Luo, Muchao Ye, Jiaqi Wang, Ting Wang, Fenglong Ma. "MedSkim: Denoised
Health Risk Prediction via Skimming Medical Claims Data." IEEE ICDM 2022, pp. 81–90,
doi:10.1109/ICDM54844.2022.00018.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import TimeEmbedding, TimeFeature, masked_softmax, reverse_real_visits


def binary_gate(logits: Tensor, training: bool) -> Tensor:
    """A hard two-way decision [..., 2] (one-hot) from ``logits`` [..., 2].

    Training: straight-through Gumbel-softmax (τ = 1): the forward value is one-hot, the
    gradient that of the soft sample. Evaluation: the one-hot argmax, deterministic.
    """
    if training:
        return F.gumbel_softmax(logits, tau=1.0, hard=True)
    return F.one_hot(logits.argmax(dim=-1), num_classes=logits.shape[-1]).to(logits.dtype)


class MedSkimBackbone(RiskBackbone):
    """MedSkim: code selection → backward probing RNN → forward skipping RNN → attention pooling.

    The paper's modules, mapped onto the backbone contract (``x_c`` = embedding of code c,
    ``t`` = a learned target-disease embedding, ``τ_k`` = the time encoding of visit k):

    - **Code selection** (``embed_visits``): one keep/skip decision per *vocabulary code*,
      from ``MLP_sel([x_c; t])`` (2d→d, tanh, d→2) through a hard Gumbel-softmax; padding
      id 0 is never kept. ``e_k = Σ_{c ∈ visit k} keep_c · ReLU(Dropout(x_c))`` — the
      target-relevant codes of the visit (``visit_dim`` wide). Within one forward pass a
      code gets one decision, shared by every visit and patient (the authors' code).
    - **Time encoding** (``encode``, from the batch): ``τ_k = W_τ(1 − tanh²(W_f Δt_k/180))``
      with ``Δt_k`` = days from visit k to the last visit (``time_to_end``), as the authors'
      code (HiTANet/MedDiffusion style, but squared *after* the tanh, where HiTANet and
      MedDiffusion's Eq. 3.3 take ``1 − tanh((·)²)``: the authors' code's form is kept,
      ``TimeEmbedding(..., square_inside=False)``); ``u_k = e_k + τ_k``.
    - **BPRNN** (``encode``): a bias-free LSTM (width ``probe_dim``, authors d/8) reads
      ``u_K, …, u_1`` (each patient's real visits reversed) and gives ``f_k``, a coarse
      summary of visits k..K.
    - **FSRNN** (``encode``, recurrent over visits): the visit gate
      ``s_k = GumbelHard(MLP_skip([h_{k−1}; u_k; f_k; W_t t]))`` decides read/skip;
      ``h̃_k = GRUCell(W_z e_k + τ_k, h_{k−1})`` if read, ``h_{k−1}`` if skipped. From the
      second visit on, ``h̃_k`` (after ``step = LN(ReLU(W_s ·))``) attends to a memory of the
      earlier states (``LN(ReLU(W_m h_j))``, j < k, scaled dot product), and
      ``h_k = LN(FFN(a) + a)`` with ``a = LN(Dropout(memory read) + step)`` (FFN 4×).
      **h_k** is this FSRNN state (``hidden_dim`` wide).
    - **Prediction** (``patient_representation``): ``α_k = softmax_k(w^T tanh(W_g [h_k;
      1 − tanh²(W_f' Δt_k/180); t]))`` over real visits and ``r = Σ_k α_k h_k``, then the
      shared ``W_y r + b_y``.
    - **Skip-rate regulariser**: ``λ (ρ − ρ*)²`` with ρ the fraction of real codes not read
      (deselected, or in a skipped visit); λ = 0.1, ρ* = 0.3, returned by
      :meth:`auxiliary_losses`, which :class:`~ehrlab.models.risk.base.RiskPredictor` adds
      to the cross-entropy.

    ``causal = False``: through ``f_k`` (BPRNN) each h_k — and the skip decision — depends on
    visits k..K, so the diffusion augmentation's ``h_{k−1}`` carries later visits too.
    ``time_aware = True``: τ_k and the pooling read ``time_to_end``. In ``eval()`` both gates
    are deterministic argmaxes.

    Decisions where the contract, the paper and the authors' code (``models/medskim.py``)
    meet:

    - The FSRNN's in-visit code attention of the authors' code (a query from ``[h_{k−1};
      f_k; t]`` attending over the visit's code embeddings, masked by the selection) needs
      the individual codes inside the recurrence. Here ``encode`` sees only ``e_k`` (real or
      synthetic visits, as the diffusion augmentation requires), so the GRU input is the
      code-selected visit sum ``W_z e_k + τ_k`` instead: code skimming is done by the
      code-selection gates alone, visit skimming by the FSRNN gates.
    - Padding: the authors' code adds no visit mask to the BPRNN (which reads the padding
      first after flipping); here each patient's real visits are reversed in place, so
      padding visits never reach real ones, and the pooling masks padding visits.
    - Sizes are the authors' (d_model = 256, so ``visit_dim = hidden_dim = 256``; BPRNN
      width 32 = d/8; time features 64; FFN 4 × d; dropout 0.1 on hidden layers and on code
      embeddings; λ = 0.1, target skip rate 0.3). Their optimiser (lr 1e-4) is replaced by
      seed 000's common recipe (§4.1: baselines under the same settings).
    """

    causal = False
    time_aware = True

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        probe_dim: int = 32,
        time_dim: int = 64,
        dropout: float = 0.1,
        embedding_dropout: float = 0.1,
        skip_lambda: float = 0.1,
        target_skip_rate: float = 0.3,
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        self.skip_lambda = skip_lambda
        self.target_skip_rate = target_skip_rate
        self.code_embedding = nn.Embedding(vocab_size, visit_dim, padding_idx=0)
        self.target = nn.Parameter(torch.randn(visit_dim) * visit_dim**-0.5)  # t
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.code_selection = nn.Sequential(nn.Linear(2 * visit_dim, visit_dim), nn.Tanh(), nn.Linear(visit_dim, 2))
        # τ_k for the visit inputs and, separately, the time feature of the pooling.
        self.time_embedding = TimeEmbedding(time_dim, visit_dim, square_inside=False)  # τ_k
        self.pool_time_feature = TimeFeature(time_dim, square_inside=False)
        self.probe = nn.LSTM(visit_dim, probe_dim, bias=False, batch_first=True)  # BPRNN
        self.skip_target = nn.Linear(visit_dim, visit_dim)
        self.visit_skip = nn.Sequential(
            nn.Linear(hidden_dim + 2 * visit_dim + probe_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2)
        )
        self.step_input = nn.Linear(visit_dim, visit_dim)  # W_z
        self.cell = nn.GRUCell(visit_dim, hidden_dim, bias=False)
        self.memory_key = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.LayerNorm(hidden_dim))
        self.step_query = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.LayerNorm(hidden_dim))
        self.memory_norm = nn.LayerNorm(hidden_dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_dim, 4 * hidden_dim), nn.ReLU(), nn.Linear(4 * hidden_dim, hidden_dim), nn.Dropout(dropout)
        )
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.global_attention = nn.Sequential(
            nn.Linear(hidden_dim + time_dim + visit_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1)
        )
        # Gates of the latest embed_visits and of the first encode after it (the real
        # sequence, also under the diffusion augmentation), for auxiliary_losses().
        self.code_keep: Tensor | None = None  # [B, V, C], 1 = selected (0 at padding)
        self.visit_read: Tensor | None = None  # [B, V], 1 = read, 0 = skipped
        self._awaiting_real_encode = False

    # --- code selection ----------------------------------------------------------------------

    def code_selection_logits(self, code_ids: Tensor) -> Tensor:
        """[..., 2] keep/skip logits of vocabulary codes (``MLP_sel([x_c; t])``)."""
        code_vectors = self.code_embedding(code_ids)
        target = self.target.expand_as(code_vectors)
        return self.code_selection(torch.cat([code_vectors, target], dim=-1))

    def embed_visits(self, batch: Batch) -> Tensor:
        codes = batch["codes"]
        # One decision per distinct code of the batch (per vocabulary code, as the paper).
        distinct, position = torch.unique(codes, return_inverse=True)
        keep = binary_gate(self.code_selection_logits(distinct), self.training)[:, 0]
        keep = keep[position] * (codes != 0)  # [B, V, C]
        self.code_keep = keep
        self._awaiting_real_encode = True
        code_vectors = torch.relu(self.embedding_dropout(self.code_embedding(codes)))
        return (keep.unsqueeze(-1) * code_vectors).sum(dim=2)

    # --- sequence encoder --------------------------------------------------------------------

    def _backward_probe(self, inputs: Tensor, visit_mask: Tensor) -> Tensor:
        """f_k [B, V, probe_dim]: the BPRNN over each patient's real visits K..1 (padding last)."""
        reversed_states, _ = self.probe(reverse_real_visits(inputs, visit_mask))
        return reverse_real_visits(reversed_states, visit_mask)  # the map is its own inverse

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        visit_mask = batch["visit_mask"]
        n_patients, n_visits, _ = visit_embeddings.shape
        time_encoding = self.time_embedding(batch["time_to_end"])  # τ_k
        inputs = visit_embeddings + time_encoding  # u_k
        probes = self._backward_probe(inputs, visit_mask)  # f_k
        step_inputs = self.dropout(self.step_input(visit_embeddings) + time_encoding)  # W_z e_k + τ_k
        skip_target = self.skip_target(self.target).expand(n_patients, -1)
        scale = math.sqrt(self.hidden_dim)

        state = visit_embeddings.new_zeros(n_patients, self.hidden_dim)
        states, memory, reads = [], [], []
        for k in range(n_visits):
            gate = binary_gate(
                self.visit_skip(torch.cat([state, inputs[:, k], probes[:, k], skip_target], dim=-1)), self.training
            )
            read = gate[:, :1]
            candidate = read * self.cell(step_inputs[:, k], state) + (1.0 - read) * state
            if k == 0:
                state = candidate
            else:
                query = self.step_query(candidate)
                keys = torch.stack(memory, dim=1)  # [B, k, d]
                weights = torch.softmax((keys @ query.unsqueeze(-1)).squeeze(-1) / scale, dim=-1)
                recalled = (weights.unsqueeze(-1) * keys).sum(dim=1)
                state = self.memory_norm(self.dropout(recalled) + query)
                state = self.output_norm(self.feed_forward(state) + state)
            states.append(state)
            memory.append(self.memory_key(state))
            reads.append(read.squeeze(-1))
        if self._awaiting_real_encode:
            self.visit_read = torch.stack(reads, dim=1) * visit_mask
            self._awaiting_real_encode = False
        return torch.stack(states, dim=1)

    # --- prediction ----------------------------------------------------------------------------

    def visit_weights(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """α_k [B, V]: the time- and target-aware attention over real visits (0 at padding)."""
        time_feature = self.pool_time_feature(batch["time_to_end"])
        target = self.target.expand(*hidden_states.shape[:2], -1)
        scores = self.global_attention(torch.cat([hidden_states, time_feature, target], dim=-1)).squeeze(-1)
        return masked_softmax(scores, batch["visit_mask"], dim=1)

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        return (self.visit_weights(hidden_states, batch).unsqueeze(-1) * hidden_states).sum(dim=1)

    # --- the skip-rate regulariser -------------------------------------------------------------

    def skip_rate(self, batch: Batch) -> Tensor:
        """ρ: the fraction of the batch's real codes that the model does not read — codes
        deselected by the code gates or in visits the FSRNN skipped — from the gates of the
        latest :meth:`embed_visits` and the first :meth:`encode` after it. Differentiable
        through the straight-through gates."""
        if self.code_keep is None or self.visit_read is None:
            raise RuntimeError("skip_rate needs embed_visits and encode to have run on this batch")
        real_codes = (batch["codes"] != 0).sum().clamp(min=1)
        read_codes = (self.code_keep * self.visit_read.unsqueeze(-1)).sum()
        return 1.0 - read_codes / real_codes

    def auxiliary_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"skip_regulariser": λ (ρ − ρ*)²}`` for the real sequence just run; the risk
        predictor adds it to the cross-entropy and logs it."""
        rate = self.skip_rate(batch)
        return {"skip_regulariser": self.skip_lambda * (rate - self.target_skip_rate) ** 2}
