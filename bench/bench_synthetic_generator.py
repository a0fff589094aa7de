"""Time, peak memory and output statistics of the synthetic MIMIC-III generator.

    python bench/bench_synthetic_generator.py                 # 2,000 and 46,000 patients
    python bench/bench_synthetic_generator.py --sizes 2000 50000 --repeats 3

Each size runs in a fresh subprocess (so peak RSS is that size's own), ``--repeats`` times;
the median wall time of ``write_synthetic_mimic3`` (generation + gzip/parquet writing) is
reported, with the dataset statistics and the planted model's own discrimination on the
heart-failure cohort (cases with ≥ 1 admission before onset vs patients without HF with
≥ 2 admissions): AUROC, average precision and trapezoid PR-AUC on a random 20 % test split.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _heart_failure_ceiling(tables) -> dict:
    """The planted risk's AUROC / AP / trapezoid PR-AUC on a 20 % test split of the HF cohort."""
    import numpy as np
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    from ehrlab.data.synthetic import cohort_code_mask

    admissions = tables.admissions.sort_values(["SUBJECT_ID", "ADMITTIME"])
    rank = admissions.groupby("SUBJECT_ID").cumcount()
    rank_of = dict(zip(admissions["HADM_ID"], rank))
    diagnoses = tables.diagnoses
    hits = diagnoses.loc[cohort_code_mask(diagnoses["ICD9_CODE"], "heart_failure")]
    onset = hits["HADM_ID"].map(rank_of).groupby(hits["SUBJECT_ID"]).min()
    n_visits = admissions.groupby("SUBJECT_ID").size()
    cases = onset.index[onset >= 1]
    controls = n_visits.index[(n_visits >= 2) & ~n_visits.index.isin(onset.index)]
    subjects = np.concatenate([cases, controls])
    label = np.concatenate([np.ones(len(cases)), np.zeros(len(controls))])
    test = np.random.default_rng(0).random(len(subjects)) < 0.2
    risk = tables.planted_risk.query("cohort == 'heart_failure'").set_index("subject_id")["risk"]
    score = risk.loc[subjects[test]].to_numpy()
    precision, recall, _ = precision_recall_curve(label[test], score)
    return {"hf_cohort_test_patients": int(test.sum()),
            "hf_cohort_test_positive_rate": round(float(label[test].mean()), 3),
            "oracle_auroc": round(float(roc_auc_score(label[test], score)), 3),
            "oracle_average_precision": round(float(average_precision_score(label[test], score)), 3),
            "oracle_pr_auc_trapezoid": round(float(auc(recall, precision)), 3)}


def _one_run(n_patients: int, seed: int) -> dict:
    from ehrlab.data.synthetic import (
        SyntheticConfig, dataset_statistics, generate_synthetic_mimic3, write_synthetic_mimic3,
    )

    config = SyntheticConfig(n_patients=n_patients, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_synthetic_mimic3(Path(tmp) / "mimic3", config)
        seconds = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "mimic3").iterdir()) / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tables = generate_synthetic_mimic3(config)  # in memory, for the statistics only
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb), "files_mb": round(size_mb, 1),
            **dataset_statistics(tables), **_heart_failure_ceiling(tables)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 46000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run, JSON out
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_one_run(args.one, args.seed)))
        return
    for size in args.sizes:
        runs = [json.loads(subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--seed", str(args.seed)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(args.repeats)]
        result = dict(runs[0])
        result["seconds_runs"] = [r["seconds"] for r in runs]
        result["seconds"] = statistics.median(result["seconds_runs"])
        result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        print(json.dumps({"n_patients": size, **result}, indent=1))


if __name__ == "__main__":
    main()
