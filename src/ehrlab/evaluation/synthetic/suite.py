"""The synthetic-EHR evaluation suite of seed 002 (§3, Appendix G) as one call.

`evaluate_synthetic` reads three long tables (real training, real held-out, synthetic),
knows nothing about the generator, and writes into `out_dir`:
- `evaluation.json`: every result, nested, with bootstrap intervals;
- `report.md`: the tables and the plots;
- `plots/*.png` (listed by `plot_paths`).
It returns a flat dict of scalars named `eval/<metric>`, `eval/<metric>_ci_low`,
`eval/<metric>_ci_high`. Only aggregates leave this function: no patient-level row is
returned, logged, plotted or written.

Which real set is compared with what: prevalence, Table 13, chapters and co-occurrence
compare synthetic with the real *training* set (what the generator was fit to); the
held-out set plays its §3.2 role in NNAAR and MIA, and appears as a reference ("held-out vs
training") so a reader can see the fit two real samples reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from ehrlab.errors import UserInputError
from ehrlab.evaluation.synthetic import plots, report
from ehrlab.evaluation.synthetic.bootstrap import confidence_intervals, resample_indices, resample_weights
from ehrlab.evaluation.synthetic.chapters import chapters_of
from ehrlab.evaluation.synthetic.defaults import DEFAULTS
from ehrlab.evaluation.synthetic.discriminator import (
    DiscriminatorResult,
    discriminator_scores,
    lstm_discriminator,
    random_forest_discriminator,
)
from ehrlab.evaluation.synthetic.prevalence import (
    LONG_TAIL_PERCENTILES,
    frequency_buckets,
    long_tail_code_sets,
    percentile_label,
    prevalence,
    prevalence_fit,
)
from ehrlab.evaluation.synthetic.privacy import (
    PrivacyDistances,
    attack_distances,
    attack_sample,
    farther_scores,
    membership_inference,
    privacy_distances,
)
from ehrlab.evaluation.synthetic.records import PatientRecords, build_records, check_comparable
from ehrlab.evaluation.synthetic.structure import (
    TOP_K,
    chapter_incidence,
    chapter_prevalence_from,
    code_pair_incidence,
    cooccurrence_from_pairs,
    cooccurrence_similarity,
    count_distribution,
    dataset_statistics,
    top_codes,
    vocabulary_overlap,
)
from ehrlab.serialization import write_json

SETS = ("train", "test", "synthetic")
METRIC_PREFIX = "eval/"
N_COOCCURRENCE_CODES = 50


@dataclass
class _Population:
    """What the population metrics of one call need, computed once from the full data."""

    records: dict[str, PatientRecords]
    vocabulary: np.ndarray
    chapter_names: np.ndarray
    code_chapter: np.ndarray
    deciles: list[np.ndarray]
    long_tail: dict[float, np.ndarray]
    cooccurrence_codes: np.ndarray
    # Weight-independent parts of the chapter and co-occurrence metrics of "train" and
    # "synthetic", built once so that each bootstrap resample is a few sparse products.
    has_chapter: dict[str, sparse.csr_matrix]
    code_pairs: dict[str, sparse.csr_matrix]


def _population_metrics(population: _Population, weights: dict[str, np.ndarray | None]) -> tuple[dict, dict]:
    """(flat scalars, detail vectors) of everything that is a sum over patients.

    weights[name] counts each patient of a set (None = every patient once); the bootstrap
    calls this with resampling weights.
    """
    records = population.records
    prev = {name: prevalence(records[name].patient_codes, weights[name]) for name in SETS}
    real, synthetic = prev["train"], prev["synthetic"]
    union = (real > 0) | (synthetic > 0)
    scalars: dict[str, float] = {}
    for key, value in prevalence_fit(real[union], synthetic[union]).items():
        scalars[f"prevalence_{key}"] = value
    reference_union = (real > 0) | (prev["test"] > 0)
    for key, value in prevalence_fit(real[reference_union], prev["test"][reference_union]).items():
        scalars[f"reference_prevalence_{key}"] = value
    for number, bucket in enumerate(population.deciles, start=1):
        scalars[f"prevalence_r2_q{number:02d}"] = prevalence_fit(real[bucket], synthetic[bucket])["r2"]
    for percentile, codes in population.long_tail.items():
        fit = prevalence_fit(real[codes], synthetic[codes])
        scalars[f"prevalence_r2_{percentile_label(percentile)}"] = fit["r2"]
        scalars[f"prevalence_rmse_{percentile_label(percentile)}"] = fit["rmse"]
    for name in SETS:
        for key, value in dataset_statistics(records[name], weights[name]).items():
            scalars[f"{name}_{key}"] = value
    overlap = vocabulary_overlap(real, synthetic)
    scalars.update(
        code_coverage=overlap["coverage"],
        novel_codes=overlap["novel_codes"],
        code_jaccard=overlap["jaccard"],
        prevalence_kl=overlap["kl"],
        prevalence_js=overlap["js"],
    )
    for k in TOP_K:
        scalars[f"top{k}_overlap"] = overlap[f"top{k}_overlap"]
    chapters = {name: chapter_prevalence_from(population.has_chapter[name], weights[name])
                for name in ("train", "synthetic")}
    real_chapters = chapters["train"] > 0
    scalars["chapter_coverage"] = float(np.mean(chapters["synthetic"][real_chapters] > 0)) if real_chapters.any() else math.nan
    scalars["chapter_prevalence_rmse"] = float(np.sqrt(np.mean((chapters["train"] - chapters["synthetic"]) ** 2)))
    k = len(population.cooccurrence_codes)
    matrices = {name: cooccurrence_from_pairs(population.code_pairs[name], k, weights[name])
                for name in ("train", "synthetic")}
    similarity = cooccurrence_similarity(matrices["train"], matrices["synthetic"])
    scalars["cooccurrence_cosine"] = similarity["cosine"]
    scalars["cooccurrence_frobenius"] = similarity["frobenius"]
    return scalars, {"prevalence": prev, "chapters": chapters, "cooccurrence": matrices}


@dataclass
class _PrivacyInputs:
    """Per-record quantities NNAAR and MIA average over, so resamples only re-index them."""

    farther: dict[str, np.ndarray]  # AA terms per record: "test", "train", "synthetic_vs_test", "synthetic_vs_train"
    attacks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # suffix -> member d, non-member d, tie order


def _privacy_inputs(d: PrivacyDistances, attacks: dict) -> _PrivacyInputs:
    return _PrivacyInputs(
        farther={
            "test": farther_scores(d.test_to_synthetic, d.test_to_test),
            "train": farther_scores(d.train_to_synthetic, d.train_to_train),
            "synthetic_vs_test": farther_scores(d.synthetic_to_test, d.synthetic_to_synthetic),
            "synthetic_vs_train": farther_scores(d.synthetic_to_train, d.synthetic_to_synthetic),
        },
        attacks=attacks,
    )


def _privacy_metrics(inputs: _PrivacyInputs, rng: np.random.Generator | None) -> dict[str, float]:
    """NNAAR (§3.2) and MIA scalars; with `rng`, on a resample of the records (neighbours fixed)."""

    def rows(n: int):
        return slice(None) if rng is None else resample_indices(n, rng)

    farther = inputs.farther
    synthetic_rows = rows(len(farther["synthetic_vs_test"]))  # one synthetic resample for both AAs

    def mean(name: str, picked) -> float:
        return float(farther[name][picked].mean())

    aa_es = 0.5 * (mean("test", rows(len(farther["test"]))) + mean("synthetic_vs_test", synthetic_rows))
    aa_ts = 0.5 * (mean("train", rows(len(farther["train"]))) + mean("synthetic_vs_train", synthetic_rows))
    scalars = {"aa_es": aa_es, "aa_ts": aa_ts, "nnaar": aa_es - aa_ts}
    for suffix, (member_d, non_member_d, tie_order) in inputs.attacks.items():
        n = len(member_d)
        member_rows, non_member_rows = rows(n), rows(n)  # stratified: each side resampled on its own
        tie_order = np.concatenate([tie_order[:n][member_rows], tie_order[n:][non_member_rows]])
        for key, value in membership_inference(member_d[member_rows], non_member_d[non_member_rows], tie_order).items():
            scalars[f"mia_{key}{suffix}"] = value
    return scalars


def _discriminator_metrics(results: dict[str, DiscriminatorResult], rng: np.random.Generator | None) -> dict[str, float]:
    """Scores of each discriminator; with `rng`, on a class-stratified resample of its test set."""
    scalars = {}
    for name, result in results.items():
        labels, probabilities = result.labels, result.probabilities
        if rng is not None:
            rows = np.concatenate(
                [np.flatnonzero(labels == c)[resample_indices(int(np.sum(labels == c)), rng)] for c in (0, 1)]
            )
            labels, probabilities = labels[rows], probabilities[rows]
        for key, value in discriminator_scores(labels, probabilities).items():
            scalars[f"disc_{name}_{key}"] = value
    return scalars


def evaluate_synthetic(
    train: pd.DataFrame,
    test: pd.DataFrame,
    synthetic: pd.DataFrame,
    out_dir: Path,
    *,
    n_bootstrap: int = DEFAULTS.n_bootstrap,
    seed: int = DEFAULTS.seed,
    discriminator_epochs: int = DEFAULTS.discriminator_epochs,
    progress: bool = True,
    discriminators: tuple[str, ...] = DEFAULTS.discriminators,
    random_forest_trees: int = 100,
    n_jobs: int = -1,
    long_tail_percentiles: tuple[float, ...] = LONG_TAIL_PERCENTILES,
    long_tail_max_records: int | None = 2000,
    mia_max_records: int | None = None,
    write_plots: bool = True,
) -> dict[str, float]:
    """Run the whole suite; see the module docstring for what is written and returned.

    n_bootstrap: resamples for the 95% intervals (0 = no intervals).
    discriminators: any of "lstm" (Appendix E.1) and "random_forest" (E.2).
    The defaults of n_bootstrap, seed, discriminator_epochs and discriminators come from
    `defaults.DEFAULTS`, as do those of `python -m ehrlab.evaluate` and the run config's.
    long_tail_max_records: members (and as many non-members) per long-tail MIA rerun; the
        headline NNAAR and MIA always use the full sets, the seven reruns of the ablation are
        subsampled to this size by default to bound the cost (None = full sets).
    mia_max_records: cap on the headline MIA's members (None = the smaller real set).
    n_jobs: threads of the nearest-neighbour distances and the Random Forest (joblib's
        convention: -1 = every core).

    Raises UserInputError, before writing anything, for tables that cannot be compared: a
    missing column, an empty set, integer codes next to code strings, or a held-out or
    synthetic set sharing no code with the training set (`records.check_comparable`).
    """
    unknown = set(discriminators) - {"lstm", "random_forest"}
    if unknown:
        raise UserInputError(f"unknown discriminator(s) {sorted(unknown)}: choose from 'lstm', 'random_forest'.")
    check_comparable({"train": train, "test": test, "synthetic": synthetic})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    steps = tqdm(total=6 + len(discriminators), desc="evaluate synthetic", disable=not progress)

    steps.set_postfix_str("records")
    vocabulary, records = build_records({"train": train, "test": test, "synthetic": synthetic})
    chapter_names, code_chapter = chapters_of(vocabulary)
    real_prevalence = prevalence(records["train"].patient_codes)
    cooccurrence_codes = top_codes(real_prevalence, N_COOCCURRENCE_CODES)
    population = _Population(
        records=records,
        vocabulary=vocabulary,
        chapter_names=chapter_names,
        code_chapter=code_chapter,
        deciles=frequency_buckets(real_prevalence),
        long_tail=long_tail_code_sets(real_prevalence, long_tail_percentiles),
        cooccurrence_codes=cooccurrence_codes,
        has_chapter={name: chapter_incidence(records[name].patient_codes, code_chapter, len(chapter_names))
                     for name in ("train", "synthetic")},
        code_pairs={name: code_pair_incidence(records[name].patient_codes, cooccurrence_codes)
                    for name in ("train", "synthetic")},
    )
    steps.update()

    steps.set_postfix_str("prevalence and structure")
    scalars, details = _population_metrics(population, dict.fromkeys(SETS))
    steps.update()

    steps.set_postfix_str("NNAAR and MIA")
    distances = privacy_distances(records["train"], records["test"], records["synthetic"], n_jobs=n_jobs)
    members, non_members = attack_sample(records["train"].n_patients, records["test"].n_patients, rng, mia_max_records)
    attacks = {"": (distances.train_to_synthetic[members], distances.test_to_synthetic[non_members], rng.random(2 * len(members)))}
    steps.update()

    steps.set_postfix_str("long-tail MIA")
    for percentile, codes in population.long_tail.items():
        mask = np.zeros(len(vocabulary), bool)
        mask[codes] = True
        tail_members, tail_non_members = attack_sample(
            records["train"].n_patients, records["test"].n_patients, rng, long_tail_max_records
        )
        member_d, non_member_d = attack_distances(
            records["train"], records["test"], records["synthetic"], tail_members, tail_non_members, mask, n_jobs
        )
        attacks[f"_{percentile_label(percentile)}"] = (member_d, non_member_d, rng.random(2 * len(member_d)))
    privacy_inputs = _privacy_inputs(distances, attacks)
    scalars.update(_privacy_metrics(privacy_inputs, None))
    steps.update()

    results: dict[str, DiscriminatorResult] = {}
    for name in discriminators:
        steps.set_postfix_str(f"{name} discriminator")
        if name == "lstm":
            results[name] = lstm_discriminator(records["train"], records["synthetic"], seed=seed, epochs=discriminator_epochs)
        else:
            results[name] = random_forest_discriminator(
                records["train"], records["synthetic"], seed=seed, n_estimators=random_forest_trees, n_jobs=n_jobs
            )
        steps.update()
    scalars.update(_discriminator_metrics(results, None))

    steps.set_postfix_str(f"bootstrap x{n_bootstrap}")
    replicates = []
    for _ in range(n_bootstrap):
        weights = {name: resample_weights(records[name].n_patients, rng) for name in SETS}
        replicate, _ = _population_metrics(population, weights)
        replicate.update(_privacy_metrics(privacy_inputs, rng))
        replicate.update(_discriminator_metrics(results, rng))
        replicates.append(replicate)
    intervals = confidence_intervals(scalars, replicates)
    steps.update()

    steps.set_postfix_str("report")
    plot_files = plots.write_all(population, details, scalars, out_dir / "plots") if write_plots else []
    evaluation = _nested_results(population, details, scalars, intervals, n_bootstrap, seed, plot_files, out_dir)
    write_json(out_dir / "evaluation.json", evaluation)
    report.write_report(evaluation, out_dir / "report.md")
    steps.update()
    steps.close()
    return flat_metrics(scalars, intervals)


def flat_metrics(scalars: dict[str, float], intervals: dict[str, tuple[float, float]]) -> dict[str, float]:
    """`eval/<name>` plus `_ci_low` / `_ci_high` where an interval exists."""
    flat = {}
    for name, value in scalars.items():
        flat[f"{METRIC_PREFIX}{name}"] = float(value)
        if name in intervals:
            flat[f"{METRIC_PREFIX}{name}_ci_low"], flat[f"{METRIC_PREFIX}{name}_ci_high"] = intervals[name]
    return flat


def plot_paths(out_dir: Path) -> list[Path]:
    """The PNG plots an evaluation wrote into `out_dir` (for a logger to upload as images)."""
    return sorted((Path(out_dir) / "plots").glob("*.png"))


def _nested_results(population, details, scalars, intervals, n_bootstrap, seed, plot_files, out_dir) -> dict:
    """The content of evaluation.json: aggregates only."""
    vocabulary = population.vocabulary
    prev = details["prevalence"]

    def with_ci(name: str) -> dict:
        low, high = intervals.get(name, (math.nan, math.nan))
        return {"value": scalars[name], "ci_low": low, "ci_high": high}

    top_real = top_codes(prev["train"], 20)
    top_synthetic = top_codes(prev["synthetic"], 20)
    records = population.records
    return {
        "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "confidence": 0.95},
        "metrics": {name: with_ci(name) for name in scalars},
        "datasets": {
            name: {
                "statistics": {key: with_ci(f"{name}_{key}") for key in dataset_statistics(records[name])},
                "visits_per_patient": count_distribution(records[name].visits_per_patient),
                "codes_per_visit": count_distribution(records[name].codes_per_visit),
                "codes_per_patient": count_distribution(records[name].codes_per_patient),
            }
            for name in SETS
        },
        "top_codes": {
            "real": [
                {"code": vocabulary[c], "real": prev["train"][c], "synthetic": prev["synthetic"][c]} for c in top_real
            ],
            "synthetic": [
                {"code": vocabulary[c], "real": prev["train"][c], "synthetic": prev["synthetic"][c]}
                for c in top_synthetic
            ],
        },
        "deciles": [
            {
                "bucket": f"Q{number}",
                "codes": len(bucket),
                "real_prevalence_min": float(prev["train"][bucket].min()) if len(bucket) else math.nan,
                "real_prevalence_max": float(prev["train"][bucket].max()) if len(bucket) else math.nan,
                "r2": with_ci(f"prevalence_r2_q{number:02d}"),
            }
            for number, bucket in enumerate(population.deciles, start=1)
        ],
        "long_tail": [
            {
                "percentile": percentile,
                "codes": len(codes),
                **{
                    metric: with_ci(f"{metric}_{percentile_label(percentile)}")
                    for metric in ("prevalence_r2", "prevalence_rmse", "mia_accuracy", "mia_f1")
                },
            }
            for percentile, codes in population.long_tail.items()
        ],
        "chapters": [
            {"chapter": chapter, "real": details["chapters"]["train"][i], "synthetic": details["chapters"]["synthetic"][i]}
            for i, chapter in enumerate(population.chapter_names)
        ],
        "cooccurrence": {
            "codes": [vocabulary[c] for c in population.cooccurrence_codes],
            "real": details["cooccurrence"]["train"],
            "synthetic": details["cooccurrence"]["synthetic"],
        },
        "plots": [str(path.relative_to(out_dir)) for path in plot_files],
    }
