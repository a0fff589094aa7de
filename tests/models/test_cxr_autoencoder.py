"""EHRXDiff's KL autoencoder (seed 004 §3.3.1, §4.5): architecture, training, latent scale,
pretrained diffusers folders and checkpoints."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ehrlab.checkpoints import load_model_weights, read_checkpoint
from ehrlab.errors import UserInputError
from ehrlab.models.cxr.autoencoder import (
    AUTOENCODER_KEY,
    PAPER_LATENT_SCALE,
    CXRAutoencoder,
    build_autoencoder,
    load_pretrained_autoencoder,
    norm_groups,
    to_autoencoder_range,
)
from ehrlab.models.cxr.base import ENCODER
from ehrlab.models.cxr.parts import load_part

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
FINDINGS = ["chexpert:Edema", "chexpert:Cardiomegaly"]
S = 16
TINY = {"block_out_channels": [4, 8], "latent_channels": 2, "layers_per_block": 1}


def phantom_images(n: int, size: int = S, seed: int = 0) -> torch.Tensor:
    """Smooth blobs on a dark background: structured images an autoencoder can learn quickly."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(n, 2, generator=generator) - 0.5
    radii = 0.2 + 0.3 * torch.rand(n, generator=generator)
    distance = (x - centres[:, 0, None, None]) ** 2 + (y - centres[:, 1, None, None]) ** 2
    return torch.exp(-distance / radii[:, None, None] ** 2).unsqueeze(1)


def fake_batch(n_pairs: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    images = phantom_images(2 * n_pairs, seed=seed)
    return {"prev_image": images[:n_pairs], "target_image": images[n_pairs:],
            "events": torch.randn(n_pairs, 2, 4), "event_mask": torch.ones(n_pairs, 2, dtype=torch.bool),
            "prev_labels": torch.zeros(n_pairs, len(FINDINGS)), "target_labels": torch.zeros(n_pairs, len(FINDINGS)),
            "age": torch.full((n_pairs,), 60.0), "sex": torch.zeros(n_pairs, dtype=torch.long),
            "pair_id": torch.arange(n_pairs), "subject_id": torch.arange(n_pairs)}


def autoencoder(lr: float = 1e-3, architecture=TINY, **options) -> CXRAutoencoder:
    return CXRAutoencoder(FINDINGS, event_dim=4, image_size=S, max_events=2, architecture=architecture,
                          optimizer=functools.partial(torch.optim.Adam, lr=lr), **options)


class Batches(torch.utils.data.Dataset):
    def __init__(self, n_batches: int):
        self.batches = [fake_batch(seed=i) for i in range(n_batches)]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def loader(n_batches: int = 3) -> DataLoader:
    return DataLoader(Batches(n_batches), batch_size=None)


def test_the_papers_architecture_maps_256_pixels_to_3_by_64_by_64():
    with torch.device("meta"):  # shapes only: no memory, no time
        paper = build_autoencoder(256, [128, 256, 512], latent_channels=3, layers_per_block=2)
        latent = paper.encode(torch.zeros(1, 1, 256, 256)).latent_dist.mode()
        image = paper.decode(latent).sample
    assert latent.shape == (1, 3, 64, 64)  # §4.5: C_z, H_f, W_f = 3, 64, 64
    assert image.shape == (1, 1, 256, 256)
    assert (paper.config.in_channels, paper.config.out_channels, paper.config.norm_num_groups) == (1, 1, 32)
    assert len(paper.encoder.down_blocks[0].resnets) == 2 and len(paper.decoder.up_blocks[0].resnets) == 3
    # 55,307,453 parameters, counted once (an RGB one as Cheff's has 2 × 2 × 128 × 9 + 2 more in its first and
    # last convolutions); a change of width, depth or attention would move it far out of this range.
    assert 55.0e6 < sum(p.numel() for p in paper.parameters()) < 55.6e6


def test_latent_size_and_output_range_at_a_small_size():
    model = autoencoder(architecture={"block_out_channels": [4, 8, 8], "latent_channels": 3, "layers_per_block": 1})
    images = phantom_images(3)
    assert model.output == ENCODER and model.latent_shape == (3, 4, 4)
    with torch.no_grad():
        latents = model.encode(images)
        reconstruction = model.reconstruct(images)
    assert latents.shape == (3, 3, 4, 4)
    assert reconstruction.shape == images.shape and 0 <= reconstruction.min() and reconstruction.max() <= 1
    with torch.no_grad():  # decode inverts encode's scaling
        raw = model.autoencoder.encode(to_autoencoder_range(images)).latent_dist.mode()
    assert torch.allclose(latents, raw * PAPER_LATENT_SCALE)


def test_an_image_size_the_levels_do_not_divide_is_refused():
    with pytest.raises(UserInputError, match="not divisible by the autoencoder's downsampling factor 4"):
        build_autoencoder(30, [4, 8, 8], latent_channels=3, layers_per_block=1)
    with pytest.raises(UserInputError, match="must be positive"):
        build_autoencoder(32, [], latent_channels=3, layers_per_block=1)
    assert norm_groups([128, 256, 512]) == 32 and norm_groups([16, 32, 32]) == 16 and norm_groups([12, 24]) == 12


def test_reconstruction_improves_on_a_repeated_batch():
    torch.manual_seed(0)
    model = autoencoder(lr=3e-3)
    optimizer = model.configure_optimizers()
    images = CXRAutoencoder.pair_images(fake_batch())
    with torch.no_grad():
        before = (model.reconstruct(images) - images).abs().mean()
    for _ in range(30):
        loss, terms, _ = model.loss(images, sample=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = (model.reconstruct(images) - images).abs().mean()
    assert set(terms) == {"l1", "ssim", "kl"}
    assert after < 0.6 * before


def test_latent_scale_is_measured_during_training_and_stored_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = autoencoder()
    assert model.measure_scale and float(model.latent_scale) == pytest.approx(PAPER_LATENT_SCALE)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", filename="best")
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoint], accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, loader(3), loader(1))
    scale = float(model.latent_scale)
    assert scale != pytest.approx(PAPER_LATENT_SCALE)
    # 1 / std of the posterior samples of the epoch's images: an independent draw at the final
    # weights is close to it (the weights moved a little during the epoch).
    model.eval()
    with torch.no_grad():
        latents = torch.cat([model.posterior(CXRAutoencoder.pair_images(b)).sample() for b in loader(3)])
    assert scale == pytest.approx(1 / latents.std().item(), rel=0.2)
    stored = read_checkpoint(tmp_path / "best.ckpt")["state_dict"]
    assert float(stored["latent_scale"]) == pytest.approx(scale)
    assert any(key.startswith(AUTOENCODER_KEY + ".encoder.") for key in stored)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_fixed_latent_scale_is_kept():
    model = autoencoder(latent_scale=0.5)
    model.training_step(fake_batch(), 0)
    assert not model.measure_scale and float(model.latent_scale) == 0.5
    with pytest.raises(UserInputError, match="latent_scale"):
        autoencoder(latent_scale=0.0)


def test_checkpoint_round_trip_and_part_loading(tmp_path):
    torch.manual_seed(0)
    model = autoencoder(architecture=OmegaConf.create(TINY))  # as Hydra passes it
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, loader(2), loader(1))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    hyperparameters = read_checkpoint(path)["hyper_parameters"]
    assert hyperparameters["architecture"] == TINY and hyperparameters["optimizer"]["_target_"].endswith("Adam")

    fresh = autoencoder()
    load_model_weights(fresh, path)
    images = phantom_images(2)
    with torch.no_grad():
        assert torch.equal(fresh.reconstruct(images), model.reconstruct(images))
    assert float(fresh.latent_scale) == float(model.latent_scale)

    # What EHRXDiff does: the same architecture from build_autoencoder, the "autoencoder." weights.
    part = build_autoencoder(S, **TINY)
    load_part(part, path, AUTOENCODER_KEY, role="model.autoencoder_checkpoint", hint="")
    with torch.no_grad():
        x = to_autoencoder_range(images)
        assert torch.equal(part.encode(x).latent_dist.mode(), model.autoencoder.encode(x).latent_dist.mode())


def save_diffusers_autoencoder(folder: Path, channels: int, architecture=TINY, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    levels = len(architecture["block_out_channels"])
    rgb = AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels,
                        block_out_channels=tuple(architecture["block_out_channels"]),
                        layers_per_block=architecture["layers_per_block"],
                        latent_channels=architecture["latent_channels"],
                        norm_num_groups=norm_groups(architecture["block_out_channels"]), sample_size=S)
    rgb.save_pretrained(folder)
    return rgb.eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_pretrained_diffusers_folder_loads_and_an_rgb_one_acts_on_grey_images(tmp_path, channels):
    original = save_diffusers_autoencoder(tmp_path / "vae", channels)
    model = autoencoder(pretrained=str(tmp_path / "vae")).eval()
    images = phantom_images(2)
    x = to_autoencoder_range(images)
    with torch.no_grad():
        theirs = original.encode(x.repeat(1, channels, 1, 1)).latent_dist.mode()
        ours = model.autoencoder.encode(x).latent_dist.mode()
        # RGB: the grey image repeated on 3 channels in, the 3 output channels averaged out.
        their_image = original.decode(theirs).sample.mean(dim=1, keepdim=True)
        our_image = model.autoencoder.decode(ours).sample
    assert model.autoencoder.config.in_channels == 1
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(our_image, their_image, atol=1e-5)


def test_bad_pretrained_folders_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="no config.json"):
        autoencoder(pretrained=str(tmp_path / "missing"))
    save_diffusers_autoencoder(tmp_path / "other", 1, {"block_out_channels": [4, 4], "latent_channels": 2,
                                                       "layers_per_block": 1})
    with pytest.raises(UserInputError, match="set model.architecture"):
        autoencoder(pretrained=str(tmp_path / "other"))
    broken = tmp_path / "broken"
    save_diffusers_autoencoder(broken, 1)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="could not be loaded"):
        autoencoder(pretrained=str(broken))
    with pytest.raises(UserInputError, match="lacks latent_channels"):
        autoencoder(architecture={"block_out_channels": [4, 8], "layers_per_block": 1})
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "in_channels": "x"}))
    with pytest.raises(UserInputError):
        load_pretrained_autoencoder(garbled, S, TINY)


def test_test_metrics_report_reconstruction_error_psnr_and_ssim():
    model = autoencoder()
    metrics = model.test_metrics(loader(2))
    assert set(metrics) == {"test/reconstruction_mse", "test/psnr", "test/ssim"}
    assert 0 < metrics["test/reconstruction_mse"] < 1 and metrics["test/ssim"] < 1
    assert model.training  # the mode is restored

    class Identity(CXRAutoencoder):
        def reconstruct(self, images):
            return images

    perfect = Identity(FINDINGS, 4, S, 2, dict(TINY), functools.partial(torch.optim.Adam)).test_metrics(loader(2))
    assert perfect["test/reconstruction_mse"] == 0 and perfect["test/psnr"] == pytest.approx(100.0)
    assert perfect["test/ssim"] == pytest.approx(1.0, abs=1e-5)
    noisy = loader(1)
    errors = [(torch.rand_like(b["prev_image"]) - 0.5) * 0.2 for b in noisy]

    class Noisy(CXRAutoencoder):
        def reconstruct(self, images):
            return images + torch.cat([errors[0], errors[0]])

    measured = Noisy(FINDINGS, 4, S, 2, dict(TINY), functools.partial(torch.optim.Adam)).test_metrics(noisy)
    mse = errors[0].pow(2).mean().item()
    assert measured["test/reconstruction_mse"] == pytest.approx(mse, rel=1e-5)
    assert math.isclose(measured["test/psnr"], 10 * math.log10(1 / mse), abs_tol=1.0)
    assert measured["test/ssim"] < 0.99


@pytest.mark.parametrize("name, size, latent", [("cxr_vae_small", 64, (3, 16, 16)), ("cxr_vae", 256, (3, 64, 64))])
def test_the_configs_build_at_their_image_size(name, size, latent):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.data.image_size == size
    with torch.device("meta"):
        model = instantiate(cfg.model, findings=FINDINGS, event_dim=4, image_size=size, max_events=2)
    assert isinstance(model, CXRAutoencoder) and model.latent_shape == latent
    optimizer = model.configure_optimizers()
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.9)
