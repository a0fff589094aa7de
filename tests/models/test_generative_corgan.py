"""CorGAN (seed 002 §2.3, F.2): the 8-layer pathway, WGAN-GP training in Lightning, generation.

Training data is built by hand in the DataModule's batch layout (codes [B, V, C], 0 =
padding) with planted structure: codes 2-4 always occur together, 5-6 together, the rest
independently; the vocabulary holds ``[UNK]`` (id 1), which no patient has.
"""

from __future__ import annotations

import copy
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
from torch import nn

from ehrlab.checkpoints import load_model_weights
from ehrlab.models.generative.corgan import (
    ConvAutoencoder,
    ConvCritic,
    CorGAN,
    gradient_penalty,
)

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
N_CODES = 12
VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{100 + i}.{i}" for i in range(N_CODES)]
AUTOENCODER_EPOCHS, ADVERSARIAL_EPOCHS = 10, 20
F2_LENGTHS = [6955, 3476, 1736, 578, 192, 63, 20, 4, 1]



def batches(n_patients: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    records = planted_records(n_patients, seed, first_code=2)
    return [to_batch(records[i : i + batch_size]) for i in range(0, n_patients, batch_size)]


def make_model(**kwargs) -> CorGAN:
    optimizer = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9))
    return CorGAN(VOCABULARY, autoencoder_epochs=AUTOENCODER_EPOCHS, optimizer=optimizer, **kwargs)


def tiny_trainer(epochs: int, **kwargs) -> pl.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def mean_reconstruction(model: CorGAN, data: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(np.mean([model.training_loss(b).item() for b in data]))
    model.train()
    return loss


class Snapshots(pl.Callback):
    """The model's weights at the end of every training epoch."""

    def __init__(self):
        self.by_epoch: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.by_epoch.append(copy.deepcopy(pl_module.state_dict()))


@pytest.fixture(scope="module")
def fitted():
    """Pretraining then adversarial epochs with a real Trainer. 257 patients in batches of 32
    leave a last batch of one patient, which training skips."""
    torch.manual_seed(0)
    data = batches(257, 32, seed=0)
    model = make_model()
    before = mean_reconstruction(model, data)
    initial = copy.deepcopy(model.state_dict())
    snapshots = Snapshots()
    trainer = tiny_trainer(AUTOENCODER_EPOCHS + ADVERSARIAL_EPOCHS, callbacks=[snapshots])
    trainer.fit(model, train_dataloaders=prebuilt_loader(data), val_dataloaders=prebuilt_loader(data[:2]))
    return {"model": model, "data": data, "before": before, "initial": initial, "snapshots": snapshots.by_epoch,
            "metrics": dict(trainer.callback_metrics)}


def _changed(first: dict, second: dict, prefix: str) -> bool:
    return any(not torch.equal(first[k], second[k]) for k in first if k.startswith(prefix))


# -- architecture -------------------------------------------------------------------------------


def test_pathway_at_6955_codes_is_f2s_eight_layers():
    autoencoder = ConvAutoencoder(6955)
    encoder_convs = [m for m in autoencoder.encoder if isinstance(m, nn.Conv1d)]
    decoder_convs = [m for m in autoencoder.decoder if isinstance(m, nn.ConvTranspose1d)]
    assert len(encoder_convs) == 8 and len(decoder_convs) == 8
    lengths = [6955]
    x = torch.zeros(2, 1, 6955)
    with torch.no_grad():
        for module in autoencoder.encoder:
            x = module(x)
            if isinstance(module, nn.Conv1d):
                lengths.append(x.shape[-1])
        assert lengths == F2_LENGTHS and tuple(x.shape[1:]) == (128, 1)
        for module in autoencoder.decoder:
            x = module(x)
            if isinstance(module, nn.ConvTranspose1d):
                lengths.append(x.shape[-1])
    assert lengths[8:] == F2_LENGTHS[::-1]
    # Activations: LeakyReLU(0.2) x 7 then Tanh; ReLU x 7 (the Sigmoid is in decode()).
    leaky = [m for m in autoencoder.encoder if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 7 and all(m.negative_slope == 0.2 for m in leaky)
    assert isinstance(autoencoder.encoder[-1], nn.Tanh)
    assert sum(isinstance(m, nn.ReLU) for m in autoencoder.decoder) == 7
    assert [m.stride[0] for m in encoder_convs] == [2, 2, 3, 3, 3, 3, 4, 1]
    assert [m.out_channels for m in encoder_convs] == [4, 8, 16, 32, 64, 96, 112, 128]
    assert [m.kernel_size[0] for m in decoder_convs] == [4, 8, 6, 6, 5, 5, 6, 5]
    probabilities = autoencoder.decode(torch.zeros(3, 128, 1))
    assert probabilities.shape == (3, 6955) and ((probabilities > 0) & (probabilities < 1)).all()
    assert sum(p.numel() for p in autoencoder.parameters()) == 353_257


def test_full_model_at_6955_codes_generates_rows_of_that_width():
    vocabulary = ["[PAD]"] + [f"C{i}" for i in range(6954)]
    model = CorGAN(vocabulary)
    # F.2's generator: 128 -> 256 -> 128 -> 128 (the latent is 128 channels x length 1).
    assert [m.out_features for m in model.generator.modules() if isinstance(m, nn.Linear)] == [256, 128, 128]
    assert sum(p.numel() for p in model.generator.parameters()) == 82_432  # (128*256 + 256) + (256*128 + 128) + (128*128 + 128)
    critic_convs = [m for m in model.critic.modules() if isinstance(m, nn.Conv1d)]
    assert len(critic_convs) == 4 and critic_convs[-1].kernel_size[0] == 578
    table = model.generate(3, seed=0, progress=False)
    assert set(table["code"]) <= set(vocabulary[1:])


@pytest.mark.parametrize("n_codes", [2, 13, 500, 3000, 9000])
def test_other_vocabulary_sizes_round_trip_to_exactly_their_width(n_codes):
    autoencoder = ConvAutoencoder(n_codes).eval()
    rows = (torch.rand(3, n_codes) < 0.3).float()
    with torch.no_grad():
        latent = autoencoder.encode(rows)
        assert tuple(latent.shape) == (3, 128, 1)
        assert autoencoder(rows).shape == (3, n_codes)
        assert ConvCritic(n_codes)(rows).shape == (3,)


def test_gradient_penalty_is_zero_for_a_unit_gradient_and_its_formula_otherwise():
    torch.manual_seed(0)
    real, fake = torch.rand(6, 10), torch.rand(6, 10)
    critic = nn.Linear(10, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.randn(1, 10))
        critic.weight /= critic.weight.norm()  # input gradient of norm 1 everywhere
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        critic.weight *= 3.0
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2

    # A non-linear critic: the gradient is taken at mix * real + (1 - mix) * fake.
    class Square(nn.Module):
        def forward(self, x):
            return (x**2).sum(dim=1)

    mix = torch.rand(6, 1)
    mixed = mix * real + (1 - mix) * fake
    expected = ((2 * mixed).norm(dim=1) - 1).pow(2).mean()
    assert gradient_penalty(Square(), real, fake, mix).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="critic_type"):
        CorGAN(VOCABULARY, critic_type="transformer")
    with pytest.raises(ValueError, match="critic_steps"):
        CorGAN(VOCABULARY, critic_steps=0)


# -- training -----------------------------------------------------------------------------------


def test_pretraining_lowers_the_reconstruction_loss_and_trains_the_autoencoder_only(fitted):
    assert mean_reconstruction(fitted["model"], fitted["data"]) < 0.8 * fitted["before"]
    initial, pretrained = fitted["initial"], fitted["snapshots"][AUTOENCODER_EPOCHS - 1]
    assert _changed(initial, pretrained, "autoencoder.encoder")
    assert _changed(initial, pretrained, "autoencoder.decoder")
    assert not _changed(initial, pretrained, "generator")
    assert not _changed(initial, pretrained, "critic")


def test_adversarial_phase_trains_generator_critic_and_decoder_not_the_encoder(fitted):
    pretrained, final = fitted["snapshots"][AUTOENCODER_EPOCHS - 1], fitted["snapshots"][-1]
    assert len(fitted["snapshots"]) == AUTOENCODER_EPOCHS + ADVERSARIAL_EPOCHS
    assert _changed(pretrained, final, "generator")
    assert _changed(pretrained, final, "critic")
    assert _changed(pretrained, final, "autoencoder.decoder")  # decoder_lr 1e-4
    encoder_weights = {k: v for k, v in pretrained.items() if k.startswith("autoencoder.encoder") and "running" not in k
                       and "num_batches" not in k}
    assert not _changed(encoder_weights, final, "autoencoder.encoder")
    metrics = fitted["metrics"]
    for name in ["train/autoencoder_loss", "train/critic_loss", "train/generator_loss", "train/gradient_penalty",
                 "val/reconstruction_loss"]:
        assert name in metrics and torch.isfinite(metrics[name])
    assert metrics["train/wasserstein_estimate"] > 0  # the critic tells real from generated


def test_generated_records_reproduce_the_planted_structure(fitted):
    model = fitted["model"]
    n = 600
    table = model.generate(n, seed=3, progress=False)
    real = np.zeros(len(VOCABULARY))
    for record in planted_records(2000, seed=5, first_code=2):
        real[list({c for visit in record for c in visit})] += 1 / 2000
    rows = table.assign(present=1).pivot_table(index="subject_id", columns="code", values="present", fill_value=0)
    rows = rows.reindex(columns=VOCABULARY, fill_value=0)
    synthetic = rows.sum(axis=0).to_numpy() / n
    assert np.corrcoef(real[2:], synthetic[2:])[0, 1] > 0.6
    holds_first = rows[VOCABULARY[2]] == 1
    second = rows[VOCABULARY[3]]
    assert 20 < holds_first.sum() < len(rows) - 20
    assert second[holds_first].mean() - second[~holds_first].mean() > 0.3


# -- generation ---------------------------------------------------------------------------------


def test_generate_emits_vocabulary_codes_in_one_visit_per_patient(fitted):
    table = fitted["model"].generate(50, seed=1, batch_size=16, progress=False)
    assert list(table.columns) == ["subject_id", "visit_id", "code"]
    assert len(table) > 0 and set(table["code"]) <= set(VOCABULARY[2:])
    assert (table["visit_id"] == 0).all() and table["subject_id"].between(0, 49).all()
    assert not table.duplicated().any()


def test_a_decoder_that_says_yes_everywhere_still_never_emits_pad_or_unk():
    model = make_model()
    with torch.no_grad():
        model.autoencoder.decoder[-1].bias.fill_(50.0)
    table = model.generate(4, seed=0, progress=False)
    assert sorted(set(table["code"])) == sorted(VOCABULARY[2:])
    assert table.groupby("subject_id").size().tolist() == [N_CODES] * 4


def test_generate_is_deterministic_for_a_seed_and_leaves_global_rng_alone(fitted):
    model = fitted["model"]
    torch.manual_seed(123)
    first = model.generate(40, seed=7, batch_size=16, progress=False)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    again = model.generate(40, seed=7, batch_size=16, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert torch.equal(after_first, torch.rand(1))
    assert not first.equals(model.generate(40, seed=8, batch_size=16, progress=False))
    model.train()
    model.generate(2, seed=0, progress=False)
    assert model.training


def test_trainer_checkpoint_loads_back_and_generates_the_same(fitted, tmp_path):
    model, data = fitted["model"], fitted["data"]
    trainer = tiny_trainer(epochs=AUTOENCODER_EPOCHS + 1, max_steps=1)
    trainer.fit(model, train_dataloaders=prebuilt_loader(data[:1]))
    path = tmp_path / "corgan.ckpt"
    trainer.save_checkpoint(path)
    loaded = make_model()
    load_model_weights(loaded, path)
    pd.testing.assert_frame_equal(model.generate(30, seed=11, progress=False),
                                  loaded.generate(30, seed=11, progress=False))


# -- configuration ------------------------------------------------------------------------------


def test_config_composes_to_the_papers_settings(tmp_path):
    shutil.copytree(CONF_MODEL, tmp_path / "model")
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: corgan\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        composed = compose(config_name="config")
    settings = composed.model
    assert (settings.autoencoder_epochs, settings.critic_steps, settings.gradient_penalty_weight) == (10, 5, 10.0)
    assert settings.noise_dim == 128 and settings.critic_type == "conv" and settings.threshold == 0.5
    assert composed.data.batch_size == 256 and composed.epochs == 510
    assert composed.trainer.gradient_clip_val is None
    model = instantiate(settings, vocabulary=VOCABULARY)
    assert type(model) is CorGAN and model.monitor is None and not model.automatic_optimization
    autoencoder, critic, generator = model.configure_optimizers()
    for optimizer in (autoencoder, critic, generator):
        assert type(optimizer) is torch.optim.Adam
        assert optimizer.param_groups[0]["lr"] == 1e-3 and tuple(optimizer.param_groups[0]["betas"]) == (0.5, 0.9)
        assert type(optimizer.param_groups[0]["betas"]) is not type(settings.optimizer.betas)  # plain, not ListConfig
    assert [g["lr"] for g in generator.param_groups] == [1e-3, 1e-4]  # generator, then the decoder


def test_the_reference_mlp_critic_variant_trains_and_generates():
    torch.manual_seed(1)
    data = batches(64, 32, seed=1)
    model = CorGAN(VOCABULARY, autoencoder_epochs=1, critic_type="mlp",
                   optimizer=functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9)))
    assert [m.out_features for m in model.critic.modules() if isinstance(m, nn.Linear)] == [256, 256, 256, 1]
    initial = copy.deepcopy(model.critic.state_dict())
    tiny_trainer(epochs=2).fit(model, train_dataloaders=prebuilt_loader(data))
    assert _changed(initial, model.critic.state_dict(), "")
    table = model.generate(10, seed=0, progress=False)
    assert set(table["code"]) <= set(VOCABULARY[2:])
