"""MedGAN (seed 002 §2.2, F.1), binary and count mode, on hand-built batches with a tiny Trainer.

The planted data: codes 2-4 occur together in some visits; code 5 sits in every visit of its
patients (up to three visits, so count mode sees counts of 3); 6-13 are independent.
Vocabulary id 1 is ``[UNK]``, which a task vocabulary holds and no generator may emit.
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
from lightning.pytorch.callbacks import ModelCheckpoint
from support import prebuilt_loader, to_batch

from ehrlab.checkpoints import load_model_weights
from ehrlab.models.generative.medgan import (
    MedGAN,
    MinibatchAveragingDiscriminator,
    ResidualGenerator,
)

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
N_CODES = 12
VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{100 + i}.{i}" for i in range(N_CODES)]
GROUP, GROUP_P = [2, 3, 4], 0.5
CHRONIC, CHRONIC_P = 5, 0.4  # in every visit of the patients who have it
SINGLETONS = [(6 + i, 0.4 / (i + 1)) for i in range(N_CODES - 4)]
AUTOENCODER_EPOCHS, EPOCHS = 3, 6
MODES = ["binary", "count"]


def planted_records(n_patients: int, seed: int) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        chronic = rng.random() < CHRONIC_P
        visits = []
        for _ in range(3 if p % 4 == 0 else rng.integers(1, 4)):
            visit = [c for c in GROUP if rng.random() < GROUP_P] if rng.random() < GROUP_P else []
            visit += [CHRONIC] if chronic else []
            visit += [c for c, prevalence in SINGLETONS if rng.random() < prevalence]
            visits.append(visit or [6])
        records.append(visits)
    return records


def batches(n_patients: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    records = planted_records(n_patients, seed)
    return [to_batch(records[i : i + batch_size]) for i in range(0, n_patients, batch_size)]


def make_model(mode: str, autoencoder_epochs: int = AUTOENCODER_EPOCHS) -> MedGAN:
    optimizer = functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=1e-4)
    return MedGAN(VOCABULARY, mode=mode, autoencoder_epochs=autoencoder_epochs, latent_dim=16, noise_dim=16,
                  generator_dims=(16, 16), discriminator_dims=(32, 16), optimizer=optimizer)


def tiny_trainer(epochs: int, **kwargs) -> pl.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def reconstruction(model: MedGAN, data: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        return float(np.mean([model.training_loss(b).item() for b in data]))


@pytest.fixture(scope="module", params=MODES)
def fitted(request) -> tuple[MedGAN, list[dict[str, torch.Tensor]], dict[str, float]]:
    """A model of each mode: 3 autoencoder epochs, then 3 adversarial ones, with a real Trainer."""
    torch.manual_seed(0)
    data = batches(256, 32, seed=0)
    model = make_model(request.param)
    model.loss_before_fit = reconstruction(model, data)
    trainer = tiny_trainer(EPOCHS)
    trainer.fit(model, train_dataloaders=prebuilt_loader(data), val_dataloaders=prebuilt_loader(data[:2]))
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return model, data, metrics


def test_fit_lowers_the_reconstruction_loss_and_logs_both_phases(fitted):
    model, data, metrics = fitted
    assert reconstruction(model, data) < 0.7 * model.loss_before_fit
    for name in ["train/autoencoder_loss_epoch", "train/generator_loss_epoch", "train/discriminator_loss_epoch",
                 "val/reconstruction_loss"]:
        assert np.isfinite(metrics[name]), name
    assert model.monitor is None  # best.ckpt is the latest epoch


def test_max_count_is_the_largest_training_count(fitted):
    model, _, _ = fitted
    expected = 3 if model.mode == "count" else 1  # binary rows are clipped to 1
    assert int(model.max_count) == expected


def test_generate_emits_vocabulary_codes_in_one_visit_per_patient(fitted):
    model, _, _ = fitted
    table = model.generate(200, seed=1, batch_size=64, progress=False)
    assert len(table) > 0
    assert set(table["code"]) <= set(VOCABULARY[2:])  # never [PAD] or [UNK]
    assert (table["visit_id"] == 0).all()
    assert table["subject_id"].between(0, 199).all()
    assert not table.duplicated(["subject_id", "code"]).any()
    if model.mode == "binary":
        assert list(table.columns) == ["subject_id", "visit_id", "code"]
    else:
        assert list(table.columns) == ["subject_id", "visit_id", "code", "count"]
        assert table["count"].dtype == np.int64
        assert table["count"].between(1, 3).all()  # rounded, clipped to max_count, zeros dropped
        assert (table["count"] > 1).any()
        # The chronic code sits in every visit of its patients (2.25 visits on average).
        assert table.loc[table["code"] == VOCABULARY[CHRONIC], "count"].mean() > 1.5


def test_an_empty_table_has_the_columns_of_its_mode():
    """Zero patients still give the mode's columns, so code reading a count table never
    meets one without ``count``."""
    for mode, columns in [("binary", ["subject_id", "visit_id", "code"]),
                          ("count", ["subject_id", "visit_id", "code", "count"])]:
        table = make_model(mode).generate(0, seed=0, progress=False)
        assert list(table.columns) == columns and table.empty
        if mode == "count":
            assert table["count"].dtype == np.int64


def test_generate_is_deterministic_for_a_seed_and_leaves_global_rng_alone(fitted):
    model, _, _ = fitted
    torch.manual_seed(123)
    first = model.generate(48, seed=7, batch_size=16, progress=False)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    again = model.generate(48, seed=7, batch_size=16, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert torch.equal(after_first, torch.rand(1))
    assert not first.equals(model.generate(48, seed=8, batch_size=16, progress=False))


def test_trainer_checkpoint_loads_into_a_fresh_model_and_generates_the_same(fitted, tmp_path):
    model, data, _ = fitted
    trainer = tiny_trainer(EPOCHS + 1, enable_checkpointing=True,
                           callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)])
    model.train()
    trainer.fit(model, train_dataloaders=prebuilt_loader(data[:1]))
    fresh = make_model(model.mode)
    load_model_weights(fresh, tmp_path / "last.ckpt")
    assert int(fresh.max_count) == int(model.max_count)
    pd.testing.assert_frame_equal(model.generate(60, seed=11, batch_size=32, progress=False),
                                  fresh.generate(60, seed=11, batch_size=32, progress=False))


def test_resuming_after_pretraining_continues_in_the_adversarial_phase(tmp_path):
    torch.manual_seed(0)
    data = batches(64, 32, seed=1)
    model = make_model("count", autoencoder_epochs=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    tiny_trainer(1, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, train_dataloaders=prebuilt_loader(data))
    resumed = make_model("count", autoencoder_epochs=1)
    encoder_before = resumed.autoencoder.encoder[0].weight.clone()  # overwritten by the checkpoint
    trainer = tiny_trainer(2)
    trainer.fit(resumed, train_dataloaders=prebuilt_loader(data), ckpt_path=tmp_path / "last.ckpt")
    assert trainer.current_epoch == 2
    assert "train/generator_loss_epoch" in trainer.callback_metrics
    assert "train/autoencoder_loss_epoch" not in trainer.callback_metrics
    # The encoder is trained only in pretraining: the resumed epoch leaves it as checkpointed.
    assert torch.equal(resumed.autoencoder.encoder[0].weight, model.autoencoder.encoder[0].weight)
    assert not torch.equal(resumed.autoencoder.encoder[0].weight, encoder_before)
    assert not torch.equal(resumed.generator.blocks[0].linear.weight, model.generator.blocks[0].linear.weight)
    assert int(resumed.max_count) == 3


def test_discriminator_sees_the_batch_mean():
    torch.manual_seed(0)
    discriminator = MinibatchAveragingDiscriminator(5, hidden=(8, 4))
    assert discriminator.net[0].in_features == 10
    records = torch.rand(4, 5)
    alone = discriminator(records)
    concatenated = torch.cat([records, records.mean(dim=0, keepdim=True).expand(4, 5)], dim=1)
    assert torch.allclose(alone, discriminator.net(concatenated).view(4), atol=1e-6)  # [x; batch mean] input
    records.requires_grad_(True)
    (split,) = torch.autograd.grad(discriminator(records).sum(), records)
    mean_input = torch.cat([records, records.mean(dim=0, keepdim=True).expand(4, 5)], dim=1)
    (joined,) = torch.autograd.grad(discriminator.net(mean_input).sum(), records)
    assert torch.allclose(split, joined, atol=1e-6)  # the generator's gradient also flows through the mean
    records = records.detach()
    changed = records.clone()
    changed[3] = 1.0  # only the last record changes ...
    assert not torch.allclose(discriminator(changed)[:3], alone[:3])  # ... yet the others' scores move


def test_generator_is_residual_with_a_mode_specific_output_block():
    torch.manual_seed(0)
    binary, count = ResidualGenerator("binary", 8, (8, 8), 8), ResidualGenerator("count", 8, (8, 8), 8)
    assert len(binary.blocks) == 3
    assert isinstance(binary.blocks[0].activation, torch.nn.ReLU)
    assert isinstance(binary.blocks[-1].activation, torch.nn.Tanh)
    assert isinstance(count.blocks[-1].activation, torch.nn.ReLU)
    noise = torch.randn(6, 8)
    block = binary.blocks[0]
    assert torch.allclose(block(noise), noise + torch.relu(block.norm(block.linear(noise))))
    with pytest.raises(ValueError, match="keep their width"):
        ResidualGenerator("binary", 8, (16,), 8)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        MedGAN(VOCABULARY, mode="ordinal")


def _compose(tmp_path: Path, name: str):
    shutil.copytree(CONF_MODEL, tmp_path / "model")
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: medgan\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}"])


def test_config_composes_to_the_paper_sizes_and_count_inherits_them(tmp_path):
    composed = _compose(tmp_path, "medgan")
    cfg = composed.model
    assert cfg.mode == "binary" and cfg.autoencoder_epochs == 100 and composed.epochs == 1100
    assert composed.data.batch_size == 128
    assert (cfg.latent_dim, cfg.noise_dim, list(cfg.generator_dims), list(cfg.discriminator_dims)) == \
        (128, 128, [128, 128], [256, 128])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 1e-4 and list(cfg.optimizer.betas) == [0.9, 0.999]
    model = instantiate(cfg, vocabulary=VOCABULARY)
    assert isinstance(model, MedGAN) and model.autoencoder.encoder[0].out_features == 128
    optimizers = model.configure_optimizers()
    assert len(optimizers) == 3 and all(isinstance(o, torch.optim.Adam) for o in optimizers)
    assert optimizers[0].defaults["weight_decay"] == 1e-4 and tuple(optimizers[0].defaults["betas"]) == (0.9, 0.999)
    # The generator's optimiser also trains the decoder (the original medGAN).
    generator_params = {id(p) for group in optimizers[2].param_groups for p in group["params"]}
    assert id(model.autoencoder.decoder.weight) in generator_params
    shutil.rmtree(tmp_path / "model")
    count = _compose(tmp_path, "medgan_count")
    assert count.model.mode == "count" and count.epochs == 1100 and count.model.autoencoder_epochs == 100
    assert instantiate(count.model, vocabulary=VOCABULARY).mode == "count"
