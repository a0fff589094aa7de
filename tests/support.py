"""Helpers shared by the tests: fixture paths, the real Hydra config composed and shrunk, and
`python run.py` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.data import DataLoader

from ehrlab.config import CONFIG_DIR, PROJECT_ROOT, register_sweeps

FIXTURES = Path(__file__).parent / "fixtures"
MIMIC3_TINY = FIXTURES / "mimic3-tiny"
MIMIC4_DEMO = FIXTURES / "mimic-iv-demo-2.2"
MIMIC_CXR_TINY = FIXTURES / "mimic-cxr-tiny"  # MIMIC-CXR-JPG rows for four subjects of the MIMIC-IV demo
SMALL_SYNTHETIC = 1500  # patients: enough for a heart-failure cohort of a few hundred

# What every composed test config overrides: tiny data, one short epoch, no logger.
SHRINK = [
    f"data.source.n_patients={SMALL_SYNTHETIC}",
    "trainer=debug",
    "logger=none",
    "data.batch_size=32",
]


def compose_config(overrides: list[str], run_dir: Path, cache_dir: Path, shrink: bool = True):
    """The real config from conf/, composed as `python run.py <overrides>` would, and shrunk."""
    register_sweeps()
    GlobalHydra.instance().clear()
    data_override = [o for o in overrides if o.startswith("data=")]
    shrink_overrides = SHRINK if shrink else []
    if data_override and data_override[-1] != "data=synthetic":
        shrink_overrides = [o for o in shrink_overrides if not o.startswith("data.source.n_patients")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*shrink_overrides, f"run_dir={run_dir}", f"cache_dir={cache_dir}",
                                           *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for the ${hydra:...} resolvers, as in a real run
    with open_dict(cfg):
        del cfg["hydra"]  # a real run's task config has no hydra node either
    return cfg


# A MedDiffusion small enough for unit tests (LSTM backbone, denoiser and attention shrunk).
MEDDIFFUSION_SMALL = [
    "model.backbone.visit_dim=16",
    "model.backbone.hidden_dim=12",
    "model.backbone.time_dim=8",
    "model.backbone.dropout=0.0",
    "model.attention_dim=8",
    "model.denoiser.channels=8",
    "model.diffusion_steps=50",
]


# What a chest X-ray datamodule tells its models (CXRDataModule.model_arguments).
CXR_MODEL_ARGUMENTS = {"findings": ["chexpert:Edema", "chexpert:Pleural Effusion"], "event_dim": 48, "image_size": 32,
                       "max_events": 64}


def model_arguments(model_cfg, vocabulary: list[str]) -> dict:
    """The constructor arguments the runner's datamodule would give this model config:
    chest X-ray forecasters learn from findings and event embeddings, the others from a
    code vocabulary."""
    if str(model_cfg._target_).startswith("ehrlab.models.cxr."):
        return CXR_MODEL_ARGUMENTS
    return {"vocabulary": vocabulary}


def compose_risk_model(name: str, vocabulary: list[str], overrides=()):
    """conf/model/<name>.yaml with overrides, instantiated as the runner does."""
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"model/{name}", overrides=list(overrides))
    return instantiate(cfg.model, vocabulary=vocabulary)


def run_cli(*args: str, cwd: Path = PROJECT_ROOT, env_extra: dict | None = None, timeout: int = 600):
    """`python run.py <args>` in a subprocess, as a user types it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def wandb_records(offline_run: Path) -> list:
    """Every record of an offline W&B run (`offline-run-*/run-*.wandb`), parsed.

    The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (CRC32, length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail too short for a chunk header is zero padding."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = next(offline_run.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B", offline_run
    block, position, records, pending = 32768, 7, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # padding at the end of a block
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def to_batch(records: list[list[list[int]]]) -> dict[str, torch.Tensor]:
    """Patients given as lists of visits of code ids, in the DataModule's batch layout
    (left-aligned, zero-padded); for the generator tests."""
    n_visits = max(len(r) for r in records)
    n_codes = max(len(v) for r in records for v in r)
    codes = torch.zeros(len(records), n_visits, n_codes, dtype=torch.long)
    for p, record in enumerate(records):
        for v, visit in enumerate(record):
            codes[p, v, : len(visit)] = torch.tensor(visit)
    lengths = torch.tensor([len(r) for r in records])
    return {
        "codes": codes,
        "n_visits": lengths,
        "visit_mask": torch.arange(n_visits)[None, :] < lengths[:, None],
        "subject_id": torch.arange(len(records)),
    }


def prebuilt_loader(batches: list[dict[str, torch.Tensor]]) -> DataLoader:
    """Prebuilt batches served as they are (batch_size=None: no re-collation)."""
    return DataLoader(batches, batch_size=None)


def planted_records(n_patients: int, seed: int | np.random.Generator, first_code: int, n_codes: int = 12) -> list[list[list[int]]]:
    """Patients of 1-3 visits over code ids first_code .. first_code + n_codes - 1, with planted
    structure for the generator tests: the first three codes occur together (p 0.6 per visit),
    the next two together (p 0.3), the rest are independent singletons of decreasing
    prevalence; an otherwise empty visit holds the first singleton. A Generator given as the
    seed is drawn from (and left advanced), for callers that draw more from it."""
    groups = [(list(range(first_code, first_code + 3)), 0.6), ([first_code + 3, first_code + 4], 0.3)]
    singletons = [(first_code + 5 + i, 0.5 / (i + 1)) for i in range(n_codes - 5)]
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n_patients):
        visits = []
        for _ in range(rng.integers(1, 4)):
            visit = [c for group, p in groups if rng.random() < p for c in group]
            visit += [c for c, p in singletons if rng.random() < p]
            visits.append(visit or [first_code + 5])
        records.append(visits)
    return records
