"""The RiskBackbone contract, checked for every risk model in conf/model (seed 000, Table 2).

Each backbone is composed from its own yaml, shrunk (``visit_dim`` and ``hidden_dim`` 16,
dropout 0), and checked for what the runner and the diffusion augmentation rely on: shapes,
padding invariance, the declared causality and time-awareness, and that it trains, alone and
as ``augment=diffusion`` (Figure 3's +diffusion variant). A new backbone is tested here as
soon as its yaml exists.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from risk_batches import random_risk_batch

from ehrlab.config import CONFIG_DIR, SWEEPS_DIR
from ehrlab.models.risk.adversarial import GANAugmentedPredictor
from ehrlab.models.risk.base import RiskBackbone, RiskPredictor
from ehrlab.models.risk.meddiffusion import MedDiffusion

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 40)]
AUGMENT_SMALL = {  # augmentation members shrunk: the diffusion (MedDiffusion) and a GAN (Table 4's medGAN+Att)
    "none": [],
    "diffusion": ["model.attention_dim=8", "model.denoiser.channels=8", "model.diffusion_steps=50"],
    "medgan_att": ["model.attention_dim=8", "model.generator.latent_dim=8", "model.discriminator.hidden_dims=[8,8]"],
}
AUGMENTED_CLASS = {"none": RiskPredictor, "diffusion": MedDiffusion, "medgan_att": GANAugmentedPredictor}


def _compose(model: str, augment: str = "none", overrides=()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=[f"model={model}", f"augment={augment}", *overrides])


def _backbone_models() -> list[str]:
    """conf/model options that are a plain backbone under RiskPredictor (no augmentation)."""
    names = []
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        cfg = _compose(path.stem)
        if cfg.model._target_ == "ehrlab.models.risk.base.RiskPredictor":
            names.append(path.stem)
    return names


BACKBONES = _backbone_models()


def _small_overrides(model: str) -> list[str]:
    backbone = _compose(model).model.backbone
    overrides = [f"model.backbone.{key}=16" for key in ("visit_dim", "hidden_dim") if key in backbone]
    overrides += [f"model.backbone.{key}=0.0" for key in backbone if "dropout" in key]
    return overrides


def build(model: str, augment: str = "none") -> RiskPredictor:
    cfg = _compose(model, augment, [*_small_overrides(model), *AUGMENT_SMALL[augment]])
    torch.manual_seed(0)
    return instantiate(cfg.model, vocabulary=VOCABULARY).eval()


def batch(seed=0, n_patients=6, n_visits=5, n_codes=4) -> dict[str, torch.Tensor]:
    return random_risk_batch(len(VOCABULARY), n_patients, n_visits, n_codes, seed, pad_last_code=True,
                             alternate_labels=True)


def with_more_padding(batch, extra_visits=3, extra_codes=2):
    """The same patients with extra padding visits and padding code slots."""
    padded = dict(batch)
    padded["codes"] = torch.nn.functional.pad(batch["codes"], (0, extra_codes, 0, extra_visits))
    padded["visit_mask"] = torch.nn.functional.pad(batch["visit_mask"], (0, extra_visits))
    for key in ("time_to_end", "time_delta"):
        padded[key] = torch.nn.functional.pad(batch[key], (0, extra_visits))
    return padded


TABLE_2 = {"lstm", "lstm_plain", "dipole", "retain", "sand", "adacare", "lsan", "retainex", "timeline", "tlstm",
           "hitanet", "medskim"}


def test_every_backbone_of_table_2_is_a_model_option_and_in_the_table2_sweep():
    assert set(BACKBONES) == TABLE_2
    sweep = OmegaConf.load(SWEEPS_DIR / "table2.yaml").hydra.sweeper.params
    assert set(sweep.model.split(",")) == TABLE_2
    assert sweep.augment == "none,diffusion" and sweep.seed == "0,1,2,3,4"


@pytest.mark.parametrize("model", BACKBONES)
def test_shapes(model):
    module = build(model)
    backbone = module.backbone
    assert isinstance(backbone, RiskBackbone)
    data = batch()
    with torch.no_grad():
        visits = backbone.embed_visits(data)
        hidden = backbone.encode(visits, data)
        logits = module(data)
    assert visits.shape == (6, 5, backbone.visit_dim)
    assert hidden.shape == (6, 5, backbone.hidden_dim)
    assert logits.shape == (6, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("model", BACKBONES)
def test_padding_visits_and_codes_change_nothing(model):
    module = build(model)
    data = batch(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(module(with_more_padding(data)), module(data), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", BACKBONES)
def test_time_awareness_is_as_declared(model):
    """Scaling every gap changes the output of a time-aware backbone and of no other."""
    module = build(model)
    data = batch(seed=2)
    stretched = dict(data, time_delta=data["time_delta"] * 3.0 + 20.0 * data["visit_mask"],
                     time_to_end=data["time_to_end"] * 3.0)
    stretched["time_delta"][:, 0] = 0.0
    # time_to_end stays consistent with the stretched gaps: recompute it from them.
    days = stretched["time_delta"].cumsum(dim=1)
    last_day = days.gather(1, (data["n_visits"] - 1)[:, None])
    stretched["time_to_end"] = (last_day - days) * data["visit_mask"]
    with torch.no_grad():
        changed = not torch.allclose(module(stretched), module(data), rtol=1e-4, atol=1e-5)
    assert changed == module.backbone.time_aware


@pytest.mark.parametrize("model", [m for m in BACKBONES if build(m).backbone.causal])
def test_causal_backbones_do_not_look_at_later_visits(model):
    """h_1..h_{K−1} do not move when only the last visit's codes change."""
    module = build(model)
    data = batch(seed=3)
    changed = dict(data, codes=data["codes"].clone())
    last = data["n_visits"] - 1
    rows = torch.arange(len(last))
    changed["codes"][rows, last] = torch.randint(2, len(VOCABULARY), changed["codes"][rows, last].shape,
                                                 generator=torch.Generator().manual_seed(9))
    backbone = module.backbone
    with torch.no_grad():
        before = backbone.encode(backbone.embed_visits(data), data)
        after = backbone.encode(backbone.embed_visits(changed), changed)
    earlier = (torch.arange(data["codes"].shape[1])[None] < last[:, None]) & data["visit_mask"]
    torch.testing.assert_close(after[earlier], before[earlier], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(after[rows, last], before[rows, last])


@pytest.mark.parametrize("augment", list(AUGMENT_SMALL))
@pytest.mark.parametrize("model", BACKBONES)
def test_trains_one_batch_then_one_epoch(model, augment):
    """Every parameter gets a gradient from the training loss, then a Lightning epoch runs."""
    module = build(model, augment).train()
    assert type(module) is AUGMENTED_CLASS[augment]
    data = batch(seed=4)
    losses = module.training_loss(data)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    without_gradient = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_gradient
    if augment == "diffusion":
        assert {"ce", "synthetic_ce", "diffusion_loss"} <= set(losses)

    loader = torch.utils.data.DataLoader([batch(seed=10 + i) for i in range(3)], batch_size=None)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    assert trainer.current_epoch == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert "val/f1" in trainer.callback_metrics


def test_augment_applies_to_exactly_the_plain_backbones():
    """`augment=<member>` is refused for every model option that is more than a plain backbone
    (generators, MedDiffusion and its ablations, augmentation baselines)."""
    from ehrlab.config import augments_training

    for path in (CONFIG_DIR / "model").glob("*.yaml"):
        assert augments_training(path.stem) == (path.stem not in BACKBONES), path.stem
