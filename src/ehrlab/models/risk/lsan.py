"""LSAN risk backbone (Table 2 baseline of seed 000).

Muchao Ye, Junyu Luo, Cao Xiao, Fenglong Ma. "LSAN: Modeling Long-term Dependencies and
Short-term Correlations with Hierarchical Attention for Risk Prediction." CIKM 2020,
pp. 1753–1762, doi:10.1145/3340531.3411864.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrlab.models.risk.base import Batch, RiskBackbone
from ehrlab.models.risk.layers import SelfAttentionBlock, masked_softmax, sinusoidal_positions, visit_attention_mask


def attention_mlp(width: int, dropout: float, first_bias: bool = True) -> nn.Sequential:
    """The three-layer scoring MLP ``width → width/4 → width/8 → 1`` (ReLU, dropout) of LSAN."""
    return nn.Sequential(
        nn.Linear(width, width // 4, bias=first_bias), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width // 4, width // 8, bias=first_bias), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width // 8, 1),
    )


class LSANBackbone(RiskBackbone):
    """LSAN: code attention → (Transformer ∥ local Conv1d) over visits → visit attention.

    The paper's two modules, mapped onto the backbone contract:

    - HAM, code level (``embed_visits``): each code of visit k gets a score from a
      three-layer MLP of its embedding, ``α_kj = softmax_j(MLP_c(x_kj))`` over the visit's
      real codes (padding id 0 is masked out), and ``e_k = Σ_j α_kj x_kj`` (width
      ``visit_dim``), followed by the embedding dropout.
    - TAM (``encode``), two parallel pathways over the visit sequence:
      *long-term* ``g_k``: sinusoidal position encoding (positions 1..V) added, one Transformer
      encoder layer (multi-head self-attention over the patient's real visits, FFN 4×, post-LN,
      bias-free attention projections, no dropout on the attention weights);
      *short-term* ``l_k``: a Conv1d (kernel 3, padding 1) over ``e_{k−1}, e_k, e_{k+1}``
      (no position encoding). **h_k = [g_k; l_k]**, ``hidden_dim`` wide (each pathway
      ``hidden_dim / 2``).
    - HAM, visit level (``patient_representation``): ``β_k = softmax_k(MLP_v(h_k))`` over
      the real visits, ``r = Σ_k β_k h_k``, then the shared ``W_y r + b_y``.

    h_k is not a recurrent state: it depends on *every* real visit (unmasked self-attention)
    and on visit k+1 (the centred convolution), so ``causal = False``; the diffusion
    augmentation's ``h_{k−1}`` therefore also carries later visits. LSAN uses no visit
    times (only positions), so ``time_aware = False``.

    Padding: codes with id 0 get zero attention weight; padding visits are masked as
    attention keys and in the visit pooling, and ``e_k`` is zeroed at padding visits before
    the convolution (so the last real visit sees zero padding whether or not padding
    visits follow, also for synthetic ``e'_k``).

    Sizes are the MedDiffusion authors' (the paper's text was not available offline here;
    the structure follows its abstract and the authors' LSAN baseline): d_model = 256 per
    pathway, 4 heads, one encoder layer, FFN 4 × d, kernel 3, code-attention MLP
    256→64→32→1 (first two layers bias-free), visit-attention MLP 512→128→64→1, dropout
    0.1 on hidden layers and on the visit vectors. Hence the defaults ``visit_dim = 256``
    and ``hidden_dim = 512`` (the concatenation of two 256-wide pathways; §4.1's
    d_h = 256 does not apply to LSAN's concatenated state). When ``visit_dim`` differs from
    ``hidden_dim / 2`` (e.g. the contract test's 16/16), a linear map takes ``e_k`` to the
    Transformer's width; at the defaults it is the identity, as in the authors' code.

    Departures from the authors' code: their code-level and visit-level softmaxes include
    padding slots and padding visits (padding code embeddings are zero but still get
    weight); here both are masked, as the contract requires.
    """

    causal = False
    time_aware = False

    def __init__(
        self,
        vocab_size: int,
        visit_dim: int = 256,
        hidden_dim: int = 512,
        n_heads: int = 4,
        kernel_size: int = 3,
        dropout: float = 0.1,
        embedding_dropout: float = 0.1,
    ):
        if hidden_dim % 2 or (hidden_dim // 2) % n_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be even and hidden_dim/2 divisible by n_heads ({n_heads})")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (centred convolution), got {kernel_size}")
        super().__init__(visit_dim=visit_dim, hidden_dim=hidden_dim)
        pathway_dim = hidden_dim // 2
        self.code_embedding = nn.Embedding(vocab_size, visit_dim, padding_idx=0)
        self.code_attention = attention_mlp(visit_dim, dropout, first_bias=False)  # MLP_c
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.global_input = nn.Identity() if visit_dim == pathway_dim else nn.Linear(visit_dim, pathway_dim)
        # Bias-free projections and no dropout on the attention weights, as the authors' LSAN.
        self.transformer = SelfAttentionBlock(pathway_dim, n_heads, 4 * pathway_dim, dropout, bias=False,
                                              attention_dropout=False)
        self.local_conv = nn.Conv1d(visit_dim, pathway_dim, kernel_size, padding=kernel_size // 2)
        self.visit_attention = attention_mlp(hidden_dim, dropout)  # MLP_v

    def embed_visits(self, batch: Batch) -> Tensor:
        codes = batch["codes"]
        code_vectors = self.code_embedding(codes)  # [B, V, C, d_e]
        weights = masked_softmax(self.code_attention(code_vectors).squeeze(-1), codes != 0, dim=-1)
        return self.embedding_dropout((weights.unsqueeze(-1) * code_vectors).sum(dim=2))

    def encode(self, visit_embeddings: Tensor, batch: Batch) -> Tensor:
        visit_mask = batch["visit_mask"]
        visits = visit_embeddings * visit_mask.unsqueeze(-1)
        global_input = self.global_input(visits)
        global_input = global_input + sinusoidal_positions(
            visits.shape[1], global_input.shape[-1], device=visits.device, dtype=global_input.dtype, first=1
        )  # positions 1..V
        global_states = self.transformer(global_input, visit_attention_mask(visit_mask, causal=False))  # g_k
        local_states = self.local_conv(visits.transpose(1, 2)).transpose(1, 2)  # l_k
        return torch.cat([global_states, local_states], dim=-1)

    def visit_weights(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        """β_k [B, V]: the visit-level attention over real visits (0 at padding)."""
        return masked_softmax(self.visit_attention(hidden_states).squeeze(-1), batch["visit_mask"], dim=1)

    def patient_representation(self, hidden_states: Tensor, batch: Batch) -> Tensor:
        return (self.visit_weights(hidden_states, batch).unsqueeze(-1) * hidden_states).sum(dim=1)
