"""The figures of seed 002's Appendix G, as PNG files (aggregates only, never patient rows).

Figure 4 Zipf rank–frequency, 5 top-20 prevalence, 6 per-code scatter (symlog), 7 cumulative
prevalence mass, 8 per-decile R², 9–11 visits-per-patient / codes-per-visit /
codes-per-patient distributions, 12 chapter coverage, 13 top-50 co-occurrence heatmaps,
and Figure 3's long-tail ablation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ehrlab.evaluation.synthetic.prevalence import percentile_label  # noqa: E402
from ehrlab.evaluation.synthetic.structure import top_codes  # noqa: E402

LABELS = {"train": "real (train)", "test": "real (held-out)", "synthetic": "synthetic"}
COLOURS = {"train": "tab:blue", "test": "tab:green", "synthetic": "tab:orange"}


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def zipf(prevalence: dict[str, np.ndarray], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, values in prevalence.items():
        ranked = np.sort(values[values > 0])[::-1]
        axis.loglog(np.arange(1, len(ranked) + 1), ranked, label=LABELS[name], color=COLOURS[name])
    axis.set(xlabel="code rank", ylabel="patient-level prevalence", title="Rank–frequency (Zipf)")
    axis.legend()
    return _save(figure, path)


def top20(prevalence: dict[str, np.ndarray], vocabulary: np.ndarray, path: Path) -> Path:
    codes = top_codes(prevalence["train"], 20)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(codes))
    axis.bar(x - 0.2, prevalence["train"][codes], 0.4, label=LABELS["train"], color=COLOURS["train"])
    axis.bar(x + 0.2, prevalence["synthetic"][codes], 0.4, label=LABELS["synthetic"], color=COLOURS["synthetic"])
    axis.set_xticks(x, [str(vocabulary[c]).rsplit("//", 1)[-1] for c in codes], rotation=60, ha="right")
    axis.set(ylabel="prevalence", title="Top-20 real codes")
    axis.legend()
    return _save(figure, path)


def scatter(prevalence: dict[str, np.ndarray], r2: float, path: Path) -> Path:
    real, synthetic = prevalence["train"], prevalence["synthetic"]
    union = (real > 0) | (synthetic > 0)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(real[union], synthetic[union], s=4, alpha=0.4, color=COLOURS["synthetic"])
    top = max(real.max(), synthetic.max())
    axis.plot([0, top], [0, top], color="grey", linewidth=1)
    threshold = 1.0 / max(len(real), 1000)
    axis.set_xscale("symlog", linthresh=threshold)
    axis.set_yscale("symlog", linthresh=threshold)
    axis.set(xlabel="real prevalence", ylabel="synthetic prevalence", title=f"Per-code prevalence (R² = {r2:.3f})")
    return _save(figure, path)


def cumulative_mass(prevalence: dict[str, np.ndarray], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, values in prevalence.items():
        ranked = np.sort(values[values > 0])[::-1]
        axis.plot(np.arange(1, len(ranked) + 1), np.cumsum(ranked) / ranked.sum(), label=LABELS[name], color=COLOURS[name])
    axis.set_xscale("log")
    axis.set(xlabel="top-k codes", ylabel="cumulative prevalence mass", title="Cumulative prevalence mass")
    axis.legend()
    return _save(figure, path)


def deciles(scalars: dict[str, float], n_buckets: int, path: Path) -> Path:
    values = [scalars[f"prevalence_r2_q{i:02d}"] for i in range(1, n_buckets + 1)]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.bar([f"Q{i}" for i in range(1, n_buckets + 1)], np.nan_to_num(values, nan=0.0), color=COLOURS["synthetic"])
    axis.axhline(0, color="grey", linewidth=1)
    axis.set(ylabel="R²", title="Prevalence R² per frequency decile (Q1 most frequent)")
    return _save(figure, path)


def count_histograms(records: dict, attribute: str, title: str, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    values = {name: getattr(r, attribute) for name, r in records.items()}
    top = int(min(max(v.max() for v in values.values()), np.percentile(np.concatenate(list(values.values())), 99.5)))
    bins = np.arange(0, top + 2) - 0.5
    for name, v in values.items():
        axis.hist(np.minimum(v, top), bins=bins, density=True, histtype="step", linewidth=1.5,
                  label=LABELS[name], color=COLOURS[name])
    axis.set(xlabel=title, ylabel="share", title=f"{title[0].upper()}{title[1:]} (last bin: ≥ {top})")
    axis.legend()
    return _save(figure, path)


def chapters(names: np.ndarray, chapter_prevalence: dict[str, np.ndarray], path: Path) -> Path:
    shown = np.flatnonzero((chapter_prevalence["train"] > 0) | (chapter_prevalence["synthetic"] > 0))
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.5))
    y = np.arange(len(shown))
    axis.barh(y - 0.2, chapter_prevalence["train"][shown], 0.4, label=LABELS["train"], color=COLOURS["train"])
    axis.barh(y + 0.2, chapter_prevalence["synthetic"][shown], 0.4, label=LABELS["synthetic"], color=COLOURS["synthetic"])
    axis.set_yticks(y, [str(names[i])[:60] for i in shown], fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="fraction of patients with ≥ 1 code in the chapter", title="Chapter coverage")
    axis.legend()
    return _save(figure, path)


def cooccurrence_heatmaps(matrices: dict[str, np.ndarray], path: Path) -> Path:
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    top = max(matrices["train"].max(), matrices["synthetic"].max(), 1e-12)
    difference = matrices["synthetic"] - matrices["train"]
    limit = max(np.abs(difference).max(), 1e-12)
    panels = [(matrices["train"], "real (train)", "viridis", 0, top), (matrices["synthetic"], "synthetic", "viridis", 0, top),
              (difference, "synthetic − real", "RdBu_r", -limit, limit)]
    for axis, (matrix, title, colour_map, low, high) in zip(axes, panels):
        image = axis.imshow(matrix, cmap=colour_map, vmin=low, vmax=high)
        axis.set(title=f"Top-50 co-occurrence: {title}", xlabel="code rank", ylabel="code rank")
        figure.colorbar(image, ax=axis, fraction=0.046)
    return _save(figure, path)


def long_tail(scalars: dict[str, float], percentiles, path: Path) -> Path:
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, metric, title in zip(axes, ("prevalence_r2", "prevalence_rmse", "mia_accuracy"), ("Prevalence R²", "Prevalence RMSE", "MIA accuracy")):
        axis.plot(list(percentiles), [scalars[f"{metric}_{percentile_label(p)}"] for p in percentiles], marker="o",
                  color=COLOURS["synthetic"])
        axis.set(xlabel="percentile of the real vocabulary kept", title=title)
    return _save(figure, path)


def write_all(population, details: dict, scalars: dict[str, float], plot_dir: Path) -> list[Path]:
    """Every figure into `plot_dir`; returns the paths written."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    prevalence = details["prevalence"]
    records = population.records
    written = [
        zipf(prevalence, plot_dir / "zipf_rank_frequency.png"),
        top20(prevalence, population.vocabulary, plot_dir / "top20_prevalence.png"),
        scatter(prevalence, scalars["prevalence_r2"], plot_dir / "prevalence_scatter.png"),
        cumulative_mass(prevalence, plot_dir / "cumulative_prevalence_mass.png"),
        deciles(scalars, len(population.deciles), plot_dir / "decile_r2.png"),
        count_histograms(records, "visits_per_patient", "visits per patient", plot_dir / "visits_per_patient.png"),
        count_histograms(records, "codes_per_visit", "codes per visit", plot_dir / "codes_per_visit.png"),
        count_histograms(records, "codes_per_patient", "codes per patient", plot_dir / "codes_per_patient.png"),
        chapters(population.chapter_names, details["chapters"], plot_dir / "chapter_coverage.png"),
        cooccurrence_heatmaps(details["cooccurrence"], plot_dir / "cooccurrence_top50.png"),
    ]
    if population.long_tail:
        written.append(long_tail(scalars, list(population.long_tail), plot_dir / "long_tail_ablation.png"))
    return written
