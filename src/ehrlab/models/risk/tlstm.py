"""The T-LSTM risk backbone (Baytas et al., KDD 2017), a baseline of seed 000's Table 2.

``model=tlstm`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=tlstm augment=diffusion`` is its +diffusion variant (seed 000, §6.4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import READOUTS, read_out, sum_code_embeddings


def elapsed_time_discount(elapsed: Tensor) -> Tensor:
    """``g(Δt) = 1 / log(e + Δt)`` (T-LSTM §3.1, the heuristic for large elapsed times):
    1 at Δt = 0, decreasing towards 0 as the gap grows. ``elapsed`` ≥ 0."""
    return 1.0 / torch.log(math.e + elapsed)


class TLSTMBackbone(RiskBackbone):
    """T-LSTM: an LSTM whose short-term memory is discounted by the elapsed time.

    Baytas, Xiao, Zhang, Wang, Jain, Zhou. "Patient Subtyping via Time-Aware LSTM Networks",
    KDD 2017, §3.1 (the T-LSTM unit, Figure 2 and its equations). Before visit ``k`` is read,
    the previous memory is split and its short-term part discounted by the gap since visit
    ``k − 1``:

    - ``C^S_{k−1} = tanh(W_d C_{k−1} + b_d)``          short-term memory
    - ``Ĉ^S_{k−1} = C^S_{k−1} · g(Δt_k)``              discounted short-term memory
    - ``C^T_{k−1} = C_{k−1} − C^S_{k−1}``              long-term memory
    - ``C*_{k−1} = C^T_{k−1} + Ĉ^S_{k−1}``             adjusted previous memory
    - ``f, i, o = σ(W_{f,i,o} e_k + U_{f,i,o} h_{k−1} + b_{f,i,o})``,
      ``C̃ = tanh(W_c e_k + U_c h_{k−1} + b_c)``
    - ``C_k = f ⊙ C*_{k−1} + i ⊙ C̃``, ``h_k = o ⊙ tanh(C_k)``

    with ``g(Δt) = 1/log(e + Δt)``. ``Δt_k`` is the batch's ``time_delta`` (days since the
    previous visit; 0 for the first visit, where ``C_0 = 0`` anyway) divided by
    ``time_unit_days``: by default **days** are fed to ``g`` (g = 1 at the same day, ≈ 0.29
    after 30 days, ≈ 0.17 after a year). The T-LSTM code notes that the elapsed time may be in
    days or months; ``time_unit_days: 30`` feeds months instead.

    - Visit embedding ``e_k = Σ_{codes c of visit k} W_v[c]`` (``EmbeddingBag``, padding id 0
      contributes nothing): the T-LSTM input is the multi-hot visit, and an embedding of it
      is the linear map the MedDiffusion authors use (sum of code embeddings, no bias, no
      nonlinearity). It is what the diffusion augmentation synthesises.
    - ``h_k`` is the T-LSTM hidden state: a per-visit state of visits ``1..k`` and of the gaps
      up to ``Δt_k``, so the backbone is causal and time-aware. The recurrence is a loop over
      visits (the input projections ``W e_k`` of all visits are one matrix product before it);
      padding visits come after the real ones and cannot change ``h_1..h_K``.
    - Patient representation: ``readout="last"`` is ``h_K`` (T-LSTM's supervised model feeds
      the last hidden state to the output layer); ``readout="max"`` is the MedDiffusion authors'
      max-pool over real visits. Optional ``dropout`` on it before the output layer.

    Paper vs code: we follow the paper's equations. The T-LSTM code uses a sigmoid in the
    decomposition (the paper: tanh) and an extra ReLU fully-connected layer before the
    softmax. The MedDiffusion authors' T-LSTM does not use ``g`` at all: it multiplies the
    short-term memory by a learned HiTANet-style embedding of their per-visit time value
    (``W_t (1 − tanh((W_f t/180 + b_f)²)) + b_t``), uses a sigmoid candidate memory and
    max-pools the states; none of that is the T-LSTM mechanism, so none of it is copied.

    Defaults: ``visit_dim = hidden_dim = 256`` (seed 000 §4.1; the MedDiffusion authors'
    ``d_model``); ``dropout = 0`` (the authors' T-LSTM applies none).
    """

    causal = True
    time_aware = True

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        time_unit_days: float = 1.0,
        dropout: float = 0.0,
        readout: str = "last",
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if time_unit_days <= 0:
            raise ValueError(f"time_unit_days must be positive, got {time_unit_days}")
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.input_gates = nn.Linear(visit_dim, 4 * hidden_dim)  # W_{f,i,o,c}, b_{f,i,o,c}
        self.recurrent_gates = nn.Linear(hidden_dim, 4 * hidden_dim, bias=False)  # U_{f,i,o,c}
        self.decomposition = nn.Linear(hidden_dim, hidden_dim)  # W_d, b_d
        self.time_unit_days = float(time_unit_days)
        self.dropout = nn.Dropout(dropout)
        self.readout = readout

    def embed_visits(self, batch: Batch) -> Tensor:
        return sum_code_embeddings(self.code_embedding, batch["codes"])

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        n_patients, n_visits, _ = visit_embeddings.shape
        input_part = self.input_gates(visit_embeddings)  # W e_k + b for every visit at once
        discounts = elapsed_time_discount(batch["time_delta"].clamp(min=0.0) / self.time_unit_days).unsqueeze(-1)
        hidden = cell = visit_embeddings.new_zeros(n_patients, self.hidden_dim)
        states = []
        for k in range(n_visits):
            short_term = torch.tanh(self.decomposition(cell))  # C^S_{k−1}
            cell = cell - short_term + short_term * discounts[:, k]  # C*_{k−1} = C^T + Ĉ^S
            gates = input_part[:, k] + self.recurrent_gates(hidden)
            forget_gate, input_gate, output_gate, candidate = gates.chunk(4, dim=-1)
            cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
            hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
            states.append(hidden)
        return torch.stack(states, dim=1)

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        return self.dropout(read_out(hidden_states, batch["visit_mask"], self.readout))
