"""Seed 002's tables and figures from a sweep of generators (``sweep=generators``).

`ehrlab.report` calls `generator_sections` when a sweep compares models whose jobs carry the
synthetic-EHR evaluation (``eval/…`` metrics). Each table has one row per generator, in the
paper's order (sequential models, then flat ones), followed by any other model:

- Table 1: Disc. Score (Random Forest for flat generators, LSTM for sequential ones: the
  family writes it as ``eval/disc_score``), prevalence R², Pearson and RMSE, NNAAR, MIA
  accuracy and F1;
- Table 12: descriptive statistics of each synthetic set beside the real training and
  held-out sets;
- Tables 2 and 13: unique codes emitted, coverage of the real vocabulary, novel codes, Jaccard,
  KL and JS divergence of the prevalence distributions, top-k overlap;
- Table 14: the co-occurrence matrices over the 50 most common real codes (cosine, Frobenius);
- Figure 3: the long-tail ablation (prevalence R² and RMSE, MIA accuracy and F1 at the 75th to
  99th percentile), every generator in one figure; Figure 8: prevalence R² per frequency decile.

A cell of one job shows the value and its bootstrap 95% interval from the evaluation
(``value [low, high]``); a cell of several jobs (seeds) shows mean ± sample std over them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ehrlab.evaluation.synthetic.prevalence import LONG_TAIL_PERCENTILES, percentile_label
from ehrlab.evaluation.synthetic.structure import TOP_K

PAPER_ORDER = ("halo", "halo_small", "promptehr", "promptehr_small", "gpt_paper", "gpt", "medgan", "medgan_count", "corgan")
TABLE1 = (("Disc. Score", "eval/disc_score"), ("Prevalence R²", "eval/prevalence_r2"),
          ("Pearson", "eval/prevalence_pearson"), ("RMSE", "eval/prevalence_rmse"), ("NNAAR", "eval/nnaar"),
          ("MIA accuracy", "eval/mia_accuracy"), ("MIA F1", "eval/mia_f1"))
STATISTICS = (("patients", "patients"), ("visits", "visits"), ("visits/patient", "visits_per_patient"),
              ("codes/visit", "codes_per_visit"), ("codes/patient", "codes_per_patient"),
              ("unique codes", "unique_codes"))
TABLE13 = (("unique codes", "eval/synthetic_unique_codes"), ("coverage", "eval/code_coverage"),
           ("novel codes", "eval/novel_codes"), ("Jaccard", "eval/code_jaccard"), ("KL", "eval/prevalence_kl"),
           ("JS", "eval/prevalence_js"), *((f"top-{k} overlap", f"eval/top{k}_overlap") for k in TOP_K))
TABLE14 = (("cosine", "eval/cooccurrence_cosine"), ("Frobenius", "eval/cooccurrence_frobenius"))
LONG_TAIL_PANELS = (("prevalence R²", "eval/prevalence_r2"), ("prevalence RMSE", "eval/prevalence_rmse"),
                    ("MIA accuracy", "eval/mia_accuracy"), ("MIA F1", "eval/mia_f1"))
COUNT_SUFFIXES = ("patients", "visits", "unique_codes", "novel_codes", "_overlap")  # whole numbers


def is_generator_comparison(summary: pd.DataFrame) -> bool:
    return "model" in summary and summary["metric"].eq("eval/prevalence_r2").any()


def _model_order(models) -> list[str]:
    known = [m for m in PAPER_ORDER if m in set(models)]
    return known + sorted(set(models) - set(known))


def _number(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric.endswith(COUNT_SUFFIXES) or abs(value) >= 100:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return f"{value:.3f}"


class _Cells:
    """Look-ups into the summary (model × metric → mean, std, n)."""

    def __init__(self, summary: pd.DataFrame):
        self.frame = summary.set_index(["model", "metric"])

    def stat(self, model: str, metric: str, column: str = "mean") -> float:
        try:
            return float(self.frame.loc[(model, metric), column])
        except KeyError:
            return math.nan

    def cell(self, model: str, metric: str) -> str:
        mean, n = self.stat(model, metric), self.stat(model, metric, "n")
        if math.isnan(mean):
            return "–"
        if n > 1:
            return f"{_number(mean, metric)} ± {_number(self.stat(model, metric, 'std'), metric)}"
        low, high = self.stat(model, f"{metric}_ci_low"), self.stat(model, f"{metric}_ci_high")
        if math.isnan(low) or math.isnan(high) or metric.endswith(COUNT_SUFFIXES):
            # counts (patients, unique codes, top-k overlap) are shown without the interval
            # that resampling patients gives them: it says little about a count
            return _number(mean, metric)
        return f"{_number(mean, metric)} [{_number(low, metric)}, {_number(high, metric)}]"

    def jobs(self, model: str) -> str:
        return f"{self.stat(model, 'eval/prevalence_r2', 'n'):.0f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _metric_table(cells: _Cells, models: list[str], columns) -> str:
    return _table([[model, cells.jobs(model), *(cells.cell(model, metric) for _, metric in columns)]
                   for model in models], ["model", "n", *(name for name, _ in columns)])


def _statistics_table(cells: _Cells, models: list[str]) -> str:
    # The real sets are the same for every job on one data source: the first model's jobs show them.
    rows = [[f"real {name}", "", *(_number(cells.stat(models[0], f"eval/{prefix}_{key}"), key) for _, key in STATISTICS)]
            for prefix, name in (("train", "training"), ("test", "held-out"))]
    rows += [[model, cells.jobs(model), *(cells.cell(model, f"eval/synthetic_{key}") for _, key in STATISTICS)]
             for model in models]
    return _table(rows, ["set", "n", *(name for name, _ in STATISTICS)])


R2_FLOOR = -1.0  # R² panels are linear down to here, logarithmic below (worse than a constant)


def _line_figure(cells: _Cells, models: list[str], panels, points: list[tuple[str, str]], xlabel: str,
                 path: Path) -> Path | None:
    """One panel per metric, one line per generator over the points (suffix, tick label); error
    bars: the bootstrap interval of a single job, or ± std over several. An R² panel whose lines
    fall below ``R2_FLOOR`` turns logarithmic beyond it (one failed generator at R² = −270 would
    otherwise flatten every other line). None when no job has these metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    positions = range(len(points))
    drawn = False
    for ax, (title, metric) in zip(axes[0], panels):
        off_scale = False
        for model in models:
            keys = [f"{metric}_{suffix}" for suffix, _ in points]
            means = [cells.stat(model, key) for key in keys]
            if all(math.isnan(m) for m in means):
                continue
            if all(cells.stat(model, key, "n") > 1 for key in keys):
                errors = [[cells.stat(model, key, "std") for key in keys]] * 2
            else:
                errors = [[m - cells.stat(model, f"{key}_ci_low") for m, key in zip(means, keys)],
                          [cells.stat(model, f"{key}_ci_high") - m for m, key in zip(means, keys)]]
            ax.errorbar(positions, means, yerr=errors, marker="o", capsize=3, label=model)
            drawn = True
            if metric.endswith("_r2") and min(means) < R2_FLOOR:
                off_scale = True
        if off_scale:  # linear in [-1, 1], logarithmic beyond: every line stays readable
            ax.set_yscale("symlog", linthresh=-R2_FLOOR)
            ax.set_title(f"{title}\n(log scale below {R2_FLOOR:g})")
        else:
            ax.set_title(title)
        ax.set_xticks(list(positions), [label for _, label in points])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def generator_sections(summary: pd.DataFrame, out_dir: Path) -> tuple[str, list[Path]]:
    """Markdown of seed 002's tables for the generators in ``summary`` and the figures' paths."""
    models = _model_order(summary["model"].unique())
    cells = _Cells(summary)
    n = summary.loc[summary["metric"] == "eval/prevalence_r2", "n"]
    spread = ("value [bootstrap 95% interval] of the one job (n) of each generator" if n.max() == 1 else
              "mean ± sample std over each generator's n completed jobs (seeds); where n = 1, the value "
              "[bootstrap 95% interval]")
    text = [
        "## Seed 002: the generators side by side",
        f"Cells: {spread}. Every metric of every job: summary.csv.",
        "### Table 1: fidelity, utility, privacy",
        ("Disc. Score: 1 − 2|accuracy − 0.5| of the Random Forest for flat generators and of the LSTM for "
         "sequential ones (higher: harder to tell from real). Prevalence: per-code patient prevalence against "
         "the real training set. NNAAR and MIA: nearest-neighbour privacy attacks (0 and 0.5 are ideal)."),
        _metric_table(cells, models, TABLE1),
        "### Table 12: the synthetic sets",
        _statistics_table(cells, models),
        "### Tables 2 and 13: vocabulary coverage",
        _metric_table(cells, models, TABLE13),
        "### Table 14: co-occurrence of the 50 most common real codes",
        _metric_table(cells, models, TABLE14),
    ]
    percentiles = [(percentile_label(p), f"{p:g}") for p in LONG_TAIL_PERCENTILES]
    deciles = [(f"q{number:02d}", f"Q{number}") for number in range(1, 11)]
    figures = [
        _line_figure(cells, models, LONG_TAIL_PANELS, percentiles, "% of the real vocabulary, most prevalent first",
                     out_dir / "figure3_long_tail.png"),
        _line_figure(cells, models, (("prevalence R² per frequency decile", "eval/prevalence_r2"),), deciles,
                     "decile (Q1: the most frequent codes)", out_dir / "figure8_deciles.png"),
    ]
    return "\n\n".join(text), [path for path in figures if path is not None]
