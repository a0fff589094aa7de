"""The GAN members of the `augment` group (seed 000, §4.5, Table 4): ehrGAN, GcGAN, actGAN and
medGAN inside MedDiffusion's framework, each without and with the step-wise attention (+Att).

Each member is composed from conf/ as `model=lstm augment=<member>` (shrunk), trained one
Lightning epoch under manual optimisation (both the generator's and the discriminator's losses
and parameters move), checked for the shape and padding of its synthetic visits, for what the
+Att switch feeds the generator, and resumed from a checkpoint with both optimisers restored.
"""

from __future__ import annotations

import copy
from functools import cache

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf
from risk_batches import random_risk_batch

from ehrlab.config import CONFIG_DIR, SWEEPS_DIR
from ehrlab.models.risk.adversarial import GANAugmentedPredictor

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 40)]
GANS = ["ehrgan", "gcgan", "actgan", "medgan"]
MEMBERS = [f"{gan}{suffix}" for gan in GANS for suffix in ("", "_att")]
SMALL = ["model.backbone.visit_dim=16", "model.backbone.hidden_dim=16", "model.backbone.time_dim=8",
         "model.backbone.dropout=0.0", "model.attention_dim=8"]
SMALL_GAN = {
    "ehrgan": ["model.generator.dropout=0.0", "model.discriminator.channels=8"],
    "gcgan": ["model.generator.dropout=0.0"],
    "actgan": ["model.generator.noise_dim=4", "model.generator.hidden_dim=8", "model.discriminator.hidden_dims=[8]"],
    "medgan": ["model.generator.latent_dim=8", "model.discriminator.hidden_dims=[8,8]"],
}
TRAIN_KEYS = ("train/ce", "train/synthetic_ce", "train/generator_loss", "train/discriminator_loss")


@cache
def config(member: str):
    gan = member.removesuffix("_att")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=["model=lstm", f"augment={member}", *SMALL, *SMALL_GAN[gan]])


def build(member: str, seed: int = 0) -> GANAugmentedPredictor:
    torch.manual_seed(seed)
    return instantiate(config(member).model, vocabulary=VOCABULARY)


def batch(seed=0, n_patients=6, n_visits=5) -> dict[str, torch.Tensor]:
    return random_risk_batch(len(VOCABULARY), n_patients, n_visits, 4, seed, pad_last_code=True,
                             alternate_labels=True)


def loader(n_batches=3, offset=10):
    return torch.utils.data.DataLoader([batch(seed=offset + i) for i in range(n_batches)], batch_size=None)


def trainer(max_epochs=1, callbacks=(), checkpointing=False, root=None) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=checkpointing,
                      callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=root)


class StepLosses(Callback):
    """The training losses after every step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.steps.append({key: float(metrics[f"{key}_step"]) for key in TRAIN_KEYS})


def test_every_gan_member_and_its_att_variant_is_in_the_table4_sweep():
    sweep = OmegaConf.load(SWEEPS_DIR / "table4.yaml").hydra.sweeper.params
    assert sweep.model == "lstm" and sweep.seed == "0,1,2,3,4"
    assert sweep.augment.split(",") == ["none", *MEMBERS, "diffusion"]


@pytest.mark.parametrize("member", MEMBERS)
def test_composes_and_trains_one_epoch_moving_generator_and_discriminator(member):
    cfg = config(member)
    assert cfg.model._target_ == "ehrlab.models.risk.adversarial.GANAugmentedPredictor"
    assert cfg.model.backbone._target_ == "ehrlab.models.risk.lstm.LSTMBackbone"
    assert cfg.trainer.gradient_clip_val is None and cfg.model.gradient_clip_val == 1.0
    module = build(member)
    assert module.automatic_optimization is False
    assert (module.attention is not None) == member.endswith("_att")
    generator_before = copy.deepcopy(module.generator.state_dict())
    discriminator_before = copy.deepcopy(module.discriminator.state_dict())
    clipped = []
    clip = module.clip_gradients
    module.clip_gradients = lambda optimizer, **kwargs: (clipped.append(kwargs), clip(optimizer, **kwargs))

    losses = StepLosses()
    fit = trainer(callbacks=[losses])
    fit.fit(module, loader(), loader(2, offset=20))

    assert fit.current_epoch == 1 and "val/f1" in fit.callback_metrics
    assert len(losses.steps) == 3 and all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in losses.steps)
    first, last = losses.steps[0], losses.steps[-1]
    assert first["train/generator_loss"] != last["train/generator_loss"]
    assert first["train/discriminator_loss"] != last["train/discriminator_loss"]
    assert any(not torch.equal(value, module.generator.state_dict()[name])
               for name, value in generator_before.items() if value.is_floating_point())
    assert all(not torch.equal(value, module.discriminator.state_dict()[name])
               for name, value in discriminator_before.items())
    # Two optimisers, each clipped by norm at the model's value, once per step.
    assert len(clipped) == 6 and {c["gradient_clip_val"] for c in clipped} == {1.0}
    assert {c["gradient_clip_algorithm"] for c in clipped} == {"norm"}
    # ReduceLROnPlateau was stepped on the epoch's validation F1.
    for scheduler_config in fit.lr_scheduler_configs:
        assert scheduler_config.scheduler.best == pytest.approx(float(fit.callback_metrics["val/f1"]))


@pytest.mark.parametrize("member", MEMBERS)
def test_synthetic_visits_have_the_visit_embedding_shape_and_are_zero_at_padding(member):
    module = build(member).train()
    data = batch(seed=3)
    passed = module.adversarial_pass(data, rng=torch.Generator().manual_seed(0))
    assert passed.synthetic_visits.shape == passed.visit_embeddings.shape == (6, 5, 16)
    assert torch.isfinite(passed.synthetic_visits).all()
    padding = ~data["visit_mask"]
    assert padding.any() and (passed.synthetic_visits[padding] == 0).all()
    assert (passed.synthetic_visits[data["visit_mask"]].abs().sum(dim=-1) > 0).all()
    assert not (passed.adversarial_mask & padding).any()
    losses = module.training_loss(data)
    assert {"ce", "synthetic_ce", "generator_loss", "discriminator_loss", "loss"} <= set(losses)
    losses["loss"].backward()
    without_gradient = [name for name, p in module.named_parameters() if p.grad is None]
    assert not without_gradient


@pytest.mark.parametrize("gan", GANS)
def test_stepwise_attention_is_what_brings_the_history_to_the_generator(gan):
    """With fixed noise, perturbing the hidden states leaves e' unchanged without +Att; with
    +Att, perturbing h_2 changes e'_3 (it reads h_{k−1}) but not e'_1, e'_2."""
    data = batch(seed=5)
    mask, labels = data["visit_mask"], torch.ones(6, dtype=torch.long)  # all positive: actGAN serves all
    visits = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(1)) * mask[..., None]
    hidden = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(2))
    later_history = hidden.clone()
    later_history[:, 1] += 3.0  # h_2, the history of visit 3

    def synthesise(module, hidden_states):
        with torch.no_grad():
            return module.synthesise(visits, hidden_states, mask, labels, rng=torch.Generator().manual_seed(0))

    plain = build(gan).eval()
    assert plain.attention is None
    inputs, synthetic = synthesise(plain, hidden)
    torch.testing.assert_close(inputs, visits)
    torch.testing.assert_close(synthesise(plain, torch.randn_like(hidden) * 5.0)[1], synthetic, rtol=0, atol=0)

    attended = build(f"{gan}_att").eval()
    (inputs_before, before), (inputs_after, after) = synthesise(attended, hidden), synthesise(attended, later_history)
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(inputs_after[:, :2], inputs_before[:, :2], rtol=0, atol=0)
    long_enough = data["n_visits"] >= 3
    assert long_enough.any()
    # ê_3 moves for every patient with a third visit; e'_3 moves with it (ehrGAN's noise
    # replacement and ReLUs may swallow the change for some patients of a 4-unit latent).
    assert (inputs_after[long_enough, 2] - inputs_before[long_enough, 2]).abs().amax(dim=-1).gt(1e-4).all()
    assert (after[long_enough, 2] - before[long_enough, 2]).abs().amax().gt(1e-4)


def test_actgan_generates_for_the_minority_class_only():
    module = build("actgan").train()
    data = batch(seed=6)
    passed = module.adversarial_pass(data)
    assert torch.equal(passed.adversarial_mask.any(dim=1), data["label"] == 1)
    negatives_only = dict(data, label=torch.zeros_like(data["label"]))
    losses = module.training_loss(negatives_only)
    assert losses["synthetic_ce"] == 0 and losses["generator_loss"] == 0 and losses["discriminator_loss"] == 0
    assert torch.isfinite(losses["loss"]) and losses["loss"] == losses["ce"]


def test_medgan_discriminator_sees_the_minibatch_average():
    """Minibatch averaging (Choi et al., MLHC 2017): a visit's logit depends on the other
    visits in the minibatch, but not on padding visits."""
    discriminator = build("medgan").discriminator.eval()
    data = batch(seed=7)
    mask = data["visit_mask"]
    visits = torch.randn(6, 5, 16, generator=torch.Generator().manual_seed(3))
    others = visits.clone()
    others[1:] += 1.0
    padded = visits.masked_fill(~mask[..., None], 100.0)
    with torch.no_grad():
        logits = discriminator(visits, mask)
        torch.testing.assert_close(discriminator(padded, mask)[mask], logits[mask])
        assert not torch.allclose(discriminator(others, mask)[0][mask[0]], logits[0][mask[0]])


def test_checkpoint_round_trip_restores_both_optimisers_and_schedulers(tmp_path):
    module = build("medgan_att")
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = trainer(callbacks=[checkpoints], checkpointing=True, root=tmp_path)
    first.fit(module, loader(), loader(2, offset=20))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(saved["optimizer_states"]) == 2 and len(saved["lr_schedulers"]) == 2

    resumed_module = build("medgan_att", seed=1)
    resumed = trainer(max_epochs=2, checkpointing=True, root=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "resumed")])
    resumed.fit(resumed_module, loader(), loader(2, offset=20), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.current_epoch == 2
    for optimizer, state in zip(resumed.optimizers, saved["optimizer_states"]):
        # Adam's step counts went on from the checkpoint's 3 steps: 3 + 3.
        steps = {int(s["step"]) for s in optimizer.state_dict()["state"].values()}
        assert steps == {6}
        assert {int(s["step"]) for s in state["state"].values()} == {3}
    # The schedulers went on from their saved best (mode max) and were stepped on epoch 2's F1.
    f1 = float(resumed.callback_metrics["val/f1"])
    for scheduler_config, state in zip(resumed.lr_scheduler_configs, saved["lr_schedulers"]):
        assert scheduler_config.scheduler.best == pytest.approx(max(state["best"], f1))
        assert scheduler_config.scheduler.last_epoch == state["last_epoch"] + 1
