"""What the runner does when things go wrong: a bad job in a sweep, a killed run, a bad or
hostile checkpoint, nonsense option values, and the privacy of what a run writes."""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from support import SHRINK, run_cli, wandb_records
from ehrlab import pipeline
from ehrlab.config import PROJECT_ROOT, check_config, resumed_config
from ehrlab.errors import UserInputError

SHRINK_WITHOUT_BATCH = [o for o in SHRINK if not o.startswith("data.batch_size")]


# --- sweeps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_does_not_end_the_multirun(launcher, tmp_path, cache_dir):
    """Two seeds × a good and a nonsense batch size: the good jobs finish and are averaged,
    the bad ones fail alone, the multirun ends non-zero naming each failed job."""
    sweep_dir = tmp_path / "sweep"
    launcher_args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    result = run_cli("run.py", "-m", "seed=0,1", "data.batch_size=32,0", *SHRINK_WITHOUT_BATCH, *launcher_args,
                     f"hydra.sweep.dir={sweep_dir}", env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode != 0
    assert "2 of 4 jobs failed" in result.stderr
    for job in (1, 3):  # Hydra numbers the cartesian product seed-major: (0,32) (0,0) (1,32) (1,0)
        assert f"job {job} (seed={job // 2} data.batch_size=0" in result.stderr
    assert result.stderr.count("data.batch_size=0: must be a whole number ≥ 1") >= 2
    assert "Traceback" not in result.stderr

    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name[0] for j in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        good = job.name[0] in "02"
        assert status["status"] == ("completed" if good else "failed")
        assert (job / "metrics.json").is_file() == good
        if not good:
            assert status["error"] == "data.batch_size=0: must be a whole number ≥ 1."

    report = run_cli("-m", "ehrlab.report", str(sweep_dir))
    assert report.returncode == 0, report.stderr
    assert "(n = 2)" in report.stdout  # the two good seeds, and only they, are averaged
    assert report.stdout.count("data.batch_size=0: must be a whole number ≥ 1.") == 2
    summary = pd.read_csv(sweep_dir / "summary.csv")
    pr_auc = summary.loc[summary["metric"] == "test/pr_auc"]
    values = [json.loads((j / "metrics.json").read_text())["test/pr_auc"] for j in (jobs[0], jobs[2])]
    assert pr_auc["n"].tolist() == [2]
    assert pr_auc["mean"].iloc[0] == pytest.approx(sum(values) / 2)


def test_run_directories_are_private(tmp_path, cache_dir):
    run_dir = tmp_path / "private"
    result = run_cli("run.py", *SHRINK, f"hydra.run.dir={run_dir}", env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for name in ("predictions.parquet", "metrics.json", "config.yaml", "checkpoints/best.ckpt"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600, name


# --- a run killed and resumed in place ---------------------------------------------------------

RESUME_ARGS = [*SHRINK, "stage=train", "trainer.max_epochs=8"]


def test_resume_after_sigkill_ends_like_the_uninterrupted_run(tmp_path, cache_dir):
    """Killed after its second epoch and resumed with `resume=<run dir>`, a run writes the
    same metrics.json as one never interrupted: the weights, optimiser, scheduler,
    best-checkpoint and early-stopping trackers and the random state all come back."""
    env = {"EHRLAB_CACHE": str(cache_dir)}
    uninterrupted = run_cli("run.py", *RESUME_ARGS, f"hydra.run.dir={tmp_path / 'whole'}", env_extra=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "run.py", *RESUME_ARGS, f"hydra.run.dir={killed_dir}"],
                               cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / "last.ckpt"
    epoch = -1
    while process.poll() is None and epoch < 1:
        if last.exists():
            try:
                epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
            except Exception:  # being replaced right now; look again
                pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert json.loads((killed_dir / "status.json").read_text())["status"] == "running"
    assert not (killed_dir / "metrics.json").exists()

    resumed = run_cli("run.py", f"resume={killed_dir}", env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states from the checkpoint" in resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "whole"]  # in place, no new directory
    assert json.loads((killed_dir / "status.json").read_text())["status"] == "completed"
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    again = json.loads((killed_dir / "metrics.json").read_text())
    assert again == whole
    best = torch.load(killed_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    best_whole = torch.load(tmp_path / "whole" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == best_whole["epoch"]


def test_resume_refuses_what_it_cannot_continue(make_config, tmp_path):
    with pytest.raises(UserInputError, match="no config.yaml there"):
        pipeline.run(make_config(f"resume={tmp_path / 'nothing'}", shrink=False))


def test_resuming_a_run_saved_before_split_seed_keeps_its_split(make_config, tmp_path):
    """A run saved before `split_seed` existed was split with its `seed`: resuming it must
    read the same prepared data, not the split of the default `split_seed`."""
    saved = make_config("seed=3", shrink=False)
    with open_dict(saved):
        del saved["split_seed"]
    run_dir = tmp_path / "old_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").touch()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    resumed = resumed_config(OmegaConf.create({"resume": str(run_dir)}))
    assert resumed.split_seed == 3


# --- checkpoints: data only, and one message per way a file can be wrong ------------------------

class RunsCode:
    """Unpickling this would create a marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, cache_dir):
    from support import compose_config

    run_dir = tmp_path_factory.mktemp("trained_for_checkpoints")
    pipeline.run(compose_config(["stage=train"], run_dir, cache_dir))
    return run_dir / "checkpoints" / "best.ckpt"


def _bad_checkpoint(kind: str, good, folder):
    path = folder / f"{kind}.ckpt"
    if kind == "pickle_running_code":
        with open(path, "wb") as file:
            pickle.dump({"state_dict": {}, "payload": RunsCode(folder / "code_ran")}, file)
    elif kind == "torch_file_running_code":
        torch.save({"state_dict": {}, "payload": RunsCode(folder / "code_ran")}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("subject_id,code\n1,428.0\n")
    elif kind == "no_weights":
        torch.save({"epoch": 3}, path)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("pickle_running_code", "never executes code from a checkpoint"),
    ("torch_file_running_code", "never executes code from a checkpoint"),
    ("empty", "is an empty file"),
    ("truncated", "is not a readable checkpoint"),
    ("text", "is not a readable checkpoint"),
    ("no_weights", "has no model weights"),
])
def test_bad_checkpoints_are_refused_with_one_message(kind, message, trained_checkpoint, make_config, tmp_path):
    path = _bad_checkpoint(kind, trained_checkpoint, tmp_path)
    with pytest.raises(UserInputError, match=message) as error:
        pipeline.run(make_config("stage=evaluate", f"ckpt_path={path}"))
    assert str(path) in str(error.value)
    assert not (tmp_path / "code_ran").exists()  # nothing in the file was executed
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and str(path) in status["error"]


def test_checkpoint_of_another_model_is_refused(trained_checkpoint, make_config):
    with pytest.raises(UserInputError, match="holds a RiskPredictor model, not the MedDiffusion"):
        pipeline.run(make_config("stage=evaluate", "model=meddiffusion", f"ckpt_path={trained_checkpoint}"))


def test_checkpoints_are_plain_data(trained_checkpoint):
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["ehrlab_model"] == "ehrlab.models.risk.base.RiskPredictor"
    optimizer = checkpoint["hyper_parameters"]["optimizer"]
    assert optimizer == {"_target_": "torch.optim.adam.Adam", "_partial_": True, "lr": 1e-3, "weight_decay": 1e-3}
    assert "RandomStateCheckpoint" in checkpoint["callbacks"]


# --- failure marks ----------------------------------------------------------------------------

def test_a_failed_run_is_marked_failed_in_its_directory_and_in_wandb(trained_checkpoint, make_config, tmp_path):
    bad = _bad_checkpoint("truncated", trained_checkpoint, tmp_path)
    with pytest.raises(UserInputError):
        pipeline.run(make_config("logger=wandb", "stage=evaluate", f"ckpt_path={bad}"))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["error_type"] == "UserInputError"
    assert status["ended"] >= status["started"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    (offline_run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    exits = [r.exit for r in wandb_records(offline_run) if r.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [1]


# --- option values ------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=0", "data.batch_size=0: must be a whole number ≥ 1"),
    ("data.batch_size=-8", "data.batch_size=-8: must be a whole number ≥ 1"),
    ("data.batch_size=2.5", "data.batch_size=2.5: must be a whole number ≥ 1"),
    ("data.num_workers=-1", "data.num_workers=-1: must be a whole number ≥ 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be a whole number ≥ 1 (or -1: no limit)"),
    ("generate.n_patients=0", "generate.n_patients=0: must be a whole number ≥ 1, or null"),
    ("seed=-3", "seed=-3: must be a whole number ≥ 0"),
    ("split_seed=1.5", "split_seed=1.5: must be a whole number ≥ 0"),
    ("model.early_stopping_patience=0", "model.early_stopping_patience=0: must be a whole number ≥ 1, or null"),
    ("stage=trian", "stage=trian is not a stage"),
    ("ckpt_path=x.ckpt", "to continue training a run, use resume="),
])
def test_nonsense_values_are_refused_before_any_work(override, message, make_config):
    cfg = make_config(override)
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(cfg)


def test_sensible_values_pass_the_checks(make_config):
    check_config(make_config("trainer.max_epochs=-1", "generate.n_patients=null", "data.batch_size=1",
                              "model.early_stopping_patience=null"))


# --- synthetic ids ----------------------------------------------------------------------------

def test_sources_cannot_hold_ids_in_the_synthetic_range():
    """Synthetic patients are numbered from SYNTHETIC_SUBJECT_ID_START; a source whose ids
    reach that range is refused, so a synthetic id can never be a real one."""
    from ehrlab.data.schema import SYNTHETIC_SUBJECT_ID_START, conform_events, conform_static

    static = pd.DataFrame({"subject_id": [7, SYNTHETIC_SUBJECT_ID_START], "gender": ["F", "M"]})
    with pytest.raises(UserInputError, match="renumber the source's subjects"):
        conform_static(static)
    events = pd.DataFrame({"subject_id": [-1], "time": [pd.Timestamp("2150-01-01")], "code": ["X"]})
    with pytest.raises(UserInputError, match="outside 0"):
        conform_events(events)
    assert len(conform_static(static.iloc[:1])) == 1


def test_plain_data_turns_config_lists_into_lists():
    """A Hydra ListConfig in a model's hyperparameters (an architecture's channel list) reaches
    the checkpoint as a list, not as its repr."""
    from omegaconf import OmegaConf

    from ehrlab.checkpoints import plain_data

    node = OmegaConf.create({"architecture": {"block_out_channels": [8, 16, 32]}, "betas": (0.9, 0.98)})
    assert plain_data(node) == {"architecture": {"block_out_channels": [8, 16, 32]}, "betas": [0.9, 0.98]}
    assert plain_data("abc") == "abc"
