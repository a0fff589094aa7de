"""Table 2 / Table 3 rows over training seeds × sampling seeds (RESULTS.md, "Three training
seeds"): each row pools the evaluations of runs that differ in their training `seed` only.

For every column it prints the mean over all (training seed, sampling seed) forecasts ± their
sample std, then the spread of the training seeds alone: the sample std of the per-run means
(each run's mean is over its own sampling seeds). Under the table, IG Same and Diff per
training seed, so that a claim can be checked seed by seed (w_null against EHRXDiff at the
same seed: the same autoencoder and CLIP encoders, which are trained per seed).

The runs must share their test set (`split_seed` fixed): a run whose true targets read by
the evaluator score otherwise than the first run's (the GT row of Table 2) was evaluated on
other pairs or with another evaluator, and is refused.

    python results/ehrxdiff_small/seed_table.py --row EHRXDiff <run> <run> <run> \\
        --row w_null <run> <run> <run>

Each run is a run directory with `config.yaml` and `evaluation/evaluation.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from paired_forecasts import read_evaluation  # this folder's script, on the path when run as one

COLUMNS = {  # column: key of an evaluation's per-seed row
    "IG All": "imagenome/auroc_all", "IG Same": "imagenome/auroc_same", "IG Diff": "imagenome/auroc_diff",
    "CX All": "chexpert/auroc_all", "CX Same": "chexpert/auroc_same", "CX Diff": "chexpert/auroc_diff",
    "FID": "fid", "Sex": "sex_auroc", "Age r": "age_pearson",
}


# The test set's fingerprint: pair_id numbers the pairs of each split afresh, so it cannot tell
# two splits apart; the evaluator's AUROCs on the true targets can.
TEST_SET_KEYS = ("test/gt/auroc_all", "test/gt/auroc_same", "test/gt/auroc_diff")


def load_run(run: Path) -> tuple[int, list[dict], tuple[float, ...]]:
    """The run's training seed, its evaluation per sampling seed and its test set's fingerprint."""
    evaluation = read_evaluation(run)
    fingerprint = (evaluation["n_pairs"], *(round(evaluation["metrics"][key], 9) for key in TEST_SET_KEYS))
    return int(OmegaConf.load(run / "config.yaml").seed), evaluation["per_seed"], fingerprint


def row_statistics(runs: list[Path], test_set: tuple | None) -> tuple[dict, dict, tuple]:
    """Per column: (pooled mean, pooled std, std of the per-run means), and per training seed
    the run's mean of each column."""
    per_run: dict[int, dict[str, float]] = {}
    pooled: dict[str, list[float]] = {column: [] for column in COLUMNS}
    for run in runs:
        seed, per_seed, fingerprint = load_run(run)
        if test_set is None:
            test_set = fingerprint
        elif fingerprint != test_set:
            raise SystemExit(f"{run}: its true targets score {fingerprint[1:]} (GT All / Same / Diff), the first "
                             f"run's {test_set[1:]}: another test set (split_seed?) or evaluator")
        if seed in per_run:
            raise SystemExit(f"{run}: a second run of training seed {seed} in one row")
        per_run[seed] = {column: float(np.mean([row[key] for row in per_seed])) for column, key in COLUMNS.items()}
        for column, key in COLUMNS.items():
            pooled[column] += [row[key] for row in per_seed]
    statistics = {
        column: (np.mean(values), np.std(values, ddof=1) if len(values) > 1 else float("nan"),
                 np.std([means[column] for means in per_run.values()], ddof=1) if len(per_run) > 1 else float("nan"))
        for column, values in pooled.items()}
    return statistics, per_run, test_set


def cell(mean: float, std: float, spread: float, column: str) -> str:
    digits = 1 if column == "FID" else 3
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if np.isnan(spread) else f"{text} ({spread:.{digits}f})"  # one run: no training spread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"),
                        help="a row's label, then its runs (one per training seed)")
    args = parser.parse_args(argv)
    test_set = None
    rows = []
    for label, *runs in args.row:
        if not runs:
            parser.error(f"--row {label}: give the row's run directories after its label")
        statistics, per_run, test_set = row_statistics([Path(run) for run in runs], test_set)
        rows.append((label, statistics, per_run))
    print(f"{test_set[0]} test pairs. Each cell: mean ± sample std over every (training seed, sampling seed) "
          "forecast (the training seeds' own spread: the std of the per-run means).\n")
    print("| | n | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for label, statistics, per_run in rows:
        print(f"| {label} | {len(per_run)} runs | "
              + " | ".join(cell(*statistics[column], column) for column in COLUMNS) + " |")
    seeds = sorted({seed for _, _, per_run in rows for seed in per_run})
    print("\nIG Same / Diff per training seed (mean over its sampling seeds):\n")
    print("| | " + " | ".join(f"seed {seed}" for seed in seeds) + " |")
    print("|---|" + "---:|" * len(seeds))
    for label, _, per_run in rows:
        print(f"| {label} | " + " | ".join(
            f"{per_run[seed]['IG Same']:.3f} / {per_run[seed]['IG Diff']:.3f}" if seed in per_run else "–"
            for seed in seeds) + " |")


if __name__ == "__main__":
    main()
