"""Benchmark `stage=prepare` of the chest X-ray task on the embedded phantom, cold, as a user
runs it: generate the MIMIC-CXR + MIMIC-IV folder, read it back with the paper's event
selection, build the pairs, decode and cache every image, embed every distinct event text.

    python bench/bench_cxr_prepare.py                      # 2,000 patients
    python bench/bench_cxr_prepare.py --sizes 2000 20000   # issue 11's two sizes

Each size runs `python run.py stage=prepare data=synthetic_cxr task=cxr_forecast` in a fresh
subprocess with an empty cache (so the text-embedding store starts empty too) and reports the
wall time, the peak RSS of that process and what it prepared (data_stats.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(n_patients: int, image_size: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        env = {**os.environ, "EHRLAB_CACHE": str(Path(scratch) / "cache"), "WANDB_MODE": "disabled",
               "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "run.py", "stage=prepare", "data=synthetic_cxr", "task=cxr_forecast", "logger=none",
                   f"data.source.n_patients={n_patients}", f"data.source.image_size={image_size}",
                   f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        # Sizes run in increasing order, so the children's peak is this run's.
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stats = json.loads((run_dir / "data_stats.json").read_text())
    return {"patients": n_patients, "seconds": seconds, "peak_mib": peak_mib, "pairs": stats["n_pairs"],
            "images": stats["n_images"], "event_texts": stats["n_event_texts"], "events": stats["n_events"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000])
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    print("| patients | prepare (s) | peak RSS (MiB) | pairs | images cached | distinct event texts | events over all pairs |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sorted(args.sizes):
        r = one(n, args.image_size)
        print(f"| {r['patients']:,} | {r['seconds']:.0f} | {r['peak_mib']:.0f} | {r['pairs']:,} | {r['images']:,} "
              f"| {r['event_texts']:,} | {r['events']:,} |", flush=True)


if __name__ == "__main__":
    main()
