"""Where do the events get lost on their way to EHRXDiff's UNet? Probes on the phantom's pairs
(RESULTS.md, "Why the events do not get through"), read off an EHRXDiff run's prepared data and
CLIP part.

1. Linear probes: a logistic regression per ImaGenome finding predicts the target label from the
   previous labels and one pooled summary of the pair's events, with the summary's effect allowed
   to differ by previous label (features × previous label). Summaries: the bag of event texts,
   the mean raw text embedding, the mean token of the pretrained CLIP table encoder, and of a
   random (untrained) one. Against them: the previous labels alone, and the phantom's true
   posterior (the ceiling).
2. Readers: a small cross-attention reader (learned queries plus the previous labels) trained
   by AdamW (2e-4, batch 32: ehrxdiff_small's) to predict the target labels from a context,
   either the adapter's mixed tokens (§3.3.2: the event slots through one linear map along the
   token axis into 64 tokens, as in ehrxdiff_small) or the event tokens themselves
   (``table_context: tokens``). It stands in for the UNet's cross-attention: what it does not
   learn in 15 epochs, the UNet is unlikely to either.
3. The CLIP objective's ceiling on the phantom: the mutual information between the previous
   study's true state and the driver outcomes of the interval after it (a simulated cohort of
   40,000 patients), the most a contrastive loss on (previous image, events) can fall below ln B.
4. How alike two pairs' event sets look, as the mean of their raw embeddings and as one
   random event each (cosine similarity).
5. The events' share of the target latent: ridge regressions of the target image's latent
   (the run's autoencoder, scaled) on nothing, the previous latent, + the previous labels, and
   + the phantom's true posterior (all that the previous state and the events tell).

Training pairs fit; validation + test pairs are scored: macro AUROC over the findings on All
and on Diff (the rows whose label changed), as the evaluation does (unweighted here).

    python results/ehrxdiff_small/event_probe.py outputs/<date>/<ehrxdiff_small run>

One thread; about 10 minutes on the default phantom.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.sparse import csr_matrix, hstack
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from torch import nn

from ehrlab.data.synthetic_cxr.config import SyntheticCXRConfig
from ehrlab.data.synthetic_cxr.model import draw_cohort
from ehrlab.data.tasks.cxr import SPLITS
from ehrlab.metrics import finding_aurocs, unweighted_macro
from ehrlab.models.cxr.adapter import FusionAdapter
from ehrlab.models.cxr.clip import build_clip_encoders
from ehrlab.models.cxr.parts import load_part
from ehrlab.pipeline import prepare


def macro_aurocs(labels: np.ndarray, scores: np.ndarray, changed: np.ndarray) -> tuple[float, float]:
    """(All, Diff): mean AUROC over the findings, on every row and on the rows whose label changed
    (the evaluation's unweighted macro: a finding with one class in a subset is left out)."""
    every = np.ones_like(changed, dtype=bool)
    return (unweighted_macro(finding_aurocs(labels, scores, every)[0]),
            unweighted_macro(finding_aurocs(labels, scores, changed)[0]))


class Pairs:
    """The prepared pairs: previous and target ImaGenome labels, events as text ids, the split."""

    def __init__(self, run: Path):
        self.config = OmegaConf.load(run / "config.yaml")
        self.data = data = prepare(self.config, Path(tempfile.mkdtemp()))  # the prepared data come from the cache
        columns = [data.findings.index(f) for f in data.findings if f.startswith("imagenome:")]
        self.previous, self.target = data.previous_labels()[:, columns], data.target_labels()[:, columns]
        self.planted = None if data.planted is None else data.planted[:, columns]
        split = data.pairs["split"].to_numpy()
        self.train, self.scored = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
        self.embeddings = torch.from_numpy(np.array(data.event_embeddings, dtype=np.float32))  # a writable copy
        self.offsets, self.text_ids = data.event_offsets, data.event_text_ids.astype(np.int64)
        self.n_texts, self.max_events = len(data.texts), data.max_events

    def __len__(self) -> int:
        return len(self.previous)

    def events(self, pair: int) -> torch.Tensor:
        return self.embeddings[self.text_ids[self.offsets[pair]:self.offsets[pair + 1]]]

    def table_encoder(self, trained: bool) -> nn.Module:
        architecture = OmegaConf.to_container(self.config.model.clip, resolve=True)
        torch.manual_seed(0)
        _, encoder = build_clip_encoders(int(self.config.data.image_size), self.embeddings.shape[1], architecture)
        if trained:
            load_part(encoder, Path(self.config.model.clip_checkpoint), "table_encoder", role="the CLIP part",
                      hint="")
        return encoder.eval()

    def tokens(self, encoder: nn.Module | None) -> list[torch.Tensor]:
        """Per pair, its event tokens: the raw embeddings (no encoder) or the encoder's."""
        per_pair = [self.events(i) for i in range(len(self))]
        if encoder is None:
            return per_pair
        with torch.no_grad():
            return [encoder(events[None], torch.ones(1, len(events), dtype=torch.bool))[0] for events in per_pair]


def linear_probe(pairs: Pairs, summary) -> tuple[float, float]:
    """Per finding, a logistic regression on [previous labels, summary × previous, summary × (1 − previous)]."""
    scores = np.zeros((len(pairs.scored), pairs.target.shape[1]))
    for k in range(pairs.target.shape[1]):
        before = pairs.previous[:, k:k + 1]
        if isinstance(summary, csr_matrix):
            features = hstack([csr_matrix(pairs.previous), summary.multiply(before),
                               summary.multiply(1 - before)]).tocsr()
        else:
            features = np.hstack([pairs.previous, summary * before, summary * (1 - before)])
            features = StandardScaler().fit(features[pairs.train]).transform(features)
        model = LogisticRegression(C=0.1, max_iter=2000).fit(features[pairs.train], pairs.target[pairs.train, k])
        scores[:, k] = model.predict_proba(features[pairs.scored])[:, 1]
    return macro_aurocs(pairs.target[pairs.scored], scores,
                        pairs.previous[pairs.scored] != pairs.target[pairs.scored])


class Reader(nn.Module):
    """Cross-attention from learned per-finding queries (plus the previous labels) to a context."""

    def __init__(self, width: int, n_findings: int, adapter: FusionAdapter | None):
        super().__init__()
        self.adapter = adapter
        self.queries = nn.Parameter(torch.randn(n_findings, width) * 0.02)
        self.previous = nn.Linear(n_findings, width)
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.head = nn.Linear(width, 1)
        self.skip = nn.Linear(n_findings, n_findings)

    def forward(self, previous: torch.Tensor, events: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            context = self.adapter(table=events, table_mask=mask)
            padding = None if context.mask is None else ~context.mask
            context = context.tokens
        else:
            context, padding = events, ~mask
        context = self.norm(context)
        queries = self.queries[None] + self.previous(previous)[:, None]
        read, _ = self.attention(queries, context, context, key_padding_mask=padding)
        return self.head(read)[..., 0] + self.skip(previous)


def train_reader(pairs: Pairs, tokens: list[torch.Tensor], context: str, epochs: int = 15) -> tuple[float, float]:
    width = tokens[0].shape[-1]
    previous, target = torch.from_numpy(pairs.previous), torch.from_numpy(pairs.target)

    def batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(tokens[i]) for i in rows)
        events, mask = torch.zeros(len(rows), longest, width), torch.zeros(len(rows), longest, dtype=torch.bool)
        for j, i in enumerate(rows):
            events[j, :len(tokens[i])], mask[j, :len(tokens[i])] = tokens[i], True
        return events, mask

    torch.manual_seed(0)
    adapter = FusionAdapter(width, 64, table_tokens=pairs.max_events) if context == "mixed" else None
    reader = Reader(width, target.shape[1], adapter)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=2e-4)
    order = np.random.default_rng(0)
    for _ in range(epochs):
        for rows in np.array_split(order.permutation(pairs.train), max(1, len(pairs.train) // 32)):
            loss = nn.functional.binary_cross_entropy_with_logits(reader(previous[rows], *batch(rows)), target[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    reader.eval()
    with torch.no_grad():
        scores = torch.cat([reader(previous[rows], *batch(rows))
                            for rows in np.array_split(pairs.scored, max(1, len(pairs.scored) // 128))]).numpy()
    return macro_aurocs(pairs.target[pairs.scored], scores, pairs.previous[pairs.scored] != pairs.target[pairs.scored])


def entropy(outcomes: list[tuple]) -> float:
    _, counts = np.unique(np.array(outcomes), axis=0, return_counts=True)
    shares = counts / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def driver_information(spontaneous_change: float, n_patients: int = 40_000) -> tuple[float, int]:
    """(I(previous state; the next interval's driver outcomes) in nats, intervals simulated)."""
    cohort = draw_cohort(SyntheticCXRConfig(n_patients=n_patients, spontaneous_change=spontaneous_change),
                         np.random.default_rng(0))
    n_studies = cohort.admissions["n_studies"].to_numpy()
    states, outcomes = [], []
    for k in range(1, cohort.chain_states.shape[1]):
        stays = n_studies > k
        states.append(cohort.chain_states[stays, k - 1])
        outcomes.append(cohort.chain_outcomes[stays, k])
    states, outcomes = np.concatenate(states), np.concatenate(outcomes)
    joint = np.hstack([states, outcomes])
    return entropy(states) + entropy(outcomes) - entropy(joint), len(states)


def mean_cosine(vectors: torch.Tensor) -> float:
    """The mean cosine similarity over all pairs of distinct rows."""
    unit = nn.functional.normalize(vectors, dim=1)
    n = len(unit)
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def event_set_similarity(pairs: Pairs) -> dict[str, float]:
    """How alike two scored pairs' events look: their mean raw embeddings against one event
    of each (drawn at random, seed 0). A pair's ~100 events average to nearly the same vector
    for every pair; what tells one pair's events from another's is a small residual of that
    mean."""
    events = [pairs.events(i) for i in pairs.scored]
    draw = np.random.default_rng(0)
    return {"events per pair (median)": float(np.median([len(e) for e in events])),
            "mean embedding of a pair's events": mean_cosine(torch.stack([e.mean(0) for e in events])),
            "one event of each pair": mean_cosine(torch.stack([e[draw.integers(len(e))] for e in events]))}


def latent_shares(pairs: Pairs) -> dict[str, float]:
    """Per-dimension MSE of the target latent on the scored pairs, by what a ridge regression
    (fitted on the training pairs) is given."""
    model = instantiate(pairs.config.model, **pairs.data.datamodule(batch_size=1).model_arguments())

    def latents(images: np.ndarray) -> np.ndarray:
        out = [model.encode(torch.from_numpy(images[start:start + 128]).float().div(255).unsqueeze(1))
               [:, :model.latent_channels].flatten(1) * model.latent_scale for start in range(0, len(images), 128)]
        return torch.cat(out).numpy()

    # the references come split by split; put their rows back in pair order
    references = [pairs.data.reference(split) for split in SPLITS]
    order = np.concatenate([pairs.data.pair_rows(split) for split in SPLITS])
    previous = np.concatenate([latents(r.prev_images) for r in references])[np.argsort(order)]
    target = np.concatenate([latents(r.target_images) for r in references])[np.argsort(order)]

    def error(features: np.ndarray | None) -> float:
        if features is None:
            guess = target[pairs.train].mean(axis=0, keepdims=True)
        else:
            guess = Ridge(alpha=1.0).fit(features[pairs.train], target[pairs.train]).predict(features[pairs.scored])
        return float(((target[pairs.scored] - guess) ** 2).mean())

    labels = np.nan_to_num(pairs.previous, nan=0.5)
    shares = {"nothing": error(None), "previous latent": error(previous),
              "previous latent + labels": error(np.hstack([previous, labels]))}
    if pairs.planted is not None:
        shares["previous latent + labels + true posterior"] = error(np.hstack([previous, labels, pairs.planted]))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an EHRXDiff run directory (its config.yaml names the data and "
                                                   "the CLIP part)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = Pairs(args.run)
    encoders = {"pretrained CLIP table encoder": pairs.table_encoder(trained=True),
                "random table encoder": pairs.table_encoder(trained=False)}
    tokens = {name: pairs.tokens(encoder) for name, encoder in encoders.items()}
    rows = [("previous labels only", linear_probe(pairs, np.zeros((len(pairs), 1))))]
    counts = np.diff(pairs.offsets)
    bag = csr_matrix((np.ones(len(pairs.text_ids)), (np.repeat(np.arange(len(pairs)), counts), pairs.text_ids)),
                     shape=(len(pairs), pairs.n_texts))
    rows.append(("linear: bag of event texts", linear_probe(pairs, bag)))
    rows.append(("linear: mean raw text embedding",
                 linear_probe(pairs, np.stack([pairs.events(i).mean(0).numpy() for i in range(len(pairs))]))))
    for name, per_pair in tokens.items():
        means = np.stack([t.mean(0).numpy() for t in per_pair])
        rows.append((f"linear: mean token, {name}", linear_probe(pairs, means)))
    for name, per_pair in tokens.items():
        for context in ("mixed", "tokens"):
            rows.append((f"reader, {context} context, {name}", train_reader(pairs, per_pair, context)))
    if pairs.planted is not None:
        scored = pairs.scored
        rows.append(("the phantom's true posterior (ceiling)",
                     macro_aurocs(pairs.target[scored], pairs.planted[scored],
                                  pairs.previous[scored] != pairs.target[scored])))
    print(f"{len(pairs.train)} training pairs, {len(pairs.scored)} scored (validation + test)\n")
    print("| probe | All | Diff |\n|---|---:|---:|")
    for name, (every, diff) in rows:
        print(f"| {name} | {every:.3f} | {diff:.3f} |")
    similarity = event_set_similarity(pairs)
    print(f"\nCosine similarity between two scored pairs' events "
          f"({similarity.pop('events per pair (median)'):.0f} per pair, median):")
    for name, value in similarity.items():
        print(f"  {name}: {value:.3f}")
    nats, intervals = driver_information(float(pairs.config.data.source.get("spontaneous_change", 1.0)))
    print(f"\nI(previous state; the next interval's drivers) = {nats:.3f} nats ({intervals} simulated intervals)")
    print("\n| target latent given | per-dimension MSE |\n|---|---:|")
    for name, value in latent_shares(pairs).items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
