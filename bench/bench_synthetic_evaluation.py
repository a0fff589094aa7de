"""Benchmark the synthetic-EHR evaluation suite on MIMIC-like long tables.

    python bench/bench_synthetic_evaluation.py                 # 1k, 5k, 10k patients per set
    python bench/bench_synthetic_evaluation.py --sizes 1000 10000 50000 --privacy-only-above 10000
    python bench/bench_synthetic_evaluation.py --cases 45517,5000,10000 150000,30000,50000
        # training,held-out,synthetic patients: the whole suite with the seconds of each stage


Each size runs in a fresh subprocess so its peak RSS is its own. Data: three independent
samples (training, held-out, synthetic) of the same generator: 1 + Geometric visits per
patient (mean ≈ 1.7, capped at 40), Poisson(14) code draws per visit (≈ 12 unique after
de-duplication), codes Zipf(1.1) over 5,000 codes. Reports total suite seconds (default
options: 100 bootstrap resamples, 5 LSTM epochs, 100-tree forest), the seconds of NNAAR + the
full-set MIA (all exact distances, no subsampling) and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd


def mimic_like(n_patients: int, seed: int, n_codes: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    visits = np.minimum(rng.geometric(0.6, n_patients), 40)
    codes_per_visit = np.maximum(rng.poisson(14, visits.sum()), 1)
    zipf = 1.0 / np.arange(1, n_codes + 1) ** 1.1
    codes = rng.choice(n_codes, size=codes_per_visit.sum(), p=zipf / zipf.sum())
    names = np.array([f"DIAGNOSIS//ICD//9//{400 + c % 500}.{c // 500}" for c in range(n_codes)], dtype=object)
    return pd.DataFrame(
        {
            "subject_id": np.repeat(np.repeat(np.arange(n_patients), visits), codes_per_visit).astype("int64"),
            "visit_id": np.repeat(np.arange(visits.sum()), codes_per_visit).astype("int64"),
            "code": pd.Series(names[codes], dtype="str"),
        }
    )


def run_one(n_patients: int, privacy_only: bool) -> dict:
    from ehrlab.evaluation.synthetic import evaluate_synthetic
    from ehrlab.evaluation.synthetic.privacy import attack_sample, membership_inference, nnaar, privacy_distances
    from ehrlab.evaluation.synthetic.records import build_records

    tables = [mimic_like(n_patients, seed) for seed in (1, 2, 3)]
    _, records = build_records(dict(zip(("train", "test", "synthetic"), tables)))
    start = time.perf_counter()
    distances = privacy_distances(records["train"], records["test"], records["synthetic"])
    nnaar(distances)
    rng = np.random.default_rng(0)
    members, non_members = attack_sample(records["train"].n_patients, records["test"].n_patients, rng)
    membership_inference(
        distances.train_to_synthetic[members], distances.test_to_synthetic[non_members], rng.random(2 * len(members))
    )
    privacy_seconds = time.perf_counter() - start
    result = {
        "patients_per_set": n_patients,
        "visits_per_patient": float(records["train"].visits_per_patient.mean()),
        "codes_per_visit": float(records["train"].codes_per_visit.mean()),
        "nnaar_mia_s": privacy_seconds,
    }
    if not privacy_only:
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            evaluate_synthetic(*tables, out_dir, progress=False)
            result["total_s"] = time.perf_counter() - start
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


STAGES = {  # the suite's stages, by the function that does each
    "records": "build_records",
    "bootstrap + population metrics": "_population_metrics",
    "NNAAR distances": "privacy_distances",
    "long-tail MIA": "attack_distances",
    "LSTM discriminator": "lstm_discriminator",
    "Random Forest discriminator": "random_forest_discriminator",
    "plots": "write_all",
}


def run_case(n_train: int, n_test: int, n_synthetic: int) -> dict:
    """The whole suite on one case, profiled: total seconds, each stage's and the peak RSS."""
    import cProfile
    import pstats

    from ehrlab.evaluation.synthetic import evaluate_synthetic

    tables = [mimic_like(n, seed) for n, seed in ((n_train, 1), (n_test, 2), (n_synthetic, 3))]
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        profile.runcall(evaluate_synthetic, *tables, out_dir, progress=False)
        total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    stages = {name: sum(v[3] for (_, _, function), v in stats.items() if function == target)
              for name, target in STAGES.items()}
    return {"total_s": total, "stages": stages, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 10000])
    parser.add_argument("--privacy-only-above", type=int, default=None, help="skip the full suite above this size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--privacy-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", help="training,held-out,synthetic patient counts (one run each)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.privacy_only)))
        return
    if args.case:
        print(json.dumps(run_case(*map(int, args.case.split(",")))))
        return
    if args.cases:
        print("| training / held-out / synthetic | whole suite (s) | " + " | ".join(STAGES) + " | peak RSS (GiB) |")
        print("|---|---|" + "---|" * len(STAGES) + "---|")
        for case in args.cases:
            output = subprocess.run([sys.executable, __file__, "--case", case], check=True, capture_output=True, text=True)
            row = json.loads(output.stdout.strip().splitlines()[-1])
            sizes = " / ".join(f"{int(n):,}" for n in case.split(","))
            stages = " | ".join(f"{row['stages'][name]:.1f}" for name in STAGES)
            print(f"| {sizes} | {row['total_s']:.1f} | {stages} | {row['peak_rss_gib']:.2f} |", flush=True)
        return
    print("| patients per set | visits/patient | codes/visit | NNAAR + MIA (s) | whole suite (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size)]
        if args.privacy_only_above is not None and size > args.privacy_only_above:
            command.append("--privacy-only")
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        total = f"{row['total_s']:.1f}" if "total_s" in row else "not run"
        print(
            f"| {size:,} | {row['visits_per_patient']:.2f} | {row['codes_per_visit']:.2f} | {row['nnaar_mia_s']:.1f} "
            f"| {total} | {row['peak_rss_gib']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
