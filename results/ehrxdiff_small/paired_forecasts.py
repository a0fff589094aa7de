"""Two or more evaluations of one forecaster's test split, compared seed by seed (RESULTS.md,
"Why the events do not get through": own events, another patient's, 99 % dropped).

The evaluations of one checkpoint share their sampling seeds, so a seed's DDIM noise is the
same in each: the differences between two evaluations at the same seed are the events' doing,
without the seeds' spread (which is larger). For each run after the first it prints, against
the first: the per-seed differences of IG All / Same / Diff AUROC and FID, and the mean
absolute pixel difference of the forecasts (grey levels / 255), beside the same distance
between two sampling seeds of the first run.

Agreement between the seeds says nothing about the test pairs, which every seed shares.
`--bootstrap N` resamples the test pairs N times (with replacement, seed 0), reads every
forecast once with the run's evaluator, and gives each difference of the seed-averaged
weighted macro AUROC (headline label set) a 95 % interval and the share of resamples in which
it is below zero.

    python results/ehrxdiff_small/paired_forecasts.py <own run> <swapped run> <dropped run> [--bootstrap 1000]

Each run is a run directory with `evaluation/evaluation.json`, `forecasts/seed_<s>.npz` and
(for --bootstrap) `config.yaml`; the prepared data and the evaluator come from the cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

SUBSETS = ("all", "same", "diff")


def read_evaluation(run: Path) -> dict:
    """The run's evaluation/evaluation.json (its metrics, and a row per sampling seed)."""
    path = run / "evaluation" / "evaluation.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no {path.relative_to(run)} (not an evaluated run, or its evaluation is not done)")
    return json.loads(path.read_text())


def load(run: Path) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Per sampling seed: the evaluation row and the forecast images (uint8)."""
    evaluation = read_evaluation(run)
    rows = dict(zip(evaluation["seeds"], evaluation["per_seed"], strict=True))
    return rows, {seed: np.load(run / "forecasts" / f"seed_{seed}.npz")["images"] for seed in rows}


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255)


def bootstrap(config_run: Path, images: list[dict[int, np.ndarray]], n: int) -> list[dict[str, np.ndarray]]:
    """Per run, per subset: the seed-averaged headline AUROC on each of `n` resamples of the
    test pairs (the same resamples for every run)."""
    from ehrlab.evaluation.cxr import EvaluationSettings, load_or_train_evaluator
    from ehrlab.evaluation.cxr.forecasts import label_sets
    from ehrlab.evaluation.cxr.metrics import same_diff_masks, weighted_macro_auroc
    from ehrlab.pipeline import prepare

    config = OmegaConf.load(config_run / "config.yaml")
    data = prepare(config, Path(tempfile.mkdtemp()))
    reference = data.reference("test")
    columns = next(iter(label_sets(list(reference.findings)).values()))
    settings = EvaluationSettings.from_config(config.cxr_evaluation)
    evaluator = load_or_train_evaluator(settings.evaluator, data_key=data.cache_key, image_set=data.image_set,
                                        cache_dir=Path(config.cache_dir) if config.cache_dir else None)
    read = [evaluator.findings.index(reference.findings[c]) for c in columns]
    target = reference.target_labels[:, columns]
    masks = same_diff_masks(reference.prev_labels[:, columns], target)
    scores = [[evaluator.predict(per_seed[seed])["label_probs"][:, read] for seed in sorted(per_seed)]
              for per_seed in images]
    draws = np.random.default_rng(0).integers(0, len(target), size=(n, len(target)))
    out = [{subset: np.empty(n) for subset in SUBSETS} for _ in images]
    for b, rows in enumerate(draws):
        for run, per_seed in enumerate(scores):
            for subset in SUBSETS:
                out[run][subset][b] = np.mean([weighted_macro_auroc(target[rows], s[rows], masks[subset][rows])
                                               for s in per_seed])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the reference")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N", help="resamples of the test pairs")
    args = parser.parse_args()
    runs = args.runs
    loaded = [load(run) for run in runs]
    base_rows, base_images = loaded[0]
    seeds = sorted(base_rows)
    if len(seeds) > 1:
        between = np.mean([pixel_distance(base_images[a], base_images[b]) for a, b in itertools.pairwise(seeds)])
        print(f"{runs[0].name}: pixel distance between consecutive sampling seeds {between:.4f}")
    for run, (rows, images) in zip(runs[1:], loaded[1:], strict=True):
        if sorted(rows) != seeds:
            raise SystemExit(f"{run}: sampling seeds {sorted(rows)} differ from {seeds}")
        print(f"{run.name} − {runs[0].name}, per seed {seeds}:")
        for key in [f"auroc_{s}" for s in SUBSETS] + ["fid"]:
            differences = [rows[s][key] - base_rows[s][key] for s in seeds]
            print(f"  {key:<11} " + " ".join(f"{d:+.3f}" for d in differences) + f"   mean {np.mean(differences):+.3f}")
        distance = np.mean([pixel_distance(images[s], base_images[s]) for s in seeds])
        print(f"  pixel distance to the reference's forecasts at the same seed {distance:.4f}")
    if args.bootstrap:
        resampled = bootstrap(runs[0], [images for _, images in loaded], args.bootstrap)
        print(f"\n{args.bootstrap} resamples of the test pairs: difference to {runs[0].name} "
              "(seed-averaged headline AUROC), 95 % interval, share of resamples below 0")
        for run, values in zip(runs[1:], resampled[1:], strict=True):
            for subset in SUBSETS:
                difference = values[subset] - resampled[0][subset]
                low, high = np.nanpercentile(difference, [2.5, 97.5])
                print(f"  {run.name} {subset:<4} {np.nanmean(difference):+.4f} [{low:+.4f}, {high:+.4f}] "
                      f"below 0: {np.mean(difference < 0):.3f}")


if __name__ == "__main__":
    main()
