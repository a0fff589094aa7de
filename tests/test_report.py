"""`python -m ehrlab.report`: mean ± std over seeds with n per cell, heatmaps for a 2-D grid,
and every job that is not in the table (failed, incomplete, unreadable, missing), on
hand-made job directories that follow the runner's job-status contract (no training)."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from ehrlab.errors import UserInputError
from ehrlab.report import expected_overrides, main, report

GRID = [0.1, 0.5]
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def write_job(root, number, overrides, metrics=None, status=None, model="meddiffusion", **status_fields):
    """A job directory as the runner leaves it: Hydra's overrides, status.json unless `status`
    is None (a job from before the contract), metrics.json when `metrics` is given."""
    job = root / f"{number}_{model}_synthetic_heart_failure"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        record = {"status": status, "stage": "all", "started": "2026-11-27T17:40:00",
                  "ended": None if status == "running" else "2026-11-27T17:42:10", "error": None, "error_type": None}
        (job / "status.json").write_text(json.dumps(record | status_fields))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def write_multirun_yaml(root, params, task_overrides, sweeper=BASIC_SWEEPER):
    """The part of Hydra's multirun.yaml the report reads (same layout as Hydra 1.3 writes)."""
    config = {"hydra": {"sweeper": {"_target_": sweeper, "max_batch_size": None, "params": params},
                        "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": task_overrides}},
              "seed": 0}
    (root / "multirun.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture
def lambda_grid(tmp_path):
    """λ_S × λ_D = 2 × 2, two seeds each; PR-AUC = 100·λ_S + 10·λ_D + seed."""
    number = 0
    for lambda_s in GRID:
        for lambda_d in GRID:
            for seed in (0, 1):
                value = 100 * lambda_s + 10 * lambda_d + seed
                write_job(tmp_path, number,
                          [f"model.lambda_synthetic={lambda_s}", f"model.lambda_diffusion={lambda_d}",
                           f"seed={seed}", "model=meddiffusion"],
                          {"test/pr_auc": value, "test/f1": 50.0, "test/kappa": 20.0 + seed, "data/n_patients": 9},
                          status="completed")
                number += 1
    return tmp_path


def test_grid_summary_and_heatmaps(lambda_grid):
    text = report(lambda_grid)
    summary = pd.read_csv(lambda_grid / "summary.csv")
    pr_auc = summary.loc[summary["metric"] == "test/pr_auc"].set_index(
        ["model.lambda_synthetic", "model.lambda_diffusion"])
    assert len(pr_auc) == 4 and (pr_auc["n"] == 2).all()
    assert pr_auc.loc[(0.5, 0.1), "mean"] == pytest.approx(50 + 1 + 0.5)
    assert pr_auc.loc[(0.5, 0.1), "std"] == pytest.approx(0.7071, abs=1e-4)  # sample std of {x, x+1}
    assert "data/n_patients" not in set(summary["metric"])  # only result metrics by default
    assert "51.50 ± 0.71 (n = 2)" in text and "over the n = 2 completed jobs (seeds) of each cell" in text
    assert "8 job directories: 8 completed." in text and "Jobs not in the table" not in text
    for metric in ("test_pr_auc", "test_f1", "test_kappa"):
        assert (lambda_grid / f"heatmap_{metric}.png").stat().st_size > 1000
    assert "![heatmap_test_pr_auc](heatmap_test_pr_auc.png)" in (lambda_grid / "summary.md").read_text()


def test_one_setting_over_seeds_has_no_heatmap(tmp_path):
    for seed in range(3):
        write_job(tmp_path, seed, [f"seed={seed}"], {"test/f1": 60.0 + 3 * seed})  # jobs from before status.json
    text = report(tmp_path)
    assert "63.00 ± 3.00 (n = 3)" in text
    assert not list(tmp_path.glob("heatmap_*.png"))


def test_one_seed_per_cell_shows_the_value_and_n_1_without_a_fake_zero_std(tmp_path):
    for number, (lambda_s, lambda_d) in enumerate([(s, d) for s in GRID for d in GRID]):
        write_job(tmp_path, number, [f"model.lambda_synthetic={lambda_s}", f"model.lambda_diffusion={lambda_d}"],
                  {"test/pr_auc": 100 * lambda_s + 10 * lambda_d}, status="completed")
    text = report(tmp_path)
    assert "±" not in text.split("\n\n", 3)[3]  # no cell claims a spread
    assert "51.00 (n = 1)" in text and "one completed job per cell (n = 1)" in text
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert (summary["n"] == 1).all() and summary["std"].isna().all()
    assert (tmp_path / "heatmap_test_pr_auc.png").is_file()  # the grid still gets its heatmap


@pytest.fixture
def broken_sweep(tmp_path):
    """`python run.py -m sweep=seeds model=lstm,meddiffusion` (seeds 0-3): 8 jobs, job number
    = 2·seed + model. Seeds 0 and 1 completed; seed 2 lstm failed, seed 2 meddiffusion was
    killed after writing metrics (status still "running"); seed 3 lstm completed before the
    status contract existed; seed 3 meddiffusion never started."""
    write_multirun_yaml(tmp_path, {"seed": "0,1,2,3"}, ["sweep=seeds", "model=lstm,meddiffusion"])
    models = ("lstm", "meddiffusion")

    def job(seed, model, **kwargs):
        number = 2 * seed + models.index(model)
        write_job(tmp_path, number, [f"seed={seed}", "sweep=seeds", f"model={model}"], model=model, **kwargs)

    for seed in (0, 1):
        job(seed, "lstm", metrics={"test/f1": 60.0 + seed}, status="completed")
        job(seed, "meddiffusion", metrics={"test/f1": 70.0 + seed}, status="completed")
    job(2, "lstm", status="failed", error="data.root=/nope: no such directory; give the MIMIC-III folder.",
        error_type="UserInputError")
    job(2, "meddiffusion", metrics={"test/f1": 999.0}, status="running")
    job(3, "lstm", metrics={"test/f1": 65.0})
    return tmp_path


def test_failed_killed_and_missing_jobs_are_listed_not_averaged(broken_sweep, capsys):
    main([str(broken_sweep)])  # exit status 0: the sweep could be summarised
    text = capsys.readouterr().out
    summary = pd.read_csv(broken_sweep / "summary.csv").set_index("model")
    assert summary.loc["lstm", "n"] == 3 and summary.loc["lstm", "mean"] == pytest.approx(62.0)
    assert summary.loc["meddiffusion", "n"] == 2 and summary.loc["meddiffusion", "mean"] == pytest.approx(70.5)
    assert "62.00 ± 2.65 (n = 3)" in text and "70.50 ± 0.71 (n = 2)" in text
    assert "n differs between cells (2 to 3)" in text
    assert "8 jobs expected (multirun.yaml): 5 completed, 1 failed, 1 incomplete, 1 missing." in text
    listing = text.split("## Jobs not in the table", 1)[1].strip().splitlines()
    assert listing == [
        "- job 4 (seed=2 sweep=seeds model=lstm) [4_lstm_synthetic_heart_failure]: failed: "
        "UserInputError: data.root=/nope: no such directory; give the MIMIC-III folder.",
        "- job 5 (seed=2 sweep=seeds model=meddiffusion) [5_meddiffusion_synthetic_heart_failure]: incomplete: "
        "killed, crashed hard or still running (started 2026-11-27T17:40:00)",
        "- job 7 (seed=3 sweep=seeds model=meddiffusion): missing: no job directory (never started)",
    ]
    assert (broken_sweep / "summary.md").read_text().strip() == text.strip()


def test_a_model_whose_other_values_all_failed_keeps_its_column(broken_sweep):
    for job in broken_sweep.glob("*_meddiffusion_*"):
        (job / "status.json").write_text(json.dumps({"status": "failed", "error": "out of memory",
                                                     "error_type": "OutOfMemoryError"}))
    text = report(broken_sweep)
    assert "| model | test/f1 |" in text and "| lstm | 62.00 ± 2.65 (n = 3) |" in text
    assert text.count(": failed: OutOfMemoryError: out of memory") == 3


def test_unreadable_files_and_sweeps_without_multirun_yaml(tmp_path):
    write_job(tmp_path, 0, ["seed=0"], {"test/f1": 60.0}, status="completed")
    write_job(tmp_path, 1, ["seed=1"], {"test/f1": 62.0}, status="completed")
    (write_job(tmp_path, 2, ["seed=2"], status="completed") / "metrics.json").write_text('{"test/f1": 6')  # truncated
    write_job(tmp_path, 3, ["seed=3"])  # before the status contract, died without metrics
    text = report(tmp_path)
    assert "4 job directories: 2 completed, 1 incomplete, 1 unreadable." in text
    assert "61.00 ± 1.41 (n = 2)" in text
    assert "- job 2 (seed=2) [2_meddiffusion_synthetic_heart_failure]: unreadable: unreadable metrics.json" in text
    assert "- job 3 (seed=3) [3_meddiffusion_synthetic_heart_failure]: incomplete: killed" in text
    assert "no multirun.yaml in the directory: jobs that never started cannot be counted." in text


def test_expected_jobs_are_expanded_like_hydras_basic_sweeper(tmp_path):
    # the command line's seed list replaces the sweep file's but keeps its place in the order
    write_multirun_yaml(tmp_path, {"seed": "0,1,2,3,4", "model.lambda_synthetic": 0.5},
                        ["sweep=seeds", "seed=0,1", "model=lstm,meddiffusion", "trainer.max_epochs=range(2,4)"])
    expected, note = expected_overrides(tmp_path)
    assert note == "" and len(expected) == 8
    assert expected[0] == ["seed=0", "model.lambda_synthetic=0.5", "sweep=seeds", "model=lstm", "trainer.max_epochs=2"]
    assert expected[7] == ["seed=1", "model.lambda_synthetic=0.5", "sweep=seeds", "model=meddiffusion",
                           "trainer.max_epochs=3"]
    write_multirun_yaml(tmp_path, {"seed": "interval(0,1)"}, [])
    expected, note = expected_overrides(tmp_path)
    assert expected is None and "cannot expand the sweep" in note and "INTERVAL_SWEEP" in note


def test_subclasses_of_the_basic_sweeper_are_expanded_other_sweepers_are_noted(tmp_path, monkeypatch):
    module = types.ModuleType("failure_listing_sweepers")
    module.ListingSweeper = type("ListingSweeper", (BasicSweeper,), {})  # like ehrlab's own sweeper
    monkeypatch.setitem(sys.modules, module.__name__, module)
    write_multirun_yaml(tmp_path, {"seed": "0,1,2"}, [], sweeper="failure_listing_sweepers.ListingSweeper")
    assert len(expected_overrides(tmp_path)[0]) == 3
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    write_multirun_yaml(tmp_path, {"seed": "0,1,2"}, [], sweeper=optuna)
    write_job(tmp_path, 0, ["seed=0"], {"test/f1": 60.0}, status="completed")
    text = report(tmp_path)
    assert "1 job directory: 1 completed." in text
    assert f"multirun.yaml names the sweeper {optuna}, whose jobs this report cannot enumerate" in text


def test_a_sweep_where_no_job_completed_is_an_error_that_lists_them(tmp_path, capsys):
    write_multirun_yaml(tmp_path, {"seed": "0,1"}, [])
    write_job(tmp_path, 0, ["seed=0"], status="failed", error="CUDA out of memory", error_type="OutOfMemoryError")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no completed job" in err and "1 failed, 1 missing" in err
    assert "job 0 (seed=0)" in err and "OutOfMemoryError: CUDA out of memory" in err and "job 1 (seed=1)" in err


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no job directory"):
        report(tmp_path)


@pytest.fixture
def table2_sweep(tmp_path):
    """model × augment × seed as sweep=table2 runs it: PR-AUC = base + 3 (diffusion) + seed,
    except that retain+diffusion is worse than plain in seed 1."""
    base = {"lstm": 60.0, "retain": 50.0}
    number = 0
    for model in base:
        for augment in ("none", "diffusion"):
            for seed in (0, 1):
                pr_auc = base[model] + seed + (3.0 if augment == "diffusion" else 0.0)
                if (model, augment, seed) == ("retain", "diffusion", 1):
                    pr_auc = base[model] + seed - 1.0
                write_job(tmp_path, number, [f"model={model}", f"augment={augment}", f"seed={seed}"],
                          {"test/pr_auc": pr_auc, "test/f1": 40.0 + seed, "test/kappa": 10.0 + number},
                          status="completed", model=model)
                number += 1
    return tmp_path


def test_model_sweep_renders_table_2_and_figure_3(table2_sweep):
    text = report(table2_sweep)
    table = text.split("## Table 2 layout (seed 000)")[1].split("##")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"model", "lstm", "lstm+diffusion", "retain", "retain+diffusion"}
    # the best PR-AUC (lstm+diffusion: 63, 64) in bold, and nothing else in that column
    assert "**63.50 ± 0.71 (n = 2)**" in rows["lstm+diffusion"]
    assert "**" not in rows["lstm"].split("|")[2]
    # kappa = 10 + job number: the last two jobs (retain+diffusion) are best
    assert rows["retain+diffusion"].rstrip(" |").endswith("**16.50 ± 0.71 (n = 2)**")

    paired = pd.read_csv(table2_sweep / "paired_differences.csv").set_index("backbone")
    assert paired.loc["lstm", "difference"] == pytest.approx(3.0)
    assert paired.loc["lstm", "seeds_improved"] == 2
    assert paired.loc["retain", "difference"] == pytest.approx((3.0 + -1.0) / 2)
    assert paired.loc["retain", "seeds_improved"] == 1
    assert "| retain | diffusion | 50.50 | 51.50 | +1.00 ± 2.83 | 1 of 2 |" in text
    assert (table2_sweep / "figure3_paired_bars.png").stat().st_size > 10_000
    assert not list(table2_sweep.glob("heatmap_*.png"))  # model × augment is not a numeric grid


def test_one_backbone_with_several_augmentations_is_table_4(tmp_path):
    """sweep=table4: model fixed, augment swept; every member is compared with the plain backbone."""
    number = 0
    for augment, gain in (("none", 0.0), ("medgan", 2.0), ("medgan_att", 4.0), ("diffusion", 6.0)):
        for seed in (0, 1, 2):
            write_job(tmp_path, number, ["model=lstm", f"augment={augment}", f"seed={seed}"],
                      {"test/pr_auc": 60.0 + gain + seed, "test/f1": 50.0, "test/kappa": 30.0}, status="completed",
                      model="lstm")
            number += 1
    text = report(tmp_path)
    assert "| lstm+medgan_att | 65.00 ± 1.00 (n = 3) |" in text
    assert "| **lstm+diffusion** |" not in text and "**67.00 ± 1.00 (n = 3)**" in text
    paired = pd.read_csv(tmp_path / "paired_differences.csv").set_index("augment")
    assert paired.loc["medgan", "difference"] == pytest.approx(2.0)
    assert paired.loc["medgan_att", "seeds_improved"] == 3
    assert set(paired["backbone"]) == {"lstm"}
    assert (tmp_path / "figure3_paired_bars.png").stat().st_size > 10_000


def test_several_sweeps_make_one_table(table2_sweep, tmp_path_factory):
    """sweep=table2 and sweep=table2_augmentation (the augmentation baselines) reported together."""
    baselines = tmp_path_factory.mktemp("table2_augmentation")
    for number, seed in enumerate((0, 1)):
        # as Hydra records them: the sweep's name and a key that only this model has
        write_job(baselines, number, ["model=tabddpm_aug", "augment=none", f"seed={seed}", "sweep=table2_augmentation",
                                      "model.sampling_steps=10"],
                  {"test/pr_auc": 70.0 + seed, "test/f1": 45.0, "test/kappa": 30.0}, status="completed",
                  model="tabddpm_aug")
    main([str(table2_sweep), str(baselines)])
    text = (table2_sweep / "summary.md").read_text()
    assert text.startswith(f"# Summary of {table2_sweep}, {baselines}")
    assert "10 job directories: 10 completed." in text
    assert "| tabddpm_aug | **70.50 ± 0.71 (n = 2)** |" in text  # the best PR-AUC of the joint table
    assert "| model | augment | test/f1 |" in text  # neither `sweep` nor a per-model key is a column
    paired = pd.read_csv(table2_sweep / "paired_differences.csv")
    assert set(paired["backbone"]) == {"lstm", "retain"}  # the baselines have no plain/augmented pair


def generator_metrics(model: str, seed: int) -> dict[str, float]:
    """The evaluation's keys a generator job writes, with values that identify model and seed."""
    base = {"halo": 0.8, "medgan": 0.6, "corgan": 0.2}[model]
    metrics = {"eval/disc_score": base, "eval/prevalence_r2": base + 0.01 * seed, "eval/prevalence_pearson": 0.9,
               "eval/prevalence_rmse": 0.01, "eval/nnaar": 0.002, "eval/mia_accuracy": 0.5, "eval/mia_f1": 0.5,
               "eval/synthetic_unique_codes": 1000 * base, "eval/train_patients": 4000.0, "eval/test_patients": 500.0,
               "eval/synthetic_patients": 10000.0, "eval/cooccurrence_cosine": base}
    for label in ("p75", "p80", "p85", "p90", "p95", "p97_5", "p99"):
        metrics[f"eval/prevalence_r2_{label}"] = base
        metrics[f"eval/mia_f1_{label}"] = 0.5
    for decile in range(1, 11):
        metrics[f"eval/prevalence_r2_q{decile:02d}"] = base - 0.05 * decile
    return {**metrics, **{f"{k}_ci_low": v - 0.05 for k, v in metrics.items()},
            **{f"{k}_ci_high": v + 0.05 for k, v in metrics.items()}}


def test_generator_sweep_renders_seed_002_tables_and_figures(tmp_path):
    """sweep=generators: Table 1 with every generator's row in the paper's order (sequential
    before flat), the real sets in Table 12, bootstrap intervals for a single job and mean ± std
    over seeds, and the long-tail figure."""
    number = 0
    for model, seeds in (("corgan", (0,)), ("medgan", (0,)), ("halo", (0, 1))):
        for seed in seeds:
            write_job(tmp_path, number, [f"model={model}", f"seed={seed}"], generator_metrics(model, seed),
                      status="completed", model=model)
            number += 1
    text = report(tmp_path)
    table1 = text.split("### Table 1")[1].split("###")[0]
    rows = [line for line in table1.splitlines() if line.startswith("| ") and "model" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| halo", "| medgan", "| corgan"]
    assert "| 2 | 0.800 ± 0.000 | 0.805 ± 0.007 |" in rows[0]  # two seeds: mean ± std
    assert "| 1 | 0.600 [0.550, 0.650] |" in rows[1]  # one job: its bootstrap interval
    assert "| real training |  | 4,000 |" in text and "| real held-out |  | 500 |" in text
    assert "| medgan | 1 | 10,000 |" in text  # a count without its resampling interval
    assert "### Table 14" in text and "### Tables 2 and 13" in text
    assert "eval/prevalence_r2_p75" not in text  # the long-tail numbers are in the figure and summary.csv
    assert (tmp_path / "figure3_long_tail.png").stat().st_size > 0
    assert (tmp_path / "figure8_deciles.png").stat().st_size > 0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"eval/prevalence_r2_p75", "eval/disc_score"} <= set(summary["metric"])


def test_split_seed_is_averaged_over_like_the_seed(tmp_path):
    """`split_seed` draws the data's split: a sweep over both seeds gives one cell per model."""
    write_multirun_yaml(tmp_path, {"seed": "0,1", "split_seed": "0,1"}, ["model=lstm,meddiffusion"])
    number = 0
    for model in ("lstm", "meddiffusion"):
        for seed in (0, 1):
            for split_seed in (0, 1):
                write_job(tmp_path, number, [f"model={model}", f"seed={seed}", f"split_seed={split_seed}"],
                          {"test/f1": 60.0 + 10 * seed + split_seed}, status="completed", model=model)
                number += 1
    main([str(tmp_path)])
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("model")
    assert list(summary.index) == ["lstm", "meddiffusion"]
    assert (summary["n"] == 4).all() and summary.loc["lstm", "mean"] == pytest.approx(65.5)


def test_metrics_within_one_get_three_decimals(tmp_path, capsys):
    """An AUROC difference of 0.004 must not vanish in rounding; percentages keep two decimals."""
    write_multirun_yaml(tmp_path, {"seed": "0,1"}, [])
    for seed, (auroc, f1) in enumerate([(0.5712, 60.0), (0.5833, 61.0)]):
        write_job(tmp_path, seed, [f"seed={seed}"], {"test/auroc_all": auroc, "test/f1": f1}, status="completed")
    main([str(tmp_path)])
    text = capsys.readouterr().out
    assert "0.577 ± 0.009 (n = 2)" in text and "60.50 ± 0.71 (n = 2)" in text
