"""Benchmark preparing `data=synthetic_cxr`: generating the phantom folder and reading it
back through the MIMIC-CXR reader (the paper's event selection), at several sizes.

    python bench/bench_cxr_phantom.py                      # 2,000 patients
    python bench/bench_cxr_phantom.py --sizes 2000 20000   # issue 11's two sizes (the larger takes minutes)

Each size runs in a fresh subprocess (so its peak RSS is its own) in a temporary cache.
Reports seconds to generate (images, events, truth), seconds to read back, the peak RSS,
the folder's size, the counts (images, events, planted pairs) and the number of distinct
event texts (what the task embeds, ~190 strings/s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(n_patients: int, image_size: int) -> dict:
    import yaml

    from ehrlab.data.sources.synthetic_cxr import SyntheticCXRSource

    selection = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/data/event_selection/paper.yaml")
                               .read_text())
    with tempfile.TemporaryDirectory() as cache:
        source = SyntheticCXRSource(cache_dir=cache, event_selection=selection, progress=False,
                                    n_patients=n_patients, image_size=image_size)
        start = time.perf_counter()
        root = source.root  # generates
        generated = time.perf_counter() - start
        start = time.perf_counter()
        tables = source.read()
        read = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
        counts = {
            "frontal_images_kept": len(tables.images), "events": len(tables.events),
            "distinct_event_texts": int(tables.events.text.nunique()), "planted_pairs": len(tables.planted)}
    return {"n_patients": n_patients, "image_size": image_size, "generate_s": round(generated, 1),
            "read_s": round(read, 1), "folder_mb": round(size / 2 ** 20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.image_size)))
        return
    for n in args.sizes:
        result = subprocess.run([sys.executable, __file__, "--one", str(n), "--image-size", str(args.image_size)],
                                check=True, capture_output=True, text=True)
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
