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
from support import MIMIC3_TINY, SHRINK, run_cli, wandb_records

from ehrlab import pipeline
from ehrlab.config import PROJECT_ROOT
from ehrlab.data.schema import SYNTHETIC_SUBJECT_ID_START
from ehrlab.errors import UserInputError

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
    for name in ("config.yaml", "status.json", "data_stats.json", "metrics.json", "predictions.parquet",
                 "pr_roc_curves.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    stats = json.loads((run_dir / "data_stats.json").read_text())
    for key in ("n_patients", "n_visits", "n_codes", "visits_per_patient", "codes_per_visit", "n_positive",
                "n_negative", "dropped", "planted_ceiling"):
        assert key in stats
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert len(predictions) == predictions["subject_id"].nunique() == stats["split_patients"]["test"]
    assert_metrics_match_predictions(written, predictions)


def assert_metrics_match_predictions(metrics: dict, predictions: pd.DataFrame) -> None:
    """The test metrics of metrics.json, recomputed from predictions.parquet with sklearn
    alone (percent; F1 and kappa at probability 0.5)."""
    from sklearn.metrics import (
        auc,
        average_precision_score,
        cohen_kappa_score,
        f1_score,
        log_loss,
        precision_recall_curve,
        roc_auc_score,
    )

    labels, probability = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    predicted = (probability > 0.5).astype(int)
    precision, recall, _ = precision_recall_curve(labels, probability)
    expected = {"test/pr_auc": 100 * auc(recall, precision),
                "test/average_precision": 100 * average_precision_score(labels, probability),
                "test/f1": 100 * f1_score(labels, predicted), "test/kappa": 100 * cohen_kappa_score(labels, predicted),
                "test/roc_auc": 100 * roc_auc_score(labels, probability),
                "test/loss": log_loss(labels, probability, labels=[0, 1])}
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-6)


def test_best_checkpoint_is_selected_on_the_models_monitor(trained_run):
    run_dir, _ = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
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


def patient_level_strings(run_dir) -> list[bytes]:
    """What must never reach a logger: every code of the run's data and the test split's
    subject ids (those with 5+ digits and unequal to any logged number; a match must not
    touch other digits or a dot, so logged floats, steps and timestamps cannot match).
    Checked to catch a leak: logging the predictions table makes the W&B test fail."""
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    logged_numbers = {float(v) for v in json.loads((run_dir / "metrics.json").read_text()).values()
                      if isinstance(v, (int, float))}

    def could_be_a_logged_number(text: str) -> bool:
        try:
            return float(text) in logged_numbers
        except ValueError:
            return False

    ids = [str(i) for i in predictions["subject_id"] if i >= 10_000 and not could_be_a_logged_number(str(i))]
    codes = [code for code in torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu",
                                         weights_only=True)["ehrlab_vocabulary"] if code.startswith("DIAGNOSIS//")]
    # Bare codes too (a logger could strip the namespace), but not 3-character ones like
    # "990", which any binary file may hold by chance.
    bare_codes = [c.rsplit("//", 1)[1] for c in codes if len(c.rsplit("//", 1)[1]) >= 5]
    assert len(ids) > 10 and len(codes) > 100
    return [s.encode() for s in [*ids, *codes, *bare_codes] if not could_be_a_logged_number(s)]


def assert_no_patient_data(logged: bytes, strings: list[bytes]) -> None:
    import re

    leaked = [s for s in strings if re.search(rb"(?<![0-9.])" + re.escape(s) + rb"(?![0-9])", logged)]
    assert not leaked, leaked[:5]


def test_wandb_offline_run_holds_the_logged_metrics(make_config, tmp_path, monkeypatch):
    # The product's own default, not the test suite's: W&B runs offline unless told otherwise.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    pipeline.run(make_config("logger=wandb", "trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")  # offline: no network, no wandb login
    records = wandb_records(offline_run)  # read as soon as the run returns: it must be complete
    history_keys = {item.key or "/".join(item.nested_key)
                    for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert "val/f1" in history_keys and "final/test/pr_auc" in history_keys
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]  # finished
    assert list(offline_run.rglob("pr_roc_curves*.png"))  # the aggregate curves, as an image
    assert not list(offline_run.rglob("tsne*"))  # patient-level points stay in the run directory
    logged = b"".join(p.read_bytes() for p in offline_run.rglob("*") if p.is_file())
    assert_no_patient_data(logged, patient_level_strings(run_dir))


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_other_loggers_write_under_the_run_directory(make_config, tmp_path, logger):
    pipeline.run(make_config(f"logger={logger}", "stage=train"))
    run_dir = tmp_path / "run"
    logged = b"".join(p.read_bytes() for p in (run_dir / logger).rglob("*") if p.is_file())
    assert b"val/f1" in logged and b"final/test/pr_auc" in logged
    assert_no_patient_data(logged, patient_level_strings(run_dir))


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
    (["task=heart_failure", "model=halo_small", "stage=train"], "HALO is a generator: use task=generation"),
    (["task=generation", "model=halo_small", "augment=diffusion"], "augment=diffusion wraps a plain risk backbone"),
    (["model=meddiffusion_as1", "augment=diffusion"], "model=meddiffusion_as1 is a generator or already augments"),
    (["augment=medgan", "trainer.gradient_clip_val=0.5", "stage=train"],
     "GANAugmentedPredictor optimises manually and clips its own gradients; set model.gradient_clip_val"),
])
def test_bad_input_exits_with_one_clear_message(args, message, cache_dir):
    result = run_cli("run.py", *args, "logger=none", env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_stage_builds_no_model_so_any_model_may_be_named(make_config, tmp_path):
    """The contrast to the generator-on-a-risk-task case above: stage=prepare stops before
    the model is built, so the same mismatched pair prepares the data without complaint."""
    pipeline.run(make_config("task=heart_failure", "model=halo_small", "stage=prepare"))
    assert json.loads((tmp_path / "run" / "data_stats.json").read_text())["n_positive"] > 0
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "completed"


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory, cache_dir):
    """`stage=all` of HALO (CPU size) on the default data's generation task."""
    from support import compose_config

    run_dir = tmp_path_factory.mktemp("generator")
    cfg = compose_config(["model=halo_small", "task=generation", "generate.n_patients=40", "evaluate.n_bootstrap=5",
                          "evaluate.discriminator_epochs=1"], run_dir, cache_dir)
    return run_dir, pipeline.run(cfg)


def test_split_seed_fixes_the_split_while_the_seed_varies(make_config, tmp_path):
    """`split_seed` follows `seed` unless given: with it fixed, runs of different seeds train
    and test on the same patients (one test set for a table of training seeds)."""
    def test_patients(*overrides):
        task_data = pipeline.prepare(make_config("task=generation", *overrides), tmp_path)
        return set(task_data.splits["test"].subject_id.tolist())

    seed_0 = test_patients("seed=0")
    assert test_patients("seed=1", "split_seed=0") == seed_0
    assert test_patients("seed=1") != seed_0
    assert test_patients("seed=0", "split_seed=1") == test_patients("seed=1")


def test_generator_stage_all_trains_generates_and_evaluates(generator_run, make_config, tmp_path):
    run_dir, metrics = generator_run
    synthetic = pd.read_parquet(run_dir / "synthetic.parquet")
    assert list(synthetic.columns) == ["subject_id", "visit_id", "code"]
    assert 0 < synthetic["subject_id"].nunique() <= 40
    assert pd.read_csv(run_dir / "synthetic.csv", dtype={"code": "str"}).shape == synthetic.shape
    task_data = pipeline.prepare(make_config("model=halo_small", "task=generation"), tmp_path)
    real_ids = np.concatenate([split.subject_id for split in task_data.splits.values()])
    # Synthetic ids come from a range no real id may enter, and depend on nothing real.
    assert synthetic["subject_id"].min() >= SYNTHETIC_SUBJECT_ID_START > real_ids.max()
    assert set(synthetic["subject_id"]) <= set(range(SYNTHETIC_SUBJECT_ID_START, SYNTHETIC_SUBJECT_ID_START + 40))
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


def test_ddp_on_two_cpu_processes(tmp_path, cache_dir, make_config):
    """trainer=ddp as on a multi-GPU node, with two CPU processes (gloo): one rank writes one
    set of files; the test metrics are those of the predictions on the whole test split,
    exactly as a one-process run computes them from the same weights."""
    run_dir = tmp_path / "ddp"
    result = run_cli("run.py", *SHRINK, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.precision=32-true", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
                     env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ehrlab: run directory") == 1  # only the first rank reports
    stats = json.loads((run_dir / "data_stats.json").read_text())
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert predictions["subject_id"].nunique() == len(predictions) == stats["split_patients"]["test"]
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".json", ".parquet", ".png")) == [
        "data_stats.json", "metrics.json", "pr_roc_curves.png", "predictions.parquet", "status.json"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_metrics_match_predictions(metrics, predictions)
    one_process = pipeline.run(make_config("stage=evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                                           run_dir=tmp_path / "one_process"))
    assert {k: one_process[k] for k in RISK_METRICS} == pytest.approx({k: metrics[k] for k in RISK_METRICS})


def test_halo_labels_generate_requested_labels_and_report_their_prevalence(make_config, tmp_path):
    """generate.labels reaches HALO's label row, and the run reports the share of generated
    patients whose codes carry each phenotype (what the label row of a real patient would hold)."""
    from ehrlab.data.phenotypes import PHENOTYPES, table_phenotypes

    tiny = ["model=halo_labels", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "task=generation",
            "generate.n_patients=30", "evaluate.n_bootstrap=2", "evaluate.discriminator_epochs=1"]
    metrics = pipeline.run(make_config(*tiny, "generate.labels=[septicemia,shock]", run_dir=tmp_path / "labels"))
    synthetic = pd.read_parquet(tmp_path / "labels" / "synthetic.parquet")
    carried = table_phenotypes(synthetic)
    for name in PHENOTYPES:
        assert metrics[f"synthetic/label_prevalence/{name}"] == pytest.approx(carried[name].mean())
    # A bad request is refused before any training: no checkpoint is written.
    with pytest.raises(UserInputError, match=r"unknown label\(s\) \['sepsis'\]"):
        pipeline.run(make_config(*tiny, "generate.labels=[sepsis]", run_dir=tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()
    with pytest.raises(UserInputError, match="HALO is not conditioned on labels"):
        pipeline.run(make_config(*tiny, "model.labels=none", "generate.labels=[shock]", run_dir=tmp_path / "plain"))
    assert not (tmp_path / "plain" / "checkpoints").exists()
