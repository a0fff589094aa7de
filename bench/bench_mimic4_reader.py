"""Time and peak memory of reading MIMIC-IV labevents with the `mimic4` reader.

The reader's time includes the required tables it always reads (patients, admissions,
diagnoses: 4,781 of the rows counted). Compared in the same run against the naive baseline, pandas.read_csv of the whole table
(what the reader avoids). Each measurement runs in a fresh process so that peak resident
memory (ru_maxrss) belongs to that read alone; the import-only process gives the baseline
memory that is subtracted. Medians over --repeats runs.

    python bench/bench_mimic4_reader.py                 # the demo's labevents (107,727 rows)
    python bench/bench_mimic4_reader.py --scale 10      # the demo's rows repeated 10 times

--scale > 1 writes a scratch copy of the demo with its labevents rows repeated verbatim
(duplicates are fine: the reader keeps every row) to a temporary folder.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mimic-iv-demo-2.2"
# A handful of common chemistry items, to show the itemid filter.
LAB_ITEMIDS = [50912, 50971, 50983, 51006, 51221, 51265]


def _import_only(root: str) -> None:
    import pandas  # noqa: F401

    from ehrlab.data.sources.mimic4 import MIMIC4Source  # noqa: F401


def _reader_all(root: str) -> int:
    from ehrlab.data.sources.mimic4 import MIMIC4Source

    return len(MIMIC4Source(root, tables=["labevents"]).read().events)


def _reader_filtered(root: str) -> int:
    from ehrlab.data.sources.mimic4 import MIMIC4Source

    return len(MIMIC4Source(root, tables=["labevents"], lab_itemids=LAB_ITEMIDS).read().events)


def _pandas_whole(root: str) -> int:
    import pandas as pd

    return len(pd.read_csv(Path(root) / "hosp" / "labevents.csv.gz"))


def _measure(task, root: str, queue) -> None:
    _import_only(root)  # imports are not part of the read
    start = time.perf_counter()
    rows = task(root)
    seconds = time.perf_counter() - start
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rows))


def run(task, root: str) -> tuple[float, float, int]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(task, root, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def scaled_copy(scale: int, folder: Path) -> Path:
    root = folder / "mimic4"
    for name in ("hosp/patients", "hosp/admissions", "hosp/diagnoses_icd"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO / f"{name}.csv.gz", root / f"{name}.csv.gz")
    with gzip.open(DEMO / "hosp" / "labevents.csv.gz", "rt") as src:
        header, body = src.readline(), src.read()
    with gzip.open(root / "hosp" / "labevents.csv.gz", "wt", compresslevel=1) as dst:
        dst.write(header)
        for _ in range(scale):
            dst.write(body)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = str(DEMO if args.scale == 1 else scaled_copy(args.scale, Path(scratch)))
        base_rss = statistics.median(run(_import_only, root)[1] for _ in range(3))
        print(f"labevents x{args.scale}; import-only peak RSS {base_rss:.0f} MiB; median of {args.repeats} runs")
        print(f"{'method':<34}{'rows':>12}{'seconds':>10}{'peak MiB':>10}{'vs pandas':>11}")
        results = {}
        for label, task in (("pandas.read_csv whole (baseline)", _pandas_whole),
                            ("mimic4 reader, all items", _reader_all),
                            ("mimic4 reader, 6 lab_itemids", _reader_filtered)):
            runs = [run(task, root) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            peak = statistics.median(r[1] for r in runs) - base_rss
            results[label] = seconds
            ratio = seconds / results["pandas.read_csv whole (baseline)"]
            print(f"{label:<34}{runs[0][2]:>12,}{seconds:>10.3f}{peak:>10.0f}{ratio:>10.2f}x")


if __name__ == "__main__":
    main()
