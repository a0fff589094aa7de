"""Two or more evaluations of one forecaster's test split, compared seed by seed (RESULTS.md,
"Why the events do not get through": own events, another patient's, 99 % dropped).

The evaluations of one checkpoint share their sampling seeds, so a seed's DDIM noise is the
same in each: the differences between two evaluations at the same seed are the events' doing,
without the seeds' spread (which is larger). For each run after the first it prints, against
the first: the per-seed differences of IG All / Same / Diff AUROC and FID, and the mean
absolute pixel difference of the forecasts (grey levels / 255), beside the same distance
between two sampling seeds of the first run.

    python results/ehrxdiff_small/paired_forecasts.py <own run> <swapped run> <dropped run>

Each run is a run directory with `evaluation/evaluation.json` and `forecasts/seed_<s>.npz`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

SUBSETS = ("all", "same", "diff")


def load(run: Path) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Per sampling seed: the evaluation row and the forecast images (float in [0, 1])."""
    path = run / "evaluation" / "evaluation.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no {path.relative_to(run)} (not an evaluated run, or its evaluation is not done)")
    evaluation = json.loads(path.read_text())
    rows = dict(zip(evaluation["seeds"], evaluation["per_seed"], strict=True))
    images = {}
    for seed in rows:
        saved = np.load(run / "forecasts" / f"seed_{seed}.npz")
        images[seed] = saved["images"].astype(np.float32) / 255
    return rows, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the reference")
    runs = parser.parse_args().runs
    base_rows, base_images = load(runs[0])
    seeds = sorted(base_rows)
    if len(seeds) > 1:
        between = np.mean([np.abs(base_images[a] - base_images[b]).mean() for a, b in itertools.pairwise(seeds)])
        print(f"{runs[0].name}: pixel distance between consecutive sampling seeds {between:.4f}")
    for run in runs[1:]:
        rows, images = load(run)
        if sorted(rows) != seeds:
            raise SystemExit(f"{run}: sampling seeds {sorted(rows)} differ from {seeds}")
        print(f"{run.name} − {runs[0].name}, per seed {seeds}:")
        for key in [f"auroc_{s}" for s in SUBSETS] + ["fid"]:
            differences = [rows[s][key] - base_rows[s][key] for s in seeds]
            print(f"  {key:<11} " + " ".join(f"{d:+.3f}" for d in differences) + f"   mean {np.mean(differences):+.3f}")
        distance = np.mean([np.abs(images[s] - base_images[s]).mean() for s in seeds])
        print(f"  pixel distance to the reference's forecasts at the same seed {distance:.4f}")


if __name__ == "__main__":
    main()
