"""The AdaCare risk backbone (Ma et al., AAAI 2020), a baseline of seed 000's Table 2.

``model=adacare`` is this backbone under :class:`~ehrlab.models.risk.base.RiskPredictor`;
``model=adacare augment=diffusion`` is its +diffusion variant (seed 000, §6.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import READOUTS, read_out, sum_code_embeddings

ACTIVATIONS = ("sigmoid", "sparsemax")


def sparsemax(scores: Tensor) -> Tensor:
    """Sparsemax over the last dimension (Martins & Astudillo, ICML 2016): the Euclidean
    projection of ``scores`` onto the probability simplex, ``max(z − τ(z), 0)``."""
    sorted_scores, _ = scores.sort(dim=-1, descending=True)
    ranks = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
    cumulative = sorted_scores.cumsum(dim=-1)
    support_size = (1.0 + ranks * sorted_scores > cumulative).sum(dim=-1, keepdim=True)  # ≥ 1 always
    threshold = (cumulative.gather(-1, support_size - 1) - 1.0) / support_size.to(scores.dtype)
    return (scores - threshold).clamp(min=0.0)


class Recalibration(nn.Module):
    """Squeeze-and-excitation of one visit's features (AdaCare §"Adaptive Feature Recalibration").

    ``s_k = act(W_2 ReLU(W_1 z_k + b_1) + b_2)`` with ``W_1`` compressing ``C → C // r``, and the
    output is ``s_k ⊙ z_k``. As in the AdaCare code the squeeze statistic is the feature vector of
    the current visit ``z_k`` itself (not an average over time), so each visit is recalibrated
    from its own features and the step is causal and vectorised over visits.
    """

    def __init__(self, channels: int, reduction: int, activation: str = "sigmoid"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.compress = nn.Linear(channels, max(channels // reduction, 1))  # W_1, b_1
        self.excite = nn.Linear(max(channels // reduction, 1), channels)  # W_2, b_2
        self.activation = activation

    def scales(self, features: Tensor) -> Tensor:
        """The recalibration weights ``s_k`` [..., C] (interpretable feature importances)."""
        logits = self.excite(torch.relu(self.compress(features)))
        return torch.sigmoid(logits) if self.activation == "sigmoid" else sparsemax(logits)

    def forward(self, features: Tensor) -> Tensor:
        return features * self.scales(features)


class AdaCareBackbone(RiskBackbone):
    """AdaCare: multi-scale dilated causal convolutions + feature recalibration + GRU.

    Ma, Gao, Wang, Zhang, Wang, Ruan, Tang, Gao, Ma. "AdaCare: Explainable Clinical Health Status
    Representation Learning via Scale-Adaptive Feature Extraction and Recalibration", AAAI 2020
    (arXiv:1911.12205), §Methodology: scale-adaptive feature extraction, adaptive feature
    recalibration, GRU-based health status representation and prediction.

    - Visit embedding ``e_k = Σ_{codes c of visit k} W_v[c]`` (``EmbeddingBag``, padding id 0
      contributes nothing). AdaCare's input is a dense feature vector ``x_t``; for diagnosis
      codes the MedDiffusion authors feed this sum of code embeddings (no bias, no ReLU), which
      we follow. It is what the diffusion augmentation synthesises.
    - Scale-adaptive feature extraction: three causal 1-D convolutions over visits with kernel
      size 2 and dilations 1, 3, 5 (``ξ^r_k`` sees visits ``k`` and ``k − r``; zero left
      padding), ``kernel_num`` filters each, concatenated and passed through ReLU:
      ``ξ_k`` [3·kernel_num]. Conv weights are Xavier-uniform initialised (AdaCare code).
    - Adaptive feature recalibration (squeeze–excitation on the current visit, reduction
      rates ``r_c`` for ``ξ_k`` and ``r_v`` for ``e_k``): ``ξ̃_k = s^c_k ⊙ ξ_k`` with sigmoid
      excitation, ``ẽ_k = s^v_k ⊙ e_k`` with ``input_activation`` (the AdaCare code offers
      sigmoid or sparsemax for the input features; the MedDiffusion authors run sigmoid, our
      default).
    - GRU over ``[ξ̃_k ; ẽ_k]`` gives ``h_k`` [hidden_dim]: a genuine per-visit state that
      depends on visits ``1..k`` only, so the backbone is causal and the diffusion
      augmentation's ``h_{k−1}`` is the history of visit ``k``. Everything after ``e_k``
      lives in :meth:`encode`, so synthetic ``e'_k`` are convolved, recalibrated and
      encoded exactly like real ones.
    - Patient representation: ``readout="last"`` is ``h_K`` (AdaCare predicts from the
      hidden state at the prediction time, ``ŷ = σ(W h_t + b)``); ``readout="max"`` is the
      MedDiffusion authors' max-pool of ``h`` over visits (their code pools over padding
      visits too; ours masks them). Dropout (AdaCare code, rate 0.5 in the MedDiffusion
      authors' run) is applied to the representation before the output layer.

    Not time-aware: the convolutions act on visit positions, not on dates.

    Defaults: ``visit_dim = hidden_dim = 256`` (seed 000 §4.1; also the MedDiffusion authors'
    ``input_dim``/``hidden_dim``); ``kernel_size = 2``, dilations ``(1, 3, 5)``,
    ``kernel_num = 64``, ``r_v = r_c = 4``, ``dropout = 0.5``, sigmoid recalibration: the
    MedDiffusion authors' AdaCare call (which are also the AdaCare code's defaults).
    """

    causal = True
    time_aware = False

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 256,
        kernel_size: int = 2,
        kernel_num: int = 64,
        dilations: tuple[int, ...] | list[int] = (1, 3, 5),
        r_v: int = 4,
        r_c: int = 4,
        input_activation: str = "sigmoid",
        dropout: float = 0.5,
        readout: str = "last",
    ):
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.code_embedding = nn.EmbeddingBag(vocab_size, visit_dim, mode="sum", padding_idx=0)  # W_v
        self.dilations = tuple(int(d) for d in dilations)
        self.kernel_size = kernel_size
        self.convolutions = nn.ModuleList(
            nn.Conv1d(visit_dim, kernel_num, kernel_size, dilation=dilation) for dilation in self.dilations
        )
        for convolution in self.convolutions:
            nn.init.xavier_uniform_(convolution.weight)
        conv_dim = kernel_num * len(self.dilations)
        self.conv_recalibration = Recalibration(conv_dim, r_c, "sigmoid")
        self.input_recalibration = Recalibration(visit_dim, r_v, input_activation)
        self.gru = nn.GRU(conv_dim + visit_dim, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.readout = readout

    def embed_visits(self, batch: Batch) -> Tensor:
        return sum_code_embeddings(self.code_embedding, batch["codes"])

    def multiscale_features(self, visit_embeddings: Tensor) -> Tensor:
        """``ξ_k`` [B, V, len(dilations)·kernel_num]: causal dilated convolutions, then ReLU."""
        channels_first = visit_embeddings.transpose(1, 2)  # [B, visit_dim, V]
        outputs = []
        for dilation, convolution in zip(self.dilations, self.convolutions):
            # Left padding only: output k sees visits k, k − d, …, k − (kernel_size − 1)·d.
            padded = F.pad(channels_first, ((self.kernel_size - 1) * dilation, 0))
            outputs.append(convolution(padded))
        return torch.relu(torch.cat(outputs, dim=1)).transpose(1, 2)

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        conv_features = self.conv_recalibration(self.multiscale_features(visit_embeddings))
        input_features = self.input_recalibration(visit_embeddings)
        hidden_states, _ = self.gru(torch.cat([conv_features, input_features], dim=-1))
        return hidden_states

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        return self.dropout(read_out(hidden_states, batch["visit_mask"], self.readout))
