"""sweep=generators_small end to end, as a user runs it: every generator of seed 002 trains on a
tiny source, generates and is evaluated by the same suite, and `python -m ehrlab.report` renders
one row per generator (Table 1), the real sets (Table 12) and the long-tail figure."""

from __future__ import annotations

import json

import pandas as pd
import yaml
from support import run_cli

from ehrlab.config import SWEEPS_DIR

GENERATORS = yaml.safe_load((SWEEPS_DIR / "generators_small.yaml").read_text())["hydra"]["sweeper"]["params"]["model"]


def test_every_generator_of_the_small_sweep_runs_and_gets_a_row(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "run.py", "-m", "sweep=generators_small", "data.source.n_patients=300", "trainer=debug", "trainer.max_epochs=2",
        "logger=none", "data.batch_size=64", "generate.n_patients=40", "evaluate.n_bootstrap=3",
        "evaluate.discriminator_epochs=1", "+evaluate.random_forest_trees=5", f"hydra.sweep.dir={sweep_dir}",
        env_extra={"EHRLAB_CACHE": str(cache_dir), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    models = GENERATORS.split(",")
    assert len(models) == 6
    for job, model in enumerate(models):
        run_dir = next(sweep_dir.glob(f"{job}_*"))
        synthetic = pd.read_parquet(run_dir / "synthetic.parquet")
        assert 0 < synthetic["subject_id"].nunique() <= 40, model
        flat = model.startswith(("medgan", "corgan"))
        if flat:
            assert (synthetic["visit_id"] == 0).all(), model  # one pseudo-visit per patient
        assert ("count" in synthetic) == (model == "medgan_count_small"), model
        metrics = json.loads((run_dir / "metrics.json").read_text())
        family_score = metrics["eval/disc_random_forest_score" if flat else "eval/disc_lstm_score"]
        assert metrics["eval/disc_score"] == family_score, model

    report = run_cli("-m", "ehrlab.report", str(sweep_dir))
    assert report.returncode == 0, report.stderr[-3000:]
    table1 = report.stdout.split("### Table 1")[1].split("###")[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table1.splitlines() if line.startswith("| ")][1:]
    assert sorted(rows) == sorted(models)
    assert "| real training |" in report.stdout
    assert (sweep_dir / "figure3_long_tail.png").is_file()
