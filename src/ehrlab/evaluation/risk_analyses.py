"""Analyses of a trained risk model beyond its test metrics: MedDiffusion's §4.6 (seed 000).

The runner calls :func:`run_risk_analyses` in the risk family's evaluate step
(``stage=evaluate`` or ``all``). A model declares which analyses it supports by a class
attribute ``analyses``, a tuple of names from :data:`ANALYSES` (a model without one has
none):

- ``"synthetic_codes"``: Table 5 of seed 000, ``synthetic_codes.md``: the codes the
  diffusion augmentation generates most often, with their rank among the training codes
  and their ICD-9 descriptions; scalars ``analysis/synthetic_top10_in_original_top10``,
  ``analysis/synthetic_original_rank_spearman``, ``analysis/distinct_synthetic_codes``.
- ``"hidden_state_tsne"``: Figure 2 of seed 000, ``tsne_hidden_states.png``: t-SNE of the
  last hidden states of real and generated sequences; scalar
  ``analysis/synthetic_to_real_hidden_distance_ratio``.

Both also report ``analysis/n_synthetic_visits``. These analyses look at what the model
generates inside itself, unlike the rest of ``ehrlab.evaluation``, which reads final
records only; so they read it through a small public surface, which a model declaring them
provides:

- ``augmented_sequences(batch, generator)`` returning ``(visit_embeddings, hidden_states,
  synthetic_visits)``, the ``e_k``, ``h_k`` and ``e'_k`` of one batch, drawn as in training;
- ``backbone.encode``, ``backbone.patient_representation`` and ``backbone.code_embeddings``
  (the :class:`~ehrlab.models.risk.base.RiskBackbone` contract);
- ``vocabulary``, and ``analysis_patients`` (training patients the analyses read) and
  ``tsne_patients`` (how many of them the t-SNE plots).

Reading of §4.6 (the paper feeds single codes through the model): every generated visit
embedding ``e'_k`` of the training patients is mapped to its nearest code embedding
(cosine) in ``W_v``, and codes are ranked by how often they are hit; this uses the
augmentation exactly as in training. ``[PAD]`` (id 0) and ``[UNK]`` (id 1) are not codes and
never a nearest code: ``[UNK]``'s embedding never trains (no training visit holds it), so
its random row would otherwise collect hits. The augmentation's noise comes from a
generator seeded with :data:`ANALYSIS_SEED`, so the analyses of one checkpoint repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import pdist
from scipy.stats import rankdata, spearmanr
from torch import Tensor

from ehrlab.data.codes import icd9_tree_search
from ehrlab.data.schema import DIAGNOSIS_PREFIX, PAD_CODE, UNKNOWN_CODE, strip_namespace

log = logging.getLogger(__name__)

ANALYSES = ("synthetic_codes", "hidden_state_tsne")
ANALYSIS_SEED = 0
TOP_SYNTHETIC_CODES = 10


def run_risk_analyses(model, datamodule, out_dir: Path) -> dict[str, float]:
    """Run the analyses ``model.analyses`` declares on ``datamodule``'s training split,
    writing their files into ``out_dir``; returns their ``analysis/*`` scalars ({} for a
    model that declares none)."""
    names = tuple(getattr(model, "analyses", ()))
    unknown = sorted(set(names) - set(ANALYSES))
    if unknown:
        raise ValueError(f"{type(model).__name__}.analyses names unknown analyses {unknown}; known: {list(ANALYSES)}")
    if not names:
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = augmented_sample(model, datamodule.train_dataloader(), model.analysis_patients, model.tsne_patients)
    results = {"analysis/n_synthetic_visits": float(sample.n_visits)}
    if "synthetic_codes" in names:
        if sample.synthetic_code_counts is None:
            log.warning("backbone %s has no code embedding table: synthetic-code analysis skipped",
                        type(model.backbone).__name__)
        else:
            table, scalars = synthetic_code_table(sample.synthetic_code_counts, datamodule.code_frequencies,
                                                  model.vocabulary, TOP_SYNTHETIC_CODES)
            (out_dir / "synthetic_codes.md").write_text(table)
            results.update(scalars)
    if "hidden_state_tsne" in names:
        results.update(plot_hidden_state_tsne(sample.real_hidden, sample.synthetic_hidden, sample.labels,
                                              out_dir / "tsne_hidden_states.png"))
    return results


@dataclass
class AugmentedSample:
    """What the analyses read from the augmentation over a sample of training patients."""

    synthetic_code_counts: np.ndarray | None  # [vocab_size]: synthetic visits nearest to each code id
    real_hidden: np.ndarray  # [n_tsne, hidden_dim]: h_K of the first tsne_patients patients
    synthetic_hidden: np.ndarray  # [n_tsne, hidden_dim]: h'_K of the same patients
    labels: np.ndarray  # [n_tsne]
    n_visits: int  # synthetic visits counted (every visit of the sampled patients)


@torch.no_grad()
def augmented_sample(model, dataloader, analysis_patients: int, tsne_patients: int) -> AugmentedSample:
    """Run the training-time augmentation (seeded) over batches until ``analysis_patients``
    patients are read; the model is put in eval mode and back."""
    was_training = model.training
    model.eval()
    try:
        return _augmented_sample(model, dataloader, analysis_patients, tsne_patients)
    finally:
        model.train(was_training)


def _augmented_sample(model, dataloader, analysis_patients: int, tsne_patients: int) -> AugmentedSample:
    backbone, device = model.backbone, model.device
    generator = torch.Generator(device=device).manual_seed(ANALYSIS_SEED)
    code_table = backbone.code_embeddings
    counts = code_ids = normalised_codes = None
    if code_table is not None:
        code_ids = torch.as_tensor(np.flatnonzero(_is_code(model.vocabulary)), device=device)
        normalised_codes = F.normalize(code_table[code_ids], dim=-1)
        counts = torch.zeros(len(model.vocabulary), dtype=torch.long, device=device)
    real_hidden, synthetic_hidden, labels = [], [], []
    n_patients = n_visits = n_tsne = 0
    for batch in dataloader:
        if n_patients >= analysis_patients:
            break
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        visit_mask = batch["visit_mask"]
        _, hidden_states, synthetic = model.augmented_sequences(batch, generator)
        if counts is not None:
            nearest = (F.normalize(synthetic[visit_mask], dim=-1) @ normalised_codes.T).argmax(dim=-1)
            counts += torch.bincount(code_ids[nearest], minlength=counts.numel())
        n_visits += int(visit_mask.sum())
        n_patients += visit_mask.shape[0]
        if n_tsne < tsne_patients:
            real_hidden.append(backbone.patient_representation(hidden_states, batch).cpu())
            synthetic_states = backbone.encode(synthetic, batch)
            synthetic_hidden.append(backbone.patient_representation(synthetic_states, batch).cpu())
            labels.append(batch["label"].cpu())
            n_tsne += visit_mask.shape[0]
    return AugmentedSample(
        synthetic_code_counts=counts.cpu().numpy() if counts is not None else None,
        real_hidden=torch.cat(real_hidden)[:tsne_patients].numpy(),
        synthetic_hidden=torch.cat(synthetic_hidden)[:tsne_patients].numpy(),
        labels=torch.cat(labels)[:tsne_patients].numpy(),
        n_visits=n_visits,
    )


def _is_code(vocabulary: list[str]) -> np.ndarray:
    """Per vocabulary id: False for the entries that are not codes, ``[PAD]`` and ``[UNK]``."""
    return ~np.isin(np.asarray(vocabulary, dtype=object), [PAD_CODE, UNKNOWN_CODE])


def synthetic_code_table(
    synthetic_counts: np.ndarray, original_frequencies: np.ndarray, vocabulary: list[str], top: int = 10
) -> tuple[str, dict[str, float]]:
    """Table 5 of seed 000: the ``top`` codes most often generated, their rank in the
    synthetic data R(D_g), in the original training data R(D_o) and ICD-9 descriptions.

    ``synthetic_counts`` and ``original_frequencies`` are indexed by vocabulary id. Ranks
    are 1-based by descending count, ties sharing the best rank, among the codes only
    (``[PAD]`` and ``[UNK]`` are left out). Also returns how many of the synthetic top codes
    are in the original top and the Spearman correlation of the two frequency vectors.
    """
    code_ids = np.flatnonzero(_is_code(vocabulary))
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.float64)[code_ids]
    original_frequencies = np.asarray(original_frequencies, dtype=np.float64)[code_ids]
    synthetic_rank = rankdata(-synthetic_counts, method="min")
    original_rank = rankdata(-original_frequencies, method="min")
    # Most generated first; ties broken by the original frequency then by id, so it is stable.
    order = np.lexsort((np.arange(synthetic_counts.size), -original_frequencies, -synthetic_counts))[:top]
    describe = icd9_describer()

    lines = [
        "# Most frequent codes in the synthetic visits (seed 000, Table 5 style)",
        "",
        f"Each generated visit embedding e'_k is mapped to the code whose embedding in W_v is "
        f"most cosine-similar; {int(synthetic_counts.sum())} synthetic visits in total. "
        "R(D_g): rank among synthetic visits; R(D_o): rank by number of training visits.",
        "",
        "| R(D_g) | R(D_o) | code | synthetic visits | training visits | description |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for index in order:
        code = vocabulary[code_ids[index]]
        lines.append(
            f"| {int(synthetic_rank[index])} | {int(original_rank[index])} | {strip_namespace(code)} "
            f"| {int(synthetic_counts[index])} | {int(original_frequencies[index])} | {describe(code)} |"
        )
    original_top = set(np.argsort(-original_frequencies, kind="stable")[:top])
    overlap = len(original_top.intersection(order.tolist()))
    spearman = float(spearmanr(synthetic_counts, original_frequencies).statistic) if synthetic_counts.size > 1 else float("nan")
    scalars = {
        f"analysis/synthetic_top{top}_in_original_top{top}": float(overlap),
        "analysis/synthetic_original_rank_spearman": spearman,
        "analysis/distinct_synthetic_codes": float(np.count_nonzero(synthetic_counts)),
    }
    return "\n".join(lines) + "\n", scalars


def icd9_describer() -> Callable[[str], str]:
    """``code -> description`` from the offline ICD-9-CM tree (Table 5's description
    column); "" for codes that are not ICD-9 diagnoses or not in the tree."""
    search = icd9_tree_search()

    def describe(code: str) -> str:
        if not code.startswith(f"{DIAGNOSIS_PREFIX}9//"):
            return ""
        node = search(strip_namespace(code))
        return "" if node is None else (node.long_desc or node.short_desc or "")

    return describe


def plot_hidden_state_tsne(
    real_hidden: np.ndarray, synthetic_hidden: np.ndarray, labels: np.ndarray, path: Path
) -> dict[str, float]:
    """Figure 2 of seed 000: t-SNE of the last hidden states h_K (original) and h'_K
    (generated), circles for positive and crosses for negative patients.

    Returns the mean distance between each patient's h_K and h'_K relative to the mean
    distance between distinct patients' h_K (small: synthetic stays near its source).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(labels)
    points = np.concatenate([real_hidden, synthetic_hidden]).astype(np.float64)
    figure, axis = plt.subplots(figsize=(6, 5))
    if n >= 3:
        perplexity = float(min(30.0, (2 * n - 1) / 3.0))
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=ANALYSIS_SEED).fit_transform(points)
        groups = [
            ("Original+", embedded[:n][labels == 1], "tab:blue", "o"),
            ("Original−", embedded[:n][labels == 0], "tab:blue", "x"),
            ("Generated+", embedded[n:][labels == 1], "tab:orange", "o"),
            ("Generated−", embedded[n:][labels == 0], "tab:orange", "x"),
        ]
        for name, xy, colour, marker in groups:
            axis.scatter(xy[:, 0], xy[:, 1], s=14, c=colour, marker=marker, label=f"{name} ({len(xy)})", alpha=0.7)
        axis.legend(frameon=False, fontsize=8)
    axis.set_title(f"t-SNE of last hidden states, {n} patients")
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

    pair_distance = np.linalg.norm(real_hidden - synthetic_hidden, axis=1).mean() if n else float("nan")
    spread = pdist(real_hidden).mean() if n > 1 else float("nan")
    return {"analysis/synthetic_to_real_hidden_distance_ratio": float(pair_distance / spread)}
