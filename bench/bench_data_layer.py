"""Data-layer benchmark: a MIMIC-III-scale source to the heart-failure cohort.

    python bench/bench_data_layer.py [--patients 46000] [--repeats 3]

Generates a synthetic MIMIC-III folder (46,000 patients ≈ 650,000 diagnosis rows, like the
real release), then times, each in a fresh process so that peak memory is per phase:
- cold: read the CSVs through the mimic3 reader, cache the canonical tables, build the
  heart-failure cohort and cache it (what the first `stage=prepare` does);
- cached: the same `prepare` again, served from the caches.
Reports the median wall time of --repeats runs and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASE = r"""
import json, resource, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from ehrlab.config import CONFIG_DIR
from ehrlab.pipeline import prepare
root, cache, run_dir = sys.argv[1:4]
Path(run_dir).mkdir(parents=True, exist_ok=True)
task = OmegaConf.load(CONFIG_DIR / "task" / "heart_failure.yaml")
cfg = OmegaConf.create({"data": {"source": {"_target_": "ehrlab.data.sources.mimic3.MIMIC3Source", "root": root}},
                        "task": task, "cache_dir": cache, "seed": 0})
start = time.perf_counter()
data = prepare(cfg, Path(run_dir))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stats": {k: v for k, v in data.stats.items() if not isinstance(v, dict)}}))
"""


def run_phase(root: Path, cache: Path, run_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PHASE, str(root), str(cache), str(run_dir)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=46_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from ehrlab.data.synthetic import SyntheticConfig, write_synthetic_mimic3

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = write_synthetic_mimic3(tmp / "mimic3", SyntheticConfig(n_patients=args.patients, seed=0))
        print(f"generated {args.patients} patients in {time.perf_counter() - start:.1f} s")
        cold, cached = [], []
        for repeat in range(args.repeats):
            cache = tmp / f"cache{repeat}"
            cold.append(run_phase(root, cache, tmp / "run"))
            cached.append(run_phase(root, cache, tmp / "run"))
        stats = cold[0]["stats"]
        print(f"cohort: {json.dumps(stats)}")
        for name, runs in (("cold", cold), ("cached", cached)):
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = max(r["peak_mib"] for r in runs)
            print(f"{name:>6}: median {seconds:.2f} s over {len(runs)} runs "
                  f"({', '.join(format(r['seconds'], '.2f') for r in runs)}), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
