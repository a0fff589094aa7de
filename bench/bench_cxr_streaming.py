"""Streaming a chartevents-sized table through the mimic_cxr reader's event selection.

    python bench/bench_cxr_streaming.py [--gb 2] [--subjects 50000] [--linked 2000] [--keep]

Writes (once, into /tmp/ehrlab-bench-cxr-<gb>gb/, reused by later runs) a MIMIC-IV 2.2
`icu/chartevents.csv.gz` of about --gb GB uncompressed (~105 bytes a row, as the real file)
for --subjects patients, a minimal MIMIC-CXR-JPG folder whose images link --linked of those
patients to one admission each, and the demo's `icu/d_items`. Then, in a fresh process so that
peak memory is the reader's own, reads it with `MIMICCXRSource` and the paper's selection
(chartevents only) and reports rows read per second, events kept, wall time and peak resident
memory. The real chartevents is ~313 M rows (~30 GB uncompressed): scale the rows/s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

REPO = Path(__file__).resolve().parents[1]
DEMO_ITEMS = REPO / "tests" / "fixtures" / "mimic-iv-demo-2.2" / "icu" / "d_items.csv.gz"
ROW_BYTES = 105  # a MIMIC-IV 2.2 chartevents row, uncompressed, on average
BLOCK_ROWS = 1_000_000
START = np.datetime64("2150-01-01T00:00:00")
STAY_DAYS = 10

MEASURE = r"""
import json, resource, sys, time
import yaml
from ehrlab.data.sources.mimic_cxr import MIMICCXRSource
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
cxr, mimic4, selection = sys.argv[1:4]
paper = yaml.safe_load(open(selection))
source = MIMICCXRSource(cxr, mimic4, {"chartevents": paper["chartevents"]})
before = rss_mib()
start = time.perf_counter()
tables = source.read()
seconds = time.perf_counter() - start
counts = tables.counts
print(json.dumps({"seconds": seconds, "rows_read": counts["chartevents_rows_read"],
                  "events_kept": counts["chartevents_events"],
                  "rss_before_read_mib": before, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_dataset(folder: Path, gb: float, n_subjects: int, n_linked: int) -> None:
    rng = np.random.default_rng(0)
    subjects = 10_000_000 + np.arange(n_subjects)
    admit = START + (rng.integers(0, 3650, n_subjects) * 86400).astype("timedelta64[s]")
    items = pa_csv.read_csv(DEMO_ITEMS).to_pandas()
    chart_items = items.loc[items["linksto"] == "chartevents", "itemid"].to_numpy()

    hosp, icu = folder / "mimic4" / "hosp", folder / "mimic4" / "icu"
    hosp.mkdir(parents=True, exist_ok=True)
    icu.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO_ITEMS, icu / "d_items.csv.gz")
    pa_csv.write_csv(pa.table({"subject_id": subjects, "gender": np.where(subjects % 2 == 0, "F", "M"),
                               "anchor_age": np.full(n_subjects, 60), "anchor_year": np.full(n_subjects, 2150)}),
                     hosp / "patients.csv")
    discharge = admit + np.timedelta64(STAY_DAYS * 86400, "s")
    pa_csv.write_csv(pa.table({"subject_id": subjects, "hadm_id": 20_000_000 + np.arange(n_subjects),
                               "admittime": admit.astype(str), "dischtime": discharge.astype(str),
                               "race": np.full(n_subjects, "WHITE")}), hosp / "admissions.csv")

    linked = rng.choice(n_subjects, n_linked, replace=False)
    shot = admit[linked] + np.timedelta64(86400, "s")
    dicom = np.char.add("d", np.arange(n_linked).astype(str))
    cxr = folder / "cxr"
    lines = ["dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime"]
    for i, row in enumerate(linked):
        day = str(shot[i].astype("datetime64[D]")).replace("-", "")
        lines.append(f"{dicom[i]},{subjects[row]},{50_000_000 + i},AP,{day},{shot[i].astype(object).strftime('%H%M%S')}.0")
        image = cxr / "files" / f"p{str(subjects[row])[:2]}" / f"p{subjects[row]}" / f"s{50_000_000 + i}"
        image.mkdir(parents=True, exist_ok=True)
        (image / f"{dicom[i]}.jpg").write_bytes(b"")  # the reader only checks that it exists
    (cxr / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(lines) + "\n")

    n_rows = int(gb * 1e9 / ROW_BYTES)
    path = icu / "chartevents.csv.gz"
    # gzip level 1: Arrow's own gzip stream compresses ~10x slower, and the reader's cost
    # (decompression + parsing) barely depends on the level.
    with gzip.open(path, "wb", compresslevel=1) as out:
        header = True
        for start in range(0, n_rows, BLOCK_ROWS):
            n = min(BLOCK_ROWS, n_rows - start)
            who = rng.integers(0, n_subjects, n)
            # Events spread over each admission and a little beyond (some fall outside it).
            offset = rng.integers(-86400, (STAY_DAYS + 1) * 86400, n).astype("timedelta64[s]")
            value = pa.array(np.round(rng.normal(80, 20, n), 1))
            charttime = pa.array(admit[who] + offset)
            block = pa.table({
                "subject_id": subjects[who], "hadm_id": 20_000_000 + who, "stay_id": 30_000_000 + who,
                "caregiver_id": rng.integers(1, 99_999, n), "charttime": pc.cast(charttime, pa.string()),
                "storetime": pc.cast(pa.array(admit[who] + offset + np.timedelta64(300, "s")), pa.string()),
                "itemid": rng.choice(chart_items, n), "value": pc.cast(value, pa.string()), "valuenum": value,
                "valueuom": np.full(n, "bpm"), "warning": rng.integers(0, 2, n),
            })
            buffer = pa.BufferOutputStream()
            pa_csv.write_csv(block, buffer, pa_csv.WriteOptions(include_header=header, quoting_style="none"))
            out.write(buffer.getvalue().to_pybytes())
            header = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="uncompressed size of chartevents")
    parser.add_argument("--subjects", type=int, default=50_000)
    parser.add_argument("--linked", type=int, default=2_000, help="patients with a linked image")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args()

    folder = Path(f"/tmp/ehrlab-bench-cxr-{args.gb:g}gb-{args.subjects}-{args.linked}")
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        write_dataset(folder, args.gb, args.subjects, args.linked)
        (folder / "done").write_text("")
        print(f"generated in {time.perf_counter() - start:.0f} s")
    chart = folder / "mimic4" / "icu" / "chartevents.csv.gz"
    selection = REPO / "conf" / "data" / "event_selection" / "paper.yaml"
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder / "cxr"), str(folder / "mimic4"), str(selection)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["compressed_mb"] = chart.stat().st_size / 1e6
    result["rows_per_s"] = result["rows_read"] / result["seconds"]
    print(f"chartevents {args.gb:g} GB (~{result['rows_read'] / 1e6:.1f} M rows, {result['compressed_mb']:.0f} MB gz), "
          f"{args.linked} of {args.subjects} subjects linked: {result['seconds']:.1f} s, "
          f"{result['rows_per_s'] / 1e6:.2f} M rows/s read, {result['events_kept']:,} events kept, "
          f"peak RSS {result['peak_mib']:.0f} MiB ({result['rss_before_read_mib']:.0f} MiB after imports)")
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
