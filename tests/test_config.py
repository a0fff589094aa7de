"""Every file in conf/ and sweeps/ composes with the real config and instantiates."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from support import MIMIC3_TINY, MIMIC4_DEMO, compose_config
from ehrlab.config import CONFIG_DIR, SWEEPS_DIR
from ehrlab.models.base import PAD_CODE

VOCABULARY = [PAD_CODE, *(f"DIAGNOSIS//ICD//9//{c}" for c in ("401.9", "428.0", "250.00", "414.01", "V45.81"))]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture
def compose(tmp_path, cache_dir):
    def make(*overrides):
        return compose_config(list(overrides), tmp_path / "run", cache_dir, shrink=False)

    return make


def test_every_group_has_options():
    for group in ("data", "task", "model", "trainer", "logger", "experiment"):
        assert options(group), group


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate(compose, model):
    cfg = compose(f"model={model}")
    module = instantiate(cfg.model, vocabulary=VOCABULARY)
    assert isinstance(module, pl.LightningModule)
    assert module.monitor and module.monitor_mode in ("min", "max")
    task = "generation" if hasattr(module, "generate") else "heart_failure"
    assert compose(f"model={model}", f"task={task}").model == cfg.model


@pytest.mark.parametrize("task", options("task"))
def test_task_configs_instantiate(compose, task):
    built = instantiate(compose(f"task={task}").task)
    assert built.name == task


@pytest.mark.parametrize(("data", "root"), [("synthetic", None), ("mimic3", MIMIC3_TINY), ("mimic4", MIMIC4_DEMO),
                                            ("meds", None)])
def test_data_configs_instantiate(compose, data, root, tmp_path):
    if data == "meds":  # a MEDS folder made from the MIMIC-IV demo
        from ehrlab.data.meds_export import export_meds
        from ehrlab.data.sources.mimic4 import MIMIC4Source

        root = export_meds(MIMIC4Source(MIMIC4_DEMO).read(), tmp_path / "meds", None, "demo")
    overrides = [f"data={data}"] + ([f"data.root={root}"] if root else [])
    source = instantiate(compose(*overrides).data.source)
    assert source.name == data
    assert len(source.cache_key()) == 16
    assert sorted(options("data")) == ["meds", "mimic3", "mimic4", "synthetic"]


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_instantiate(compose, trainer):
    cfg = compose(f"trainer={trainer}")
    settings = OmegaConf.to_container(cfg.trainer)
    if settings["accelerator"] == "gpu":  # no GPU here: check every other setting on the CPU
        settings |= {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    assert isinstance(instantiate(settings, logger=False), pl.Trainer)


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_configs_instantiate(compose, logger, tmp_path):
    cfg = compose(f"logger={logger}")
    if logger == "none":
        assert not cfg.logger
    else:
        assert instantiate(cfg.logger, save_dir=str(tmp_path)) is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_configs_compose_and_instantiate(compose, experiment):
    cfg = compose(f"experiment={experiment}", f"data.root={MIMIC3_TINY}")
    assert instantiate(cfg.task).name == cfg.task.name
    assert isinstance(instantiate(cfg.model, vocabulary=VOCABULARY), pl.LightningModule)
    instantiate(cfg.data.source)


@pytest.mark.parametrize("sweep", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_sweeps_compose(tmp_path, cache_dir, sweep):
    model = "meddiffusion" if sweep == "lambda_grid" else "lstm"
    cfg = compose_config([f"sweep={sweep}", f"model={model}"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    params = HydraConfig.get().sweeper.params
    assert params, sweep
    for key in params:  # every swept key exists in the composed config
        assert OmegaConf.select(cfg, key) is not None, key


def test_lambda_grid_matches_appendix_6_5(tmp_path, cache_dir):
    compose_config(["sweep=lambda_grid", "model=meddiffusion"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    params = HydraConfig.get().sweeper.params
    grid = [0.1, 0.25, 0.5, 0.75, 1.0]
    assert [float(v) for v in params["model.lambda_synthetic"].split(",")] == grid
    assert [float(v) for v in params["model.lambda_diffusion"].split(",")] == grid


@pytest.mark.parametrize(("launcher", "target"), [("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(tmp_path, cache_dir, launcher, target):
    compose_config([f"hydra/launcher={launcher}"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    assert HydraConfig.get().launcher._target_.endswith(target)


def test_seed_000_presets_hold_the_papers_settings(compose):
    """§4.2: input ends six months before the first diagnosis; Table 2's LSTM is the plain one."""
    meddiffusion = compose("experiment=meddiffusion_mimic3_hf", f"data.root={MIMIC3_TINY}")
    assert instantiate(meddiffusion.task).gap_days == 180
    assert type(instantiate(meddiffusion.model, vocabulary=VOCABULARY)).__name__ == "MedDiffusion"
    lstm = compose("experiment=lstm_mimic3_hf", f"data.root={MIMIC3_TINY}")
    assert instantiate(lstm.task).gap_days == 180
    model = instantiate(lstm.model, vocabulary=VOCABULARY)
    assert type(model).__name__ == "RiskPredictor"
    assert not model.backbone.use_time_embedding and not hasattr(model.backbone, "time_feature")
    assert lstm.data.batch_size == meddiffusion.data.batch_size == 32


@pytest.mark.parametrize(("overrides", "batch_size"), [
    ([], 64), (["model=halo"], 48), (["model=halo_small"], 32), (["model=gpt"], 64),
    (["model=halo", "data.batch_size=7"], 7), (["experiment=halo_mimic3"], 48),
])
def test_one_batch_size_key(compose, overrides, batch_size):
    """data.batch_size is the only batch size: a model may set its paper's value, the
    command line has the last word, and no model receives a batch size of its own."""
    cfg = compose(*overrides)
    assert cfg.data.batch_size == batch_size
    assert "batch_size" not in cfg.model


def test_multiruns_use_the_sweeper_that_lists_failed_jobs(compose):
    compose()
    from hydra.core.hydra_config import HydraConfig

    assert HydraConfig.get().sweeper._target_ == "hydra_plugins.ehrlab_sweeper.ehrlab_sweeper.EhrlabSweeper"
