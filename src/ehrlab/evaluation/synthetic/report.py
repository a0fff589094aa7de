"""`report.md`: the suite's results as readable Markdown tables with the plots embedded."""

from __future__ import annotations

import math
from pathlib import Path

HEADLINE = [
    ("nnaar", "NNAAR (target 0)"),
    ("aa_es", "AA_ES"),
    ("aa_ts", "AA_TS"),
    ("mia_accuracy", "MIA accuracy (target 0.5)"),
    ("mia_precision", "MIA precision"),
    ("mia_recall", "MIA recall"),
    ("mia_f1", "MIA F1"),
    ("prevalence_r2", "Prevalence R² (↑)"),
    ("prevalence_pearson", "Prevalence Pearson r (↑)"),
    ("prevalence_rmse", "Prevalence RMSE (↓)"),
    ("reference_prevalence_r2", "Reference R²: held-out vs training real"),
    ("disc_lstm_score", "Discriminator score, LSTM (↑, 1 = indistinguishable)"),
    ("disc_lstm_accuracy", "LSTM discriminator accuracy"),
    ("disc_lstm_auc", "LSTM discriminator ROC AUC"),
    ("disc_random_forest_score", "Discriminator score, Random Forest (↑)"),
    ("disc_random_forest_accuracy", "Random Forest discriminator accuracy"),
    ("disc_random_forest_auc", "Random Forest discriminator ROC AUC"),
]
TABLE13 = [
    ("synthetic_unique_codes", "Unique"),
    ("code_coverage", "Coverage"),
    ("novel_codes", "Novel"),
    ("code_jaccard", "Jaccard"),
    ("prevalence_kl", "KL (↓)"),
    ("prevalence_js", "JS (↓)"),
    ("top10_overlap", "Top-10"),
    ("top50_overlap", "Top-50"),
]
TABLE12 = [
    ("patients", "Patients"),
    ("visits", "Visits"),
    ("visits_per_patient", "Visits/patient"),
    ("codes_per_visit", "Codes/visit"),
    ("codes_per_patient", "Codes/patient"),
    ("unique_codes", "Unique codes"),
]
DATASET_NAMES = {"train": "Real (train)", "test": "Real (held-out)", "synthetic": "Synthetic"}


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _with_ci(entry: dict) -> str:
    text = _number(entry["value"])
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{_number(low)}, {_number(high)}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(evaluation: dict, name: str, caption: str) -> str:
    path = f"plots/{name}.png"
    return f"![{caption}]({path})\n" if path in evaluation["plots"] else ""


def write_report(evaluation: dict, path: Path) -> Path:
    metrics = evaluation["metrics"]
    settings = evaluation["settings"]
    parts = [
        "# Synthetic EHR evaluation",
        "",
        f"Seed 002 §3 and Appendix G. Values with bootstrapped {int(settings['confidence'] * 100)}% intervals "
        f"[low, high] (estimate ± 1.96 bootstrap SD) over {settings['n_bootstrap']} patient resamples "
        f"(seed {settings['seed']}); "
        "synthetic is compared with the real training set unless stated otherwise.",
        "",
        "## Privacy and fidelity (Table 1)",
        "",
        _table(["Metric", "Value [95% CI]"], [[label, _with_ci(metrics[key])] for key, label in HEADLINE if key in metrics]),
        "",
        "Discriminator score = 1 − 2·|accuracy − 0.5| on a class-balanced held-out split.",
        "",
        "## Dataset statistics (Table 12)",
        "",
        _table(
            ["Dataset"] + [label for _, label in TABLE12],
            [
                [DATASET_NAMES[name]] + [_with_ci(data["statistics"][key]) for key, _ in TABLE12]
                for name, data in evaluation["datasets"].items()
            ],
        ),
        "",
        "## Vocabulary coverage and divergence (Table 13)",
        "",
        _table([label for _, label in TABLE13], [[_with_ci(metrics[key]) for key, _ in TABLE13]]),
        "",
        "## Top-50 co-occurrence (Table 14)",
        "",
        _table(
            ["Cosine (↑)", "Frobenius diff (↓)"],
            [[_with_ci(metrics["cooccurrence_cosine"]), _with_ci(metrics["cooccurrence_frobenius"])]],
        ),
        "",
        _plot(evaluation, "cooccurrence_top50", "Top-50 co-occurrence"),
        "## Prevalence per frequency decile (Figure 8)",
        "",
        _table(
            ["Bucket", "Codes", "Real prevalence range", "R²"],
            [
                [d["bucket"], str(d["codes"]), f"{_number(d['real_prevalence_min'])} – {_number(d['real_prevalence_max'])}", _with_ci(d["r2"])]
                for d in evaluation["deciles"]
            ],
        ),
        "",
        _plot(evaluation, "decile_r2", "Per-decile R²"),
        "## Long-tail ablation (Figure 3)",
        "",
        _table(
            ["Percentile kept", "Codes", "Prevalence R²", "Prevalence RMSE", "MIA accuracy", "MIA F1"],
            [
                [f"{row['percentile']:g}", str(row["codes"])]
                + [_with_ci(row[m]) for m in ("prevalence_r2", "prevalence_rmse", "mia_accuracy", "mia_f1")]
                for row in evaluation["long_tail"]
            ],
        ),
        "",
        _plot(evaluation, "long_tail_ablation", "Long-tail ablation"),
        "## Chapter coverage (Figure 12)",
        "",
        _table(
            ["Chapter", "Real (train)", "Synthetic"],
            [[c["chapter"], _number(c["real"]), _number(c["synthetic"])] for c in evaluation["chapters"]],
        ),
        "",
        f"Chapters of the real data present in synthetic: {_with_ci(metrics['chapter_coverage'])}; "
        f"RMSE of chapter prevalence: {_with_ci(metrics['chapter_prevalence_rmse'])}.",
        "",
        _plot(evaluation, "chapter_coverage", "Chapter coverage"),
        "## Top-20 real codes (Figure 5)",
        "",
        _table(
            ["Code", "Real prevalence", "Synthetic prevalence"],
            [[str(row["code"]), _number(row["real"]), _number(row["synthetic"])] for row in evaluation["top_codes"]["real"]],
        ),
        "",
        "## Plots",
        "",
        _plot(evaluation, "zipf_rank_frequency", "Rank-frequency"),
        _plot(evaluation, "top20_prevalence", "Top-20 prevalence"),
        _plot(evaluation, "prevalence_scatter", "Per-code prevalence"),
        _plot(evaluation, "cumulative_prevalence_mass", "Cumulative prevalence mass"),
        _plot(evaluation, "visits_per_patient", "Visits per patient"),
        _plot(evaluation, "codes_per_visit", "Codes per visit"),
        _plot(evaluation, "codes_per_patient", "Codes per patient"),
    ]
    path.write_text("\n".join(parts) + "\n")
    return path
