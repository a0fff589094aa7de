"""MaskEHR augmentation baseline (seed 000 Table 2; Ma et al., SDM 2020): positive-only
synthetic patients from a masked-visit GAN, an RL selector, and the LSTM predictor, trained
with manual optimisation; composed from conf/model/maskehr_aug.yaml, shrunk."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from risk_batches import random_risk_batch

from ehrlab.config import CONFIG_DIR
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.maskehr_aug import MaskEHRAugmentation

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 40)]
SMALL = ["model.backbone.visit_dim=16", "model.backbone.hidden_dim=16", "model.backbone.time_dim=8",
         "model.backbone.dropout=0.0", "model.generator_dim=16", "model.discriminator_dim=8",
         "model.selector_hidden_dim=8"]
LOSSES = ("loss", "ce", "classifier_loss", "generator_loss", "generator_mle", "generator_reward",
          "discriminator_loss", "selector_loss", "selector_reward", "selected_fraction", "n_synthetic")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=["model=maskehr_aug", "augment=none", *SMALL, *overrides])


def build(*overrides) -> MaskEHRAugmentation:
    torch.manual_seed(0)
    return instantiate(composed(*overrides).model, vocabulary=VOCABULARY)


def batch(seed=0, n_patients=8, labels=None):
    data = random_risk_batch(len(VOCABULARY), n_patients, 5, 4, seed, pad_last_code=True, alternate_labels=True)
    if labels is not None:
        data["label"] = torch.as_tensor(labels)
    return data


def trainer_from_config(cfg, **overrides) -> pl.Trainer:
    """The composed trainer node (so the yaml's trainer settings must suit manual optimisation)."""
    settings = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "num_sanity_val_steps": 0, "max_epochs": 1} | overrides
    return instantiate(cfg.trainer, **settings)


def loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None)


def test_config_is_the_lstm_predictor_under_seed_000s_recipe_with_manual_clipping():
    cfg = composed()
    assert cfg.model._target_ == "ehrlab.models.risk.maskehr_aug.MaskEHRAugmentation"
    assert cfg.trainer.gradient_clip_val is None and cfg.model.gradient_clip_val == 1.0
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        lstm = compose("config", overrides=["model=lstm"])
    shrunk = {"visit_dim": 16, "hidden_dim": 16, "time_dim": 8, "dropout": 0.0}
    assert OmegaConf.to_container(cfg.model.backbone) == OmegaConf.to_container(lstm.model.backbone) | shrunk
    assert cfg.model.optimizer == lstm.model.optimizer and cfg.model.scheduler == lstm.model.scheduler
    model = build()
    assert isinstance(model.backbone, LSTMBackbone) and not model.automatic_optimization
    optimizers, schedulers = model.configure_optimizers()
    assert len(optimizers) == 4  # predictor, generator, discriminator, selector
    assert {id(p) for p in optimizers[0].param_groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert isinstance(schedulers[0], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert len(build("model.use_selector=false").configure_optimizers()[0]) == 3


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.5])
def test_synthetic_patients_are_positive_copies_of_positives_at_the_configured_ratio(ratio):
    model = build(f"model.synthetic_ratio={ratio}")
    data = batch(labels=[1, 0, 1, 0, 0, 1, 0, 0])
    positives = {0, 2, 5}
    synthetic = model.synthesise(data, generator=torch.Generator().manual_seed(1))
    n = int(ratio * 3 + 0.5)
    assert len(synthetic.sources) == n and synthetic.batch["codes"].shape == (n, 5, 4)
    assert set(synthetic.sources.tolist()) <= positives  # negatives are never augmented
    assert (synthetic.batch["label"] == 1).all()
    source = {key: value[synthetic.sources] for key, value in data.items()}
    for key in ("visit_mask", "time_delta", "time_to_end", "n_visits"):
        torch.testing.assert_close(synthetic.batch[key], source[key])
    codes, masked = synthetic.batch["codes"], synthetic.masked
    assert (masked <= source["visit_mask"]).all() and (masked.sum(dim=1) >= 1).all()
    torch.testing.assert_close(codes[~masked], source["codes"][~masked])  # unmasked visits are the real ones
    generated = codes[masked]
    assert (generated[:, 0] > 0).all() and (generated < len(VOCABULARY)).all()  # >= 1 code, valid ids
    assert ((generated > 0).int().diff(dim=1) <= 0).all()  # padding after the codes
    assert synthetic.log_prob.shape == synthetic.real_nll.shape == (int(masked.sum()),)


def test_a_batch_without_positives_gets_no_synthetic_patients():
    model = build()
    assert model.synthesise(batch(labels=[0] * 8)) is None
    assert model.n_synthetic(0) == 0 and build("model.synthetic_ratio=0").synthesise(batch()) is None


class Recorder(pl.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append({k.removeprefix("train/").removesuffix("_step"): float(v)
                           for k, v in trainer.callback_metrics.items() if k.endswith("_step")})


def test_trains_an_epoch_logging_each_loss_and_every_part_learns():
    cfg = composed("model.synthetic_ratio=1.5")
    torch.manual_seed(0)
    model = instantiate(cfg.model, vocabulary=VOCABULARY)
    drawn = []
    original = model.synthesise
    model.synthesise = lambda data, generator=None: drawn.append((data["label"].clone(), original(data))) or drawn[-1][1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    negatives_only = batch(seed=30, labels=[0] * 8)
    batches = [batch(seed=10 + i) for i in range(6)] + [negatives_only]
    recorder = Recorder()
    trainer = trainer_from_config(cfg, callbacks=[recorder])
    trainer.fit(model, loader(batches), loader(batches[:2]))

    assert trainer.current_epoch == 1 and "val/f1" in trainer.callback_metrics
    assert set(LOSSES) <= {k.removeprefix("train/").removesuffix("_epoch") for k in trainer.callback_metrics}
    # Every step: round(1.5 · positives) synthetic patients, all from positives, all labelled 1.
    for labels, synthetic in drawn:
        n_positives = int(labels.sum())
        if n_positives == 0:
            assert synthetic is None
            continue
        assert len(synthetic.sources) == int(1.5 * n_positives + 0.5)
        assert (labels[synthetic.sources] == 1).all() and (synthetic.batch["label"] == 1).all()
    assert len(drawn) == 7 and drawn[-1][1] is None
    assert recorder.steps[0]["n_synthetic"] == int(1.5 * 4 + 0.5)
    # Generator and discriminator losses move from step to step; each optimiser moved its part.
    for name in ("generator_loss", "discriminator_loss", "classifier_loss", "selector_loss"):
        values = [step[name] for step in recorder.steps[:6]]
        assert all(torch.isfinite(torch.tensor(values))) and len(set(values)) == 6, (name, values)
    for part in ("backbone", "generator", "discriminator", "selector"):
        moved = [not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(part + ".")]
        assert all(moved), part
    assert trainer.global_step == 6 * 4 + 1  # four optimiser steps per batch, the predictor's alone without positives
    scheduler = model.lr_schedulers()
    assert scheduler.last_epoch == 1  # ReduceLROnPlateau stepped on val/f1 at the epoch's end


def test_adversarial_training_fits_the_positives_in_filling():
    """On a fixed batch the generator's MLE in-filling loss falls, and the trained discriminator
    tells the trained generator's visits from the real ones better than it did untrained."""
    model = build("model.gan_optimizer.lr=0.01", "model.synthetic_ratio=3")
    untrained_discriminator = copy.deepcopy(model.discriminator)
    data = batch(seed=5)
    recorder = Recorder()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=1, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, loader([data] * 30))
    mle = [step["generator_mle"] for step in recorder.steps]
    assert sum(mle[-5:]) < 0.75 * sum(mle[:5])
    with torch.no_grad():
        synthetic = model.synthesise(data, generator=torch.Generator().manual_seed(0))
        trained_loss, _ = model.discriminator_loss(data, synthetic)
        model.discriminator = untrained_discriminator
        untrained_loss, _ = model.discriminator_loss(data, synthetic)
    assert trained_loss < untrained_loss - 0.08


def test_without_selector_every_synthetic_patient_trains_the_predictor():
    model = build("model.use_selector=false")
    recorder = Recorder()
    trainer = trainer_from_config(composed("model.use_selector=false"), callbacks=[recorder], limit_val_batches=0)
    trainer.fit(model, loader([batch(seed=1), batch(seed=2)]))
    assert all("selector_loss" not in step and "selected_fraction" not in step for step in recorder.steps)
    assert trainer.global_step == 2 * 3


def test_resuming_restores_every_optimiser_and_the_reward_baseline(tmp_path):
    cfg = composed()
    batches = [batch(seed=1), batch(seed=2)]
    model = build()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer_from_config(cfg, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, loader(batches),
                                                                                    loader(batches[:1]))
    saved = [optimizer.state_dict() for optimizer in model.optimizers()]
    resumed = build()
    trainer = trainer_from_config(cfg, max_epochs=2, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(resumed, loader(batches), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    restored = [optimizer.state_dict() for optimizer in resumed.optimizers()]
    assert len(restored) == 4
    for before, after in zip(saved, restored, strict=True):
        steps = {int(state["step"]) for state in after["state"].values()}
        assert steps == {int(state["step"]) for state in before["state"].values()} == {2}
    assert resumed.reward_baseline == model.reward_baseline and int(resumed.reward_count) == 2
    assert resumed.lr_schedulers().last_epoch == 1


def test_evaluation_reads_real_patients_only():
    model = build().eval()
    data = batch(seed=3)
    with torch.no_grad():
        prediction = model.predict_step(data, 0)
        torch.testing.assert_close(prediction["probability"], model.backbone(data).softmax(-1)[:, 1])
    assert prediction["probability"].shape == (8,)
