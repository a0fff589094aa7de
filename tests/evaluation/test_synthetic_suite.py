"""The whole suite end to end: real-vs-real, copy-of-train, the MIMIC-IV demo, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from long_tables import long_table, split_by_patient, zipf_population

from ehrlab.evaluate import main
from ehrlab.evaluation.synthetic import evaluate_synthetic, plot_paths
from ehrlab.evaluation.synthetic.discriminator import discriminator_scores, lstm_discriminator
from ehrlab.evaluation.synthetic.records import build_records

FAST = dict(n_bootstrap=5, discriminator_epochs=1, progress=False, random_forest_trees=10, n_jobs=1, long_tail_max_records=100)


@pytest.fixture(scope="module")
def real_population():
    return zipf_population(1800, seed=1)


def test_real_vs_real_is_near_perfect(real_population, tmp_path):
    train, test, synthetic = split_by_patient(real_population, 3)
    m = evaluate_synthetic(train, test, synthetic, tmp_path, discriminators=("random_forest",), write_plots=False, **FAST)
    assert m["eval/prevalence_r2"] > 0.95 and m["eval/prevalence_pearson"] > 0.97
    assert m["eval/cooccurrence_cosine"] > 0.9 and m["eval/top10_overlap"] >= 8
    assert m["eval/prevalence_js"] < 0.02 and m["eval/code_coverage"] > 0.95
    assert abs(m["eval/nnaar"]) < 0.05 and abs(m["eval/aa_ts"] - 0.5) < 0.06
    assert abs(m["eval/mia_accuracy"] - 0.5) < 0.06
    assert m["eval/disc_random_forest_score"] > 0.8
    assert abs(m["eval/synthetic_visits_per_patient"] - m["eval/train_visits_per_patient"]) < 0.15
    for name in ("prevalence_r2", "nnaar", "mia_f1", "disc_random_forest_score", "train_codes_per_visit"):
        assert m[f"eval/{name}_ci_low"] <= m[f"eval/{name}"] <= m[f"eval/{name}_ci_high"]


def test_copy_of_train_is_flagged_by_nnaar_and_mia(real_population, tmp_path):
    train, test, _ = split_by_patient(real_population, 3)
    copy = train.assign(subject_id=train["subject_id"] + 10**6)
    m = evaluate_synthetic(train, test, copy, tmp_path, discriminators=(), write_plots=False, **FAST)
    assert m["eval/aa_ts"] < 0.05 and m["eval/nnaar"] > 0.3
    assert m["eval/mia_accuracy"] > 0.9 and m["eval/mia_f1"] > 0.9
    assert m["eval/prevalence_r2"] == pytest.approx(1.0)


def test_mimic_iv_demo_diagnoses(demo_diagnoses, tmp_path):
    train, test, synthetic = split_by_patient(demo_diagnoses, 3, seed=2)
    m = evaluate_synthetic(train, test, synthetic, tmp_path, **FAST)
    assert all(isinstance(v, float) for v in m.values())
    assert m["eval/train_patients"] + m["eval/test_patients"] + m["eval/synthetic_patients"] == 100
    assert 0 <= m["eval/prevalence_js"] <= np.log(2) and 0 < m["eval/chapter_coverage"] <= 1
    assert {"eval/disc_lstm_score", "eval/disc_random_forest_score", "eval/mia_f1_p97_5", "eval/prevalence_r2_q10"} <= set(m)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    chapters = {row["chapter"] for row in evaluation["chapters"]}
    assert any(c.startswith("ICD-9 390-459") for c in chapters) and any(c.startswith("ICD-10 I00-I99") for c in chapters)
    report = (tmp_path / "report.md").read_text()
    assert "Table 12" in report and "Table 13" in report and "Table 14" in report
    plots = plot_paths(tmp_path)
    assert len(plots) == 11 and all(p.stat().st_size > 1000 for p in plots)
    assert all(f"plots/{p.name}" in report for p in plots)
    # no patient-level row leaves the suite: no subject id appears in what it writes
    written = report + (tmp_path / "evaluation.json").read_text()
    assert not any(str(subject) in written for subject in demo_diagnoses["subject_id"].unique())


def test_lstm_discriminator_separates_different_data_and_is_deterministic():
    rng = np.random.default_rng(0)
    real = long_table({i: [[f"r{rng.integers(5)}", f"r{rng.integers(5)}"]] * 2 for i in range(60)})
    fake = long_table({i: [[f"s{rng.integers(5)}"]] for i in range(100, 160)})
    _, records = build_records({"real": real, "synthetic": fake})
    first = lstm_discriminator(records["real"], records["synthetic"], epochs=15, seed=3)
    assert discriminator_scores(first.labels, first.probabilities)["accuracy"] == 1.0
    assert discriminator_scores(first.labels, first.probabilities)["score"] == 0.0
    second = lstm_discriminator(records["real"], records["synthetic"], epochs=15, seed=3)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_end_to_end(real_population, tmp_path, suffix):
    paths = []
    for name, part in zip(("train", "test", "synthetic"), split_by_patient(real_population.head(3000), 3)):
        path = tmp_path / f"{name}{suffix}"
        part.to_csv(path, index=False) if suffix == ".csv" else part.to_parquet(path)
        paths.append(str(path))
    out = tmp_path / "out"
    argv = ["--train", paths[0], "--test", paths[1], "--synthetic", paths[2], "--out", str(out)]
    discriminators = ["lstm"] if suffix == ".csv" else []  # the suite's own tests cover both
    options = ["--n-bootstrap", "3", "--discriminator-epochs", "1", "--no-progress", "--discriminators", *discriminators]
    assert main(argv + options) == 0
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["eval/prevalence_r2"] > 0.5 and "eval/nnaar_ci_low" in metrics
    assert (out / "report.md").is_file() and (out / "evaluation.json").is_file()


def test_cli_errors_name_the_problem(real_population, tmp_path, capsys):
    good = tmp_path / "good.csv"
    real_population.head(50).to_csv(good, index=False)
    assert main(["--train", str(tmp_path / "missing.csv"), "--test", str(good), "--synthetic", str(good), "--out", str(tmp_path)]) == 2
    assert "missing.csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    real_population.head(50).drop(columns="visit_id").to_csv(bad, index=False)
    assert main(["--train", str(good), "--test", str(good), "--synthetic", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "synthetic" in err and "visit_id" in err and "Traceback" not in err
