"""The runner end to end: stages, run directory contents, resume, loggers, multirun + report,
and the errors a user can cause. The real config is composed and shrunk (tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from support import MIMIC3_TINY, SHRINK, run_cli
from ehrlab import pipeline
from ehrlab.config import PROJECT_ROOT

RISK_METRICS = ("test/pr_auc", "test/average_precision", "test/f1", "test/kappa", "test/roc_auc")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
    """One `stage=all` run of the default model (LSTM) on the default data, shared below."""
    from support import compose_config

    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_config(["trainer.max_epochs=2"], run_dir, cache_dir)
    return run_dir, pipeline.run(cfg)


def test_stage_all_writes_everything(trained_run):
    run_dir, metrics = trained_run
    for name in ("config.yaml", "data_stats.json", "metrics.json", "predictions.parquet", "pr_roc_curves.png",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    for key in RISK_METRICS:
        assert 0.0 <= written[key] <= 100.0, key  # percent
    stats = json.loads((run_dir / "data_stats.json").read_text())
    for key in ("n_patients", "n_visits", "n_codes", "visits_per_patient", "codes_per_visit", "n_positive",
                "n_negative", "dropped", "planted_ceiling"):
        assert key in stats
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert len(predictions) == stats["split_patients"]["test"]
    assert predictions["probability"].between(0, 1).all()


def test_best_checkpoint_is_selected_on_the_models_monitor(trained_run):
    run_dir, _ = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    callback_state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert callback_state["monitor"] == "val/f1"
    assert checkpoint["ehrlab_vocabulary"][0] == "[PAD]"


def test_stage_evaluate_reloads_the_checkpoint(trained_run, make_config, tmp_path):
    run_dir, metrics = trained_run
    cfg = make_config("stage=evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                      run_dir=tmp_path / "evaluate")
    again = pipeline.run(cfg)
    for key in RISK_METRICS:
        assert again[key] == pytest.approx(metrics[key], abs=1e-4), key


def test_resume_from_last_checkpoint(trained_run, make_config, tmp_path):
    run_dir, _ = trained_run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # the trained run's second (final) epoch, whatever the best one was
    cfg = make_config("stage=train", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3",
                      "logger=csv", run_dir=tmp_path / "resumed")
    pipeline.run(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == last["global_step"] * 3 // 2
    logged = pd.read_csv(next((tmp_path / "resumed" / "csv").rglob("metrics.csv")))
    assert logged["epoch"].dropna().min() == 2  # continued from the checkpoint, not restarted


def test_prepare_stage_stops_after_the_data(make_config, tmp_path):
    pipeline.run(make_config("stage=prepare"))
    run_dir = tmp_path / "run"
    assert (run_dir / "data_stats.json").is_file()
    assert not (run_dir / "checkpoints").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/n_positive"] > 0


def test_checkpoint_from_other_data_is_refused(trained_run, make_config):
    from ehrlab.errors import UserInputError

    run_dir, _ = trained_run
    cfg = make_config("stage=evaluate", "data=mimic3", f"data.root={MIMIC3_TINY}", "task.split=[0.4,0.2,0.4]",
                      f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}")
    with pytest.raises(UserInputError, match="different code vocabulary"):
        pipeline.run(cfg)


def test_wandb_offline_run_holds_the_logged_metrics(make_config, tmp_path):
    cfg = make_config("logger=wandb")
    pipeline.run(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
    assert b"final/test/pr_auc" in logged and b"val/f1" in logged
    assert list(runs[0].rglob("pr_roc_curves*.png"))  # the aggregate curves, as an image
    assert not list(runs[0].rglob("tsne*"))  # patient-level points stay in the run directory
    # Patient-level records never reach the logger: no subject id of the test split appears.
    predictions = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert b'"subject_id"' not in logged and b"probability" not in logged
    assert len(predictions) > 0


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_other_loggers_write_under_the_run_directory(make_config, tmp_path, logger):
    pipeline.run(make_config(f"logger={logger}", "stage=train"))
    assert any((tmp_path / "run" / logger).rglob("*")), logger


def test_multirun_of_two_seeds_and_the_report(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("run.py", "-m", "seed=0,1", *SHRINK, f"hydra.sweep.dir={sweep_dir}",
                     env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["0_lstm_synthetic_heart_failure", "1_lstm_synthetic_heart_failure"]
    report = run_cli("-m", "ehrlab.report", str(sweep_dir))
    assert report.returncode == 0, report.stderr
    assert "test/pr_auc" in report.stdout and "±" in report.stdout
    summary = pd.read_csv(sweep_dir / "summary.csv")
    pr_auc = summary.loc[summary["metric"] == "test/pr_auc"].iloc[0]
    values = [json.loads((j / "metrics.json").read_text())["test/pr_auc"] for j in jobs]
    assert pr_auc["n"] == 2
    assert pr_auc["mean"] == pytest.approx(sum(values) / 2)
    assert (sweep_dir / "summary.md").read_text().count("±") >= 5


def test_parallel_runs_started_together_get_their_own_directories(tmp_path, cache_dir):
    args = [sys.executable, str(PROJECT_ROOT / "run.py"), "data=mimic3", f"data.root={MIMIC3_TINY}",
            "task=generation", "stage=prepare", "logger=none"]
    env = {"EHRLAB_CACHE": str(cache_dir), "PATH": "/usr/bin:/bin", **{k: v for k, v in __import__("os").environ.items()
                                                                      if k.startswith(("PYTHON", "HOME", "PATH"))}}
    env.pop("EHRLAB_RUN_ID", None)
    processes = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    run_dirs = sorted(p.parent.name for p in (tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(run_dirs) == 2 and run_dirs[0] != run_dirs[1]
    assert all("_lstm_mimic3_generation_" in name for name in run_dirs)


@pytest.mark.parametrize(("args", "message"), [
    (["stage=trian"], "stage=trian is not a stage; valid: prepare, train, generate, evaluate, all"),
    (["model=lsmt"], "Could not find 'model/lsmt'"),
    (["data=mimic3", "stage=prepare"], "add data.root="),
    (["data=mimic3", "data.root=/no/such/dir", "stage=prepare"], "/no/such/dir is not a directory"),
    (["task=heart_failure", "model=halo_small", "stage=prepare"], None),
])
def test_bad_input_exits_with_one_clear_message(args, message, cache_dir):
    result = run_cli("run.py", *args, "logger=none", env_extra={"EHRLAB_CACHE": str(cache_dir)})
    if message is None:  # a valid prepare stage for contrast: the model is not built yet
        assert result.returncode == 0, result.stderr[-2000:]
        return
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory, cache_dir):
    """`stage=all` of HALO (CPU size) on the default data's generation task."""
    from support import compose_config

    run_dir = tmp_path_factory.mktemp("generator")
    cfg = compose_config(["model=halo_small", "task=generation", "generate.n_patients=40", "evaluate.n_bootstrap=5",
                          "evaluate.discriminator_epochs=1"], run_dir, cache_dir)
    return run_dir, pipeline.run(cfg)


def test_generator_stage_all_trains_generates_and_evaluates(generator_run, make_config, tmp_path):
    run_dir, metrics = generator_run
    synthetic = pd.read_parquet(run_dir / "synthetic.parquet")
    assert list(synthetic.columns) == ["subject_id", "visit_id", "code"]
    assert 0 < synthetic["subject_id"].nunique() <= 40
    assert pd.read_csv(run_dir / "synthetic.csv", dtype={"code": "str"}).shape == synthetic.shape
    task_data = pipeline.prepare(make_config("model=halo_small", "task=generation"), tmp_path)
    real_ids = np.concatenate([split.subject_id for split in task_data.splits.values()])
    assert synthetic["subject_id"].min() > real_ids.max()  # never a real patient's id
    assert set(synthetic["code"]) <= set(task_data.vocabulary[1:])
    assert metrics["synthetic/patients"] == synthetic["subject_id"].nunique()  # Table 12's row
    for key in ("eval/prevalence_r2", "eval/nnaar", "eval/mia_f1"):
        assert key in metrics, key
    assert (run_dir / "evaluation" / "report.md").is_file()
    assert list((run_dir / "evaluation" / "plots").glob("*.png"))


def test_generator_checkpoint_generates_the_same_records(generator_run, make_config, tmp_path):
    run_dir, _ = generator_run
    cfg = make_config("model=halo_small", "task=generation", "stage=generate", "generate.n_patients=40",
                      f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", run_dir=tmp_path / "again")
    pipeline.run(cfg)
    first = pd.read_parquet(run_dir / "synthetic.parquet")
    again = pd.read_parquet(tmp_path / "again" / "synthetic.parquet")
    pd.testing.assert_frame_equal(first, again)


def test_ddp_on_two_cpu_processes(tmp_path, cache_dir):
    """trainer=ddp as on a multi-GPU node, with two CPU processes (gloo): one set of files,
    predictions for the whole test split, metrics gathered from both ranks."""
    run_dir = tmp_path / "ddp"
    result = run_cli("run.py", *SHRINK, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.precision=32-true", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
                     env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ehrlab: run directory") == 1  # only the first rank reports
    stats = json.loads((run_dir / "data_stats.json").read_text())
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert predictions["subject_id"].nunique() == len(predictions) == stats["split_patients"]["test"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(key in metrics for key in RISK_METRICS)
