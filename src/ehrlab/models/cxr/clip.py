"""The CXR-EHR CLIP of seed 004 (§3.3.1, Appendix B.1): an image encoder and a table encoder
trained contrastively on (previous image, events) pairs, the two CLIP encoders EHRXDiff is
conditioned on.

- :class:`ImageTokenEncoder`: a ViT over the grey image; all of its output tokens (CLS + one per
  patch: 65 of 768 for ViT-B/32 at 256², §4.5) are EHRXDiff's image condition
  ``c_CLIP^img ∈ R^{n_patch × D_CLIP}``.
- the table encoder is :class:`~ehrlab.models.cxr.table_encoder.TableEncoder` (B.1), whose event
  tokens projected to ``D_CLIP`` are ``c_CLIP^tab ∈ R^{n_event × D_CLIP}``.
- :func:`build_clip_encoders` builds both from one ``architecture`` dict, the way this model
  and EHRXDiff (which loads them from a CLIP checkpoint) must agree on them.
- :class:`CXRCLIP`: the contrastive pretraining (B.1), a part (``output = "encoder"``) whose
  checkpoint other models read: ``image_encoder.`` and ``table_encoder.`` weights
  (`ehrlab.models.cxr.parts.load_part`; the table classifiers of B.3 read ``table_encoder.``).

Decisions where the paper is silent or differs from what we can run:

- B.1 names ViT-B/32 with "an embedding dimension of 512, 12 layers, patch size 32 and 8
  heads"; 512 is CLIP ViT-B/32's joint embedding width and its vision tower is 768 wide with
  12 heads, which is what the authors' config holds and what D_CLIP = 768 (§4.5) requires. We
  build width 768 / 12 heads / 12 layers / patch 32 and a 512-d joint embedding.
- B.1 initialises the image encoder from OpenAI's checkpoint; nothing is downloaded here, so
  the ViT starts from scratch with one input channel (the checkpoint is RGB at 224²).
- The ViT is transformers' ``ViTModel`` (pre-norm blocks, GELU, final LayerNorm on every token)
  rather than OpenAI's layout (a LayerNorm before the blocks, one after on the CLS token only):
  EHRXDiff consumes all tokens, so normalising all of them keeps the condition's scale even.
  Pixels in [0, 1] enter as [-1, 1], the range the authors feed their image models.
- The joint embedding (CLIP; Radford et al. 2021): the CLS token of the image encoder and the
  mean of the table encoder's event tokens (the authors' pooling, as in the table classifiers),
  each through a bias-free linear map to ``embed_dim`` and L2-normalised; logits are cosine
  similarities × a learned temperature ``exp(t)``, t initialised at ln(1/0.07) and the scale
  clamped at 100; the loss is the mean of the image→events and events→image cross-entropies.
- ``train_max_events`` (off at paper size): each training step keeps a random subset of at
  most that many of a pair's real events, the way FLIP (Li et al. 2023, "Scaling
  language-image pre-training via masking") drops tokens to train CLIP faster; the pooled
  table embedding is a mean, which a random subset estimates. The cost of the table encoder
  grows with the batch's longest event list (~250 on the default phantom, 1,024 in the paper),
  so on a CPU this is what makes the small configuration train in minutes. Validation, test
  and every encoder use by other models see all events.
- Weight decay 0.2 (B.1) applies to the matrices only, not to biases, norms or the
  temperature, as CLIP's training does; B.1's "initial learning rate" names no schedule, so
  none is the default (``scheduler`` takes one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ViTConfig, ViTModel

from ehrlab.errors import UserInputError
from ehrlab.models.cxr.base import ENCODER, Batch, ImageForecaster
from ehrlab.models.cxr.table_encoder import TableEncoder, masked_mean

#: CLIP's initial temperature 0.07 and the ceiling of its logit scale (Radford et al. 2021, §2.5)
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = 100.0

IMAGE_OPTIONS = {"patch_size", "n_layers", "n_heads", "mlp_ratio", "dropout"}
TABLE_OPTIONS = {"n_layers", "n_heads", "ffn_multiplier", "dropout"}


class ImageTokenEncoder(nn.Module):
    """A ViT over grey images: [B, 1, S, S] in [0, 1] → token states [B, n_tokens, width].

    transformers' ``ViTModel`` built from a ``ViTConfig`` (one channel, no pooler, nothing
    downloaded). Token 0 is the CLS token; the others are the patches in raster order.

    Args:
        image_size: side S of the images; a multiple of `patch_size`.
        width: the token width (768 = D_CLIP in the paper).
        patch_size: side of a patch (32 for ViT-B/32).
        n_layers, n_heads: Transformer depth and heads (12 and 12 for ViT-B/32).
        mlp_ratio: the feed-forward width as a multiple of `width` (4 in ViT).
        dropout: dropout on the hidden states and attention probabilities (0 in CLIP).
    """

    def __init__(self, image_size: int, width: int, patch_size: int, n_layers: int, n_heads: int,
                 mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise UserInputError(f"the CLIP image encoder's patch_size={patch_size} does not divide the image side "
                                 f"{image_size}: choose a patch size that divides data.image_size.")
        if width % n_heads:
            raise UserInputError(f"the CLIP image encoder's n_heads={n_heads} does not divide its width {width} "
                                 "(architecture.clip_dim).")
        self.image_size = image_size
        self.width = width
        self.patch_size = patch_size
        self.n_tokens = (image_size // patch_size) ** 2 + 1
        config = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=1, hidden_size=width,
                           num_hidden_layers=n_layers, num_attention_heads=n_heads,
                           intermediate_size=mlp_ratio * width, hidden_dropout_prob=dropout,
                           attention_probs_dropout_prob=dropout, layer_norm_eps=1e-5)
        self.vit = ViTModel(config, add_pooling_layer=False)

    def forward(self, images: Tensor) -> Tensor:
        """Token states [B, n_tokens, width] of images [B, 1, S, S] in [0, 1]."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise UserInputError(f"the CLIP image encoder was built for {self.image_size}² images, not "
                                 f"{tuple(images.shape[-2:])}: use the data.image_size of its run.")
        return self.vit(pixel_values=images * 2.0 - 1.0).last_hidden_state


def _options(given: Mapping | None, allowed: set[str], where: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserInputError(f"{where} has unknown option(s) {unknown}; allowed: {sorted(allowed)}.")
    return given


def build_clip_encoders(image_size: int, event_dim: int, architecture: Mapping) -> tuple[ImageTokenEncoder,
                                                                                           TableEncoder]:
    """The two CLIP encoders of B.1 from one ``architecture`` dict (a CLIP run's ``model.architecture``).

    ``{"clip_dim": 768, "embed_dim": 512, "image": {patch_size, n_layers, n_heads, mlp_ratio, dropout},
    "table": {n_layers, n_heads, ffn_multiplier, dropout}}``: the image encoder is ``clip_dim``
    wide; the table encoder runs at `event_dim` and projects to ``clip_dim`` (B.1). ``embed_dim``
    (the contrastive space) is :class:`CXRCLIP`'s own and not used here.
    """
    _options(architecture, {"clip_dim", "embed_dim", "image", "table"}, "the CLIP architecture")
    if "clip_dim" not in architecture or "image" not in architecture:
        raise UserInputError("the CLIP architecture needs clip_dim and image (patch_size, n_layers, n_heads).")
    clip_dim = int(architecture["clip_dim"])
    image = _options(architecture["image"], IMAGE_OPTIONS, "the CLIP architecture's image")
    table = _options(architecture.get("table"), TABLE_OPTIONS, "the CLIP architecture's table")
    try:
        table_encoder = TableEncoder(event_dim, output_dim=clip_dim, **table)
    except ValueError as error:  # heads that do not divide the event width
        raise UserInputError(f"the CLIP architecture's table: {error}") from error
    return ImageTokenEncoder(image_size, clip_dim, **image), table_encoder


def contrastive_logits(image_embeddings: Tensor, table_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """[N_image, N_table] scaled cosine similarities (CLIP): embeddings are L2-normalised here."""
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    return scale * F.normalize(image_embeddings, dim=-1) @ F.normalize(table_embeddings, dim=-1).T


def symmetric_contrastive_loss(logits: Tensor) -> Tensor:
    """CLIP's loss: the mean of the cross-entropies over rows (image → events) and columns
    (events → image), pair i's match being entry (i, i)."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def retrieval_accuracy(similarity: Tensor, k: int) -> float:
    """Share of the rows of `similarity` [N, N] whose match (the diagonal) is among the k
    highest-scoring columns.

    The rank is one plus the number of columns scoring strictly higher than the match: pairs
    sharing a previous image (every earlier × later image of a stay is a pair) have identical
    image embeddings, and such a twin scoring as high as the match does not count against it.
    """
    match = similarity.diagonal().unsqueeze(1)
    ranks = (similarity > match).sum(dim=1) + 1
    return (ranks <= k).float().mean().item()


def subsample_events(events: Tensor, event_mask: Tensor, limit: int,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """At most `limit` of each pair's real events, drawn uniformly without replacement:
    ``events`` [B, min(E, limit), D] and their mask (pairs with fewer keep all of theirs).

    Order is not kept: the table encoder has no positional embedding (the events are a set).
    """
    if events.shape[1] <= limit:
        return events, event_mask
    scores = torch.rand(event_mask.shape, generator=generator, device=event_mask.device)
    scores = scores.masked_fill(~event_mask, -1.0)  # real events first, in random order
    keep = scores.topk(limit, dim=1).indices
    chosen = events.gather(1, keep.unsqueeze(-1).expand(-1, -1, events.shape[-1]))
    return chosen, event_mask.gather(1, keep)


class CXRCLIP(ImageForecaster):
    """Seed 004's CXR-EHR CLIP pretraining (Appendix B.1): the previous image of each training
    pair against the events that follow it, contrastively (see the module's notes).

    A part for EHRXDiff and the table classifiers: it forecasts nothing (``output = "encoder"``);
    after training the family reports :meth:`test_metrics` (retrieval on the test pairs).

    Args:
        findings, event_dim, image_size, max_events: from the datamodule (findings are unused).
        architecture: see :func:`build_clip_encoders`; ``embed_dim`` is the contrastive space.
        optimizer: ``optimizer(params=...)`` (a ``_partial_`` node; AdamW 5e-4, wd 0.2, β (0.9,
            0.98) in B.1); it receives two parameter groups, the second with weight decay 0.
        scheduler: ``scheduler(optimizer=...)`` or None, stepped each epoch on ``val/loss``.
        train_max_events: in training steps, at most this many random real events per pair
            (:func:`subsample_events`; see the module's notes); None: all (the paper).
        early_stopping_patience: validation epochs without a lower ``val/loss`` before stopping.

    ``val/loss`` is the contrastive loss within each validation batch: it depends on the batch
    size (the number of negatives), which is fixed within a run, so it ranks epochs.
    """

    output = ENCODER

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int,
                 architecture: Mapping, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, train_max_events: int | None = None,
                 early_stopping_patience: int | None = 10):
        super().__init__(findings, event_dim, image_size, max_events, early_stopping_patience)
        if train_max_events is not None and train_max_events < 1:
            raise UserInputError(f"model.train_max_events={train_max_events}: give a positive number of events, "
                                 "or null for all of them.")
        self.save_hyperparameters()
        self.train_max_events = train_max_events
        self.image_encoder, self.table_encoder = build_clip_encoders(image_size, event_dim, architecture)
        clip_dim = int(architecture["clip_dim"])
        embed_dim = int(architecture.get("embed_dim") or clip_dim)
        self.image_projection = nn.Linear(clip_dim, embed_dim, bias=False)
        self.table_projection = nn.Linear(clip_dim, embed_dim, bias=False)
        # CLIP's initialisation of its projections: N(0, width^-1/2)
        for projection in (self.image_projection, self.table_projection):
            nn.init.normal_(projection.weight, std=clip_dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))

    def embed_images(self, images: Tensor) -> Tensor:
        """Joint-space embeddings [B, embed_dim] (not normalised) of the CLS tokens."""
        return self.image_projection(self.image_encoder(images)[:, 0])

    def embed_events(self, events: Tensor, event_mask: Tensor) -> Tensor:
        """Joint-space embeddings [B, embed_dim] (not normalised) of the mean real event token."""
        return self.table_projection(masked_mean(self.table_encoder(events, event_mask), event_mask))

    def forward(self, batch: Batch) -> Tensor:
        """Contrastive logits [B, B]: row i is pair i's previous image against every pair's events."""
        return contrastive_logits(self.embed_images(batch["prev_image"]),
                                  self.embed_events(batch["events"], batch["event_mask"]), self.logit_scale)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.train_max_events is not None:
            events, event_mask = subsample_events(batch["events"], batch["event_mask"], self.train_max_events)
            batch = dict(batch, events=events, event_mask=event_mask)
        loss = symmetric_contrastive_loss(self(batch))
        batch_size = len(batch["pair_id"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).detach(), on_step=False,
                 on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.log("val/loss", symmetric_contrastive_loss(self(batch)), on_epoch=True,
                 batch_size=len(batch["pair_id"]), sync_dist=True)

    def test_metrics(self, dataloader: Iterable[Batch]) -> dict[str, float]:
        """Retrieval over all test pairs at once: ``test/retrieval_top{1,5}_image_to_events``
        (each previous image against every pair's events), ``…_events_to_image`` and
        ``test/loss`` (the contrastive loss with all test pairs as one batch)."""
        was_training = self.training
        self.eval()
        images, tables = [], []
        try:
            with torch.no_grad():
                for batch in dataloader:
                    images.append(self.embed_images(batch["prev_image"].to(self.device)))
                    tables.append(self.embed_events(batch["events"].to(self.device),
                                                    batch["event_mask"].to(self.device)))
                if not images:
                    return {}
                logits = contrastive_logits(torch.cat(images), torch.cat(tables), self.logit_scale).float()
        finally:
            self.train(was_training)
        metrics = {"test/loss": symmetric_contrastive_loss(logits).item()}
        for k in (1, 5):
            metrics[f"test/retrieval_top{k}_image_to_events"] = retrieval_accuracy(logits, k)
            metrics[f"test/retrieval_top{k}_events_to_image"] = retrieval_accuracy(logits.T, k)
        return metrics

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Matrices (weight decay) and the rest: biases, norms, the temperature (none, as CLIP)."""
        decay, no_decay = [], []
        for parameter in self.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        return self.optimizers_for(self.parameter_groups())
