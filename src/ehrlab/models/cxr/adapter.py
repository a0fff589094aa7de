"""EHRXDiff's adapter A_fusion (seed 004 §3.3.2, Figure 3): the conditions as one token sequence.

Three streams of tokens, each ``D_CLIP`` wide, are concatenated along the token axis and mixed
by one linear layer along that axis into ``C_fusion`` context tokens, which the UNet's
cross-attention reads (§3.2's K and V):

- the table stream ``c_CLIP^tab`` [n_event × D_CLIP]: the CLIP table encoder's event tokens,
  zero-padded to ``max_events`` slots (the task's 1,024 in the paper);
- the CLIP image stream ``c_CLIP^img`` [n_patch × D_CLIP]: all 65 tokens of the ViT-B/32;
- the VAE stream: ``c_VAE^img`` [C_z × H_f × W_f], each latent channel flattened and projected
  by one linear map H_f·W_f → D_CLIP ("we first flatten c_VAE into a 1D format and project it",
  §3.3.2): C_z tokens (3 × 4,096 → 3 × 768 in the paper).

At the paper's size 1,024 + 65 + 3 = 1,092 tokens become C_fusion = 1,024 (§4.5).

Facts from the authors' code where the paper is silent: the order of the streams is table,
CLIP image, VAE; the mixing layer has a bias and sees no mask (a padded event slot is a zero
token, which adds nothing but the bias). ``context_dim`` other than ``D_CLIP`` adds a final
linear map to the UNet's cross-attention width (the paper's are equal: 768).

Cost: the mixing layer is a [C_fusion × (max_events + n_patch + C_z)] matrix, and a batch's
event lists are usually far shorter than ``max_events``. Since the padded slots are zeros,
only the weight columns of the batch's E real slots are multiplied: exactly the result of
padding to ``max_events``, at a fraction of the cost (tested).

Table 4 row 1 (the VAE latent by concatenation, nothing by cross-attention) has no stream at
all: the UNet still has its cross-attention layers, and they read one learned context token.

``table_context: tokens`` (a departure, off in the paper's configuration) takes the table
stream out of the mixing: the image and VAE tokens are mixed into ``C_fusion`` tokens as
above, and the event tokens follow them in the context as they are, each its own context
token, with a mask that keeps the UNet's cross-attention off the padded slots. Why: the
mixing layer has one weight per event *slot*, and the events of a pair fill the slots in time
order, so the same event (a diuretic) enters each context token with a weight that depends on
where in the list it fell. Cross-attention over the tokens themselves reads a set the same
way wherever its members sit, as it reads the text tokens of an LDM. On the phantom a small
reader trained through the mixing layer did not learn the events within ehrxdiff_small's
budget, and one that attends to the event tokens did; EHRXDiff small itself scored within
noise of the mixed context after 15 epochs (RESULTS.md, "Why the events do not get through").
The cost: the cross-attention reads up to max_events more tokens (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.errors import UserInputError

#: how the table stream reaches the context: through the mixing layer (§3.3.2) or as tokens of its own
TABLE_CONTEXTS = ("mixed", "tokens")


def check_table_context(table_context: str) -> None:
    if table_context not in TABLE_CONTEXTS:
        raise UserInputError(f"model.table_context={table_context!r}: choose one of {list(TABLE_CONTEXTS)} "
                             "(mixed: the paper's adapter; tokens: the event tokens as context tokens of their own).")


class Context(NamedTuple):
    """What the UNet's cross-attention reads: ``tokens`` [B, T, context_dim] and ``mask`` bool
    [B, T], True where a token is attended (None: every token is)."""

    tokens: Tensor
    mask: Tensor | None = None

    def roll(self, shift: int) -> Context:
        """The context of the pair `shift` rows away, for every row."""
        return Context(self.tokens.roll(shift, dims=0), None if self.mask is None else self.mask.roll(shift, dims=0))


class FusionAdapter(nn.Module):
    """A_fusion (§3.3.2): table, CLIP image and VAE tokens → a :class:`Context`.

    Args:
        clip_dim: D_CLIP, the width of the CLIP streams (768).
        n_context: C_fusion, the number of context tokens (1,024).
        context_dim: the UNet's cross-attention width; None or `clip_dim`: no final projection.
        table_tokens: slots of the table stream (the task's max_events); 0: no table stream.
        image_tokens: tokens of the CLIP image stream (n_patch); 0: no image stream.
        vae_channels: C_z of the VAE stream; 0: no VAE stream.
        vae_pixels: H_f · W_f, the length of a flattened latent channel (needed with a VAE stream).
        table_context: ``mixed`` (§3.3.2: the event slots go through the mixing layer) or
            ``tokens`` (the event tokens follow the mixed ones, masked at padding; see the
            module's notes).

    With no stream the output is one learned token [B, 1, context_dim] (Table 4 row 1).
    """

    def __init__(self, clip_dim: int, n_context: int, context_dim: int | None = None, table_tokens: int = 0,
                 image_tokens: int = 0, vae_channels: int = 0, vae_pixels: int = 0, table_context: str = "mixed"):
        super().__init__()
        check_table_context(table_context)
        context_dim = context_dim or clip_dim
        self.clip_dim, self.context_dim = clip_dim, context_dim
        self.table_tokens, self.image_tokens, self.vae_channels = table_tokens, image_tokens, vae_channels
        self.table_context = table_context
        mixed_table = table_tokens if table_context == "mixed" else 0
        #: the tokens the mixing layer takes
        self.n_tokens = mixed_table + image_tokens + vae_channels
        if self.n_tokens == 0:
            # No mixing layer: one learned token stands in for the mixed ones (Table 4 row 1; with
            # table_context=tokens and the table stream alone, what a pair without events attends).
            # N(0, 1): about the scale of a LayerNorm-ed token, what cross-attention expects.
            self.null_context = nn.Parameter(torch.randn(1, 1, context_dim))
            self.n_context = 1
        else:
            self.build_mixing(n_context, vae_pixels)
        # (registered last, as before table_context existed: resumed optimiser states keep their order)
        has_streams = self.n_tokens + table_tokens > 0
        self.output_projection = nn.Linear(clip_dim, context_dim) if context_dim != clip_dim and has_streams else None

    def build_mixing(self, n_context: int, vae_pixels: int) -> None:
        """The VAE stream's projection and the mixing layer of §3.3.2."""
        if n_context < 1:
            raise UserInputError(f"model.n_context={n_context}: the adapter needs at least one context token.")
        #: the context tokens before any event tokens of table_context=tokens
        self.n_context = n_context
        if self.vae_channels:
            if vae_pixels < 1:
                raise ValueError("a VAE stream needs vae_pixels = H_f * W_f")
            self.vae_projection = nn.Linear(vae_pixels, self.clip_dim)
        self.token_mixing = nn.Linear(self.n_tokens, n_context)

    def forward(self, table: Tensor | None = None, image: Tensor | None = None, vae: Tensor | None = None,
                table_mask: Tensor | None = None, batch_size: int | None = None) -> Context:
        """The context: [B, n_context, context_dim] tokens, and with ``table_context: tokens``
        the E event tokens after them ([B, n_context + E, context_dim], masked at padding).

        Args:
            table: the table tokens [B, E, clip_dim] with E ≤ table_tokens, zero at padding
                (the first E slots; the rest count as zero).
            image: the CLIP image tokens [B, image_tokens, clip_dim].
            vae: the previous image's latent [B, vae_channels, H_f, W_f].
            table_mask: bool [B, E], the real events (needed with ``table_context: tokens``).
            batch_size: B, needed only without any stream.
        """
        given = {"table": table is not None, "image": image is not None, "vae": vae is not None}
        expected = {"table": self.table_tokens > 0, "image": self.image_tokens > 0, "vae": self.vae_channels > 0}
        if given != expected:
            raise ValueError(f"the adapter was built for the streams {expected}, given {given}")
        if table is not None and table.shape[1] > self.table_tokens:
            raise UserInputError(f"a pair has {table.shape[1]} events, more than the {self.table_tokens} event "
                                 "slots of EHRXDiff's adapter (the task's max_events when the model was built).")
        separate = table is not None and self.table_context == "tokens"
        if separate and table_mask is None:
            raise ValueError("table_context=tokens needs the table_mask of the events")
        if self.n_tokens:
            head = self.project(self.mix(None if separate else table, image, vae))
        else:
            rows = batch_size if table is None else table.shape[0]
            head = self.null_context.expand(rows, -1, -1)
        if not separate:
            return Context(head)
        mask = torch.cat([table_mask.new_ones(head.shape[:2]), table_mask], dim=1)
        return Context(torch.cat([head, self.project(table)], dim=1), mask)

    def project(self, tokens: Tensor) -> Tensor:
        """clip_dim → context_dim (the identity where they are equal, as in the paper)."""
        return tokens if self.output_projection is None else self.output_projection(tokens)

    def mix(self, table: Tensor | None, image: Tensor | None, vae: Tensor | None) -> Tensor:
        """The mixing layer (§3.3.2) over the streams given: [B, n_context, clip_dim]."""
        tokens, columns = [], []
        weight = self.token_mixing.weight  # [n_context, the mixed slots: table, image, VAE]
        start = 0
        if table is not None:
            tokens.append(table)
            columns.append(weight[:, :table.shape[1]])  # the padded slots' columns would multiply zeros
            start = self.table_tokens
        if image is not None:
            tokens.append(image)
            columns.append(weight[:, start:start + self.image_tokens])
            start += self.image_tokens
        if vae is not None:
            tokens.append(self.vae_projection(vae.flatten(2)))
            columns.append(weight[:, start:])
        tokens = torch.cat(tokens, dim=1)  # [B, T, clip_dim]
        # along the token axis: [B, clip_dim, T] → [B, clip_dim, n_context]
        return F.linear(tokens.transpose(1, 2), torch.cat(columns, dim=1), self.token_mixing.bias).transpose(1, 2)
