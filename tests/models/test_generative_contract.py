"""The generator contract, checked on both HALO and the GPT-2 baseline.

Training data here is built by hand in the DataModule's batch layout (codes [B, V, C], 0 =
padding, ``n_visits``) with planted structure: code groups that always occur together.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from support import planted_records, prebuilt_loader, to_batch
from transformers import get_cosine_schedule_with_warmup

from ehrlab.models.generative.base import Generator, dense_visit_index
from ehrlab.models.generative.gpt import GPTBaseline
from ehrlab.models.generative.halo import HALO

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
N_CODES = 12
VOCABULARY = ["[PAD]"] + [f"DIAGNOSIS//ICD//9//{100 + i}.{i}" for i in range(N_CODES)]


def batches(n_patients: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    records = planted_records(n_patients, seed, first_code=1)
    return [to_batch(records[i : i + batch_size]) for i in range(0, n_patients, batch_size)]


def make_model(kind: str, lr: float = 3e-3) -> Generator:
    optimizer = functools.partial(torch.optim.Adam, lr=lr)
    if kind == "halo":
        return HALO(VOCABULARY, n_layer=1, n_embd=32, n_head=4, n_ctx=8, n_positions=8, dropout=0.0, optimizer=optimizer)
    return GPTBaseline(
        VOCABULARY,
        n_layer=1,
        n_embd=32,
        n_head=4,
        n_positions=64,
        max_generation_length=48,
        dropout=0.0,
        optimizer=optimizer,
        scheduler=functools.partial(get_cosine_schedule_with_warmup),
    )


def tiny_trainer(epochs: int, **kwargs) -> pl.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def mean_loss(model: Generator, data: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(np.mean([model.training_loss(b).item() for b in data]))
    model.train()
    return loss


def patient_prevalence(table: pd.DataFrame, n_patients: int) -> np.ndarray:
    per_code = table.drop_duplicates(["subject_id", "code"]).groupby("code").size()
    return per_code.reindex(VOCABULARY[1:], fill_value=0).to_numpy() / n_patients


def real_table(records: list[list[list[int]]]) -> pd.DataFrame:
    rows = [(p, v, VOCABULARY[c]) for p, r in enumerate(records) for v, visit in enumerate(r) for c in visit]
    return pd.DataFrame(rows, columns=["subject_id", "visit_id", "code"])


KINDS = ["halo", "gpt"]


@pytest.fixture(scope="module", params=KINDS)
def fitted(request) -> tuple[str, Generator, list[dict[str, torch.Tensor]]]:
    """A model of each kind briefly trained on planted data with a real Trainer."""
    torch.manual_seed(0)
    data = batches(256, 32, seed=0)
    # HALO's fine module passes an early code to the next through a single masked ReLU unit,
    # which needs larger weights, hence more and larger steps than GPT to show co-occurrence.
    lr, epochs = {"halo": (1e-2, 30), "gpt": (3e-3, 12)}[request.param]
    model = make_model(request.param, lr=lr)
    before = mean_loss(model, data)
    tiny_trainer(epochs=epochs).fit(model, train_dataloaders=prebuilt_loader(data), val_dataloaders=prebuilt_loader(data[:2]))
    model.loss_before_fit = before
    return request.param, model, data


def test_loss_decreases_in_tiny_fit(fitted):
    _, model, data = fitted
    assert mean_loss(model, data) < 0.8 * model.loss_before_fit


def test_generate_emits_valid_codes_with_the_long_table_dtypes(fitted):
    _, model, _ = fitted
    table = model.generate(40, seed=1, batch_size=16, progress=False)
    assert list(table.columns) == ["subject_id", "visit_id", "code"]
    assert table["subject_id"].dtype == np.int64 and table["visit_id"].dtype == np.int64
    assert pd.api.types.is_string_dtype(table["code"])
    assert len(table) > 0
    assert set(table["code"]) <= set(VOCABULARY[1:])  # no padding or special token
    assert table["subject_id"].between(0, 39).all()
    assert not table.duplicated().any()
    # Visits are numbered densely from 0 within each patient.
    visit_numbers = table.drop_duplicates(["subject_id", "visit_id"]).groupby("subject_id")["visit_id"]
    assert (visit_numbers.max() + 1 == visit_numbers.nunique()).all()
    assert (visit_numbers.min() == 0).all()


def test_generate_is_deterministic_for_a_seed_and_leaves_global_rng_alone(fitted):
    _, model, _ = fitted
    torch.manual_seed(123)
    first = model.generate(24, seed=7, batch_size=8, progress=False)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    again = model.generate(24, seed=7, batch_size=8, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert torch.equal(after_first, torch.rand(1))
    other = model.generate(24, seed=8, batch_size=8, progress=False)
    assert not first.equals(other)
    # generate() switches to eval mode inside and restores the caller's mode.
    model.train()
    model.generate(2, seed=0, progress=False)
    assert model.training
    model.eval()
    model.generate(2, seed=0, progress=False)
    assert not model.training


def test_planted_structure_is_reproduced(fitted):
    kind, model, _ = fitted
    n = 400
    table = model.generate(n, seed=3, progress=False)
    real = patient_prevalence(real_table(planted_records(2000, seed=5, first_code=1)), 2000)
    synthetic = patient_prevalence(table, n)
    assert np.corrcoef(real, synthetic)[0, 1] > 0.5
    # Codes 1-3 always appear together (and 2 never without 1): far more synthetic visits
    # hold code 2 when they hold code 1 than when they do not.
    visits = table.assign(present=1).pivot_table(
        index=["subject_id", "visit_id"], columns="code", values="present", fill_value=0
    )
    holds_first = visits[VOCABULARY[1]] == 1
    assert 20 < holds_first.sum() < len(visits) - 20
    second = visits[VOCABULARY[2]]
    assert second[holds_first].mean() - second[~holds_first].mean() > 0.4


def test_trainer_checkpoint_loads_back_and_generates_the_same(fitted, tmp_path):
    kind, model, data = fitted
    trainer = tiny_trainer(epochs=1, max_steps=1)
    model.train()
    trainer.fit(model, train_dataloaders=prebuilt_loader(data[:1]))
    path = tmp_path / f"{kind}.ckpt"
    trainer.save_checkpoint(path)
    loaded = type(model).load_from_checkpoint(path, vocabulary=VOCABULARY)
    pd.testing.assert_frame_equal(
        model.generate(30, seed=11, batch_size=16, progress=False),
        loaded.generate(30, seed=11, batch_size=16, progress=False),
    )
    assert torch.load(path, weights_only=False)["ehrlab_vocabulary"] == VOCABULARY


def test_state_dict_round_trip_generates_the_same(fitted):
    kind, model, _ = fitted
    fresh = make_model(kind)
    fresh.load_state_dict(model.state_dict())
    pd.testing.assert_frame_equal(
        model.generate(20, seed=2, progress=False), fresh.generate(20, seed=2, progress=False)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_generate_zero_patients_gives_an_empty_table(kind):
    table = make_model(kind).generate(0, seed=0, progress=False)
    assert list(table.columns) == ["subject_id", "visit_id", "code"] and len(table) == 0


def test_dense_visit_index_skips_empty_visits_within_each_patient():
    patient = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3])
    visit = torch.tensor([0, 0, 4, 2, 5, 1, 1, 7])
    assert dense_visit_index(patient, visit).tolist() == [0, 0, 1, 0, 1, 0, 0, 1]


def _compose(tmp_path: Path, name: str):
    shutil.copytree(CONF_MODEL, tmp_path / "model")
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: gpt\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}"])


def test_halo_config_composes_to_the_paper_size_and_small_inherits_it(tmp_path):
    composed = _compose(tmp_path, "halo")
    paper = composed.model
    assert (paper.n_layer, paper.n_embd, paper.n_head, paper.n_ctx) == (12, 768, 12, 48)
    assert composed.data.batch_size == 48 and paper.optimizer.lr == 1e-4
    shutil.rmtree(tmp_path / "model")
    small = _compose(tmp_path, "halo_small").model
    assert small.n_ctx == 48 and small.n_layer == 2 and small.optimizer._target_ == "torch.optim.Adam"
    model = instantiate(small, vocabulary=VOCABULARY)
    assert isinstance(model, HALO) and model.hparams.n_embd == 64
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)


def test_gpt_config_instantiates_within_the_f5_ranges(tmp_path):
    cfg = _compose(tmp_path, "gpt").model
    model = instantiate(cfg, vocabulary=VOCABULARY)
    assert isinstance(model, GPTBaseline)
    assert 2 <= cfg.n_layer <= 8 and 16 <= cfg.n_embd <= 512 and cfg.n_head == 8 and cfg.n_positions == 512
    assert model.monitor == "val/loss" and model.monitor_mode == "min"
