"""EHRXDiff's image autoencoder (seed 004 §3.2, §3.3.1, §4.5): a KL autoencoder, trained as a part.

EHRXDiff is a latent diffusion model (§3.2, Eq. 1): its UNet denoises the latent ``z = E_VAE(x)``
of an image, and the same encoder's latent of the previous image is one of its conditions
(``c_VAE``, §3.3.1). The paper does not train this autoencoder: it loads the one of Cheff /
MaCheX (Weber et al., 2023; §4.5), an LDM KL autoencoder with 128 channels, multipliers
1/2/4, two residual blocks per level, no attention but the middle block's, z = 3: a 256² image
becomes a 3 × 64 × 64 latent (``C_z, H_f, W_f`` = 3, 64, 64 in §4.5). `build_autoencoder` builds
that architecture with ``diffusers.AutoencoderKL`` (grey images: one channel in and out), and
:class:`CXRAutoencoder` trains it on the task's images (``model=cxr_vae`` / ``cxr_vae_small``)
or starts from a converted Cheff autoencoder (``pretrained``, a diffusers folder).

Images enter the autoencoder in [-1, 1] (LDM's convention; `to_autoencoder_range`). The
diffusion model works on ``latent_scale × z``; LDM measures the scale as 1 / std of the
training latents (``scale_by_std``), and Cheff's scale is 0.18215 (`PAPER_LATENT_SCALE`), which
EHRXDiff inherits. The scale is a buffer of the model (state-dict key ``latent_scale``), so a
checkpoint carries it to the models that load the autoencoder (``autoencoder.`` prefix).

Loss (Cheff's ``LPIPSWithDiscriminator``, which is LDM's): L1 reconstruction + 1e-6 × KL +
LPIPS, and a patch discriminator from step 5,001 on. Two departures, both because the project
runs offline on small data:

- LPIPS needs VGG weights that cannot be downloaded here; its structural role is taken by the
  SSIM loss (MONAI's ``SSIMLoss``), weighted like LPIPS (1 per pixel of L1).
- No adversarial term. It sharpens textures at full resolution on MIMIC-scale data; on the
  phantom and at 64² it is not needed for reconstruction, and it would double the cost of a
  step and require manual optimisation. A pretrained Cheff autoencoder keeps what its own
  adversarial training gave it.

LDM's loss sums over pixels (and the KL over latent elements) per image; here both are per
pixel (divided by the number of pixels), the same balance between the terms with a loss whose
size does not depend on the image size. LDM's learned log-variance of the reconstruction
(``logvar``, initialised to 0) is left out: at 0 it is the plain L1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from monai.losses import SSIMLoss
from torch import Tensor

from ehrlab.errors import UserInputError
from ehrlab.models.cxr.base import ENCODER, Batch, ImageForecaster

#: Cheff's (and Stable Diffusion's) latent scale: the diffusion model sees latent × 0.18215
PAPER_LATENT_SCALE = 0.18215
#: the attribute name of the autoencoder in :class:`CXRAutoencoder` (its state-dict prefix)
AUTOENCODER_KEY = "autoencoder"
#: LDM's group normalisation has 32 groups (all of Cheff's widths are multiples of 32)
MAX_NORM_GROUPS = 32
#: the keys of `build_autoencoder`'s architecture (``model.architecture``)
ARCHITECTURE_KEYS = ("block_out_channels", "latent_channels", "layers_per_block")


def to_autoencoder_range(images: Tensor) -> Tensor:
    """Images in [0, 1] → [-1, 1], the range the autoencoder is trained on."""
    return images * 2.0 - 1.0


def from_autoencoder_range(images: Tensor) -> Tensor:
    """The autoencoder's output → [0, 1] (clamped)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def norm_groups(block_out_channels: Sequence[int]) -> int:
    """The groups of every group normalisation: LDM's 32 where they divide every width (Cheff's
    128/256/512), else the largest number below 32 that does (small widths such as 16)."""
    common = math.gcd(*block_out_channels)
    return next(g for g in range(min(MAX_NORM_GROUPS, common), 0, -1) if common % g == 0)


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
    """Image side / latent side: each level but the last halves the resolution."""
    return 2 ** (len(block_out_channels) - 1)


def build_autoencoder(image_size: int, block_out_channels: Sequence[int], latent_channels: int,
                      layers_per_block: int) -> AutoencoderKL:
    """The KL autoencoder of Cheff / LDM for grey images (one channel in and out), untrained.

    One ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` per entry of `block_out_channels`,
    `layers_per_block` residual blocks per encoder level (the decoder has one more, as in LDM),
    self-attention only in the middle blocks (Cheff's ``attn_resolutions: []``), the quant
    convolutions of LDM's ``embed_dim``. The image side shrinks by ``2 ** (len - 1)``: the
    paper's ``[128, 256, 512]``, z = 3 turn 256² images into 3 × 64 × 64 latents (§4.5).
    Images in [-1, 1].
    """
    block_out_channels = [int(c) for c in block_out_channels]
    if not block_out_channels or min(block_out_channels) < 1 or latent_channels < 1 or layers_per_block < 1:
        raise UserInputError(f"model.architecture: block_out_channels={block_out_channels}, latent_channels="
                             f"{latent_channels} and layers_per_block={layers_per_block} must be positive "
                             "(one or more levels).")
    factor = downsampling_factor(block_out_channels)
    if image_size % factor:
        raise UserInputError(f"image size {image_size} is not divisible by the autoencoder's downsampling factor "
                             f"{factor} ({len(block_out_channels)} levels in model.architecture.block_out_channels):"
                             " change data.image_size or the number of levels.")
    levels = len(block_out_channels)
    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_groups(block_out_channels), sample_size=image_size,
                         scaling_factor=PAPER_LATENT_SCALE)


def grey_weights(state_dict: dict[str, Tensor], channels: int) -> dict[str, Tensor]:
    """A `channels`-channel autoencoder's weights as the equivalent grey (1-channel) one's.

    Cheff's autoencoder reads and writes RGB images. Feeding it a grey image repeated on the
    three channels and averaging its three output channels is linear in the first and last
    convolutions, so it is exactly the 1-channel autoencoder whose ``encoder.conv_in`` weights
    are summed over the input channels and whose ``decoder.conv_out`` weights and bias are
    averaged over the output channels.
    """
    weights = dict(state_dict)
    if channels == 1:
        return weights
    weights["encoder.conv_in.weight"] = weights["encoder.conv_in.weight"].sum(dim=1, keepdim=True)
    weights["decoder.conv_out.weight"] = weights["decoder.conv_out.weight"].mean(dim=0, keepdim=True)
    weights["decoder.conv_out.bias"] = weights["decoder.conv_out.bias"].mean(dim=0, keepdim=True)
    return weights


def plain_architecture(architecture) -> dict:
    """``{block_out_channels: [int, …], latent_channels: int, layers_per_block: int}`` from a dict or
    DictConfig (other keys are left out); a missing key is a UserInputError."""
    missing = [key for key in ARCHITECTURE_KEYS if key not in architecture]
    if missing:
        raise UserInputError(f"model.architecture lacks {', '.join(missing)} (it needs {', '.join(ARCHITECTURE_KEYS)}).")
    return {"block_out_channels": [int(c) for c in architecture["block_out_channels"]],
            "latent_channels": int(architecture["latent_channels"]),
            "layers_per_block": int(architecture["layers_per_block"])}


def load_pretrained_autoencoder(path: str | Path, image_size: int, architecture: dict) -> AutoencoderKL:
    """The grey autoencoder of `architecture` with the weights of the diffusers folder at `path`
    (``AutoencoderKL.save_pretrained``: config.json + weights), a 1- or 3-channel autoencoder
    (see `grey_weights`). The folder's architecture must be `architecture`: the models that load
    this part later build it from `architecture`. Every failure is a UserInputError."""
    path = Path(path).expanduser()
    role = "model.pretrained"
    if not (path / "config.json").is_file():
        raise UserInputError(f"{role}={path} is not a diffusers autoencoder folder (no config.json): save the "
                             "autoencoder with AutoencoderKL.save_pretrained(folder), or convert Cheff's checkpoint "
                             "with diffusers' LDM conversion script first.")
    try:
        # local_files_only: the folder is read as it is, nothing is fetched.
        pretrained = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except Exception as error:  # diffusers raises OSError, ValueError, EnvironmentError… on a bad folder
        raise UserInputError(f"{role}={path} could not be loaded as a diffusers AutoencoderKL: "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    config = pretrained.config
    channels = config.in_channels
    if channels not in (1, 3) or config.out_channels != channels:
        raise UserInputError(f"{role}={path} has {config.in_channels} input and {config.out_channels} output "
                             "channels; a grey (1) or RGB (3) autoencoder is needed.")
    theirs = {"block_out_channels": [int(c) for c in config.block_out_channels],
              "latent_channels": int(config.latent_channels), "layers_per_block": int(config.layers_per_block)}
    ours = plain_architecture(architecture)
    if theirs != ours:
        raise UserInputError(f"{role}={path} has the architecture {theirs}, model.architecture says {ours}: set "
                             "model.architecture to the pretrained autoencoder's.")
    autoencoder = build_autoencoder(image_size, **ours)
    try:
        autoencoder.load_state_dict(grey_weights(pretrained.state_dict(), channels))
    except RuntimeError as error:  # other block types, groups or attention than Cheff's
        raise UserInputError(f"{role}={path} is not an autoencoder of Cheff's kind (down/up encoder blocks, "
                             f"mid-block attention, {norm_groups(ours['block_out_channels'])} norm groups): "
                             f"{str(error).splitlines()[0]}") from error
    return autoencoder


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over each latent's elements: [B] (LDM's
    ``DiagonalGaussianDistribution.kl``, with its log-variance clamp to [-30, 20])."""
    logvar = logvar.clamp(-30.0, 20.0)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class CXRAutoencoder(ImageForecaster):
    """The KL autoencoder of EHRXDiff (§3.3.1, §4.5), trained as a part for the diffusion model.

    It learns to reconstruct every training pair's previous and target image (both are CXRs
    of the task; a study that is in several pairs is seen several times per epoch). Loss: see
    the module docstring. ``val/loss`` is the same loss with the posterior's mode (the sample
    of training would make it noisy between epochs). After training, the family reports
    :meth:`test_metrics` on the test pairs' images.

    Args:
        findings, event_dim, image_size, max_events: from the datamodule (only `image_size` is used).
        architecture: ``{block_out_channels, latent_channels, layers_per_block}`` for
            `build_autoencoder` (the models that load this part build it from the same dict).
        optimizer: ``optimizer(params=...)`` (a ``_partial_`` node); scheduler: ``scheduler(optimizer=...)``
            or None, stepped each epoch on ``val/loss``.
        kl_weight: weight of the KL term per pixel (LDM / Cheff: 1e-6).
        ssim_weight: weight of the SSIM loss, the stand-in for LDM's LPIPS (weight 1).
        latent_scale: the factor the diffusion model applies to the latents. None: measured as
            1 / std of the posterior samples of the training images (LDM's ``scale_by_std``),
            over each training epoch, so the checkpoint of an epoch holds that epoch's value;
            a number: fixed (0.18215 for Cheff's autoencoder, `PAPER_LATENT_SCALE`).
        pretrained: a diffusers folder holding a 1- or 3-channel AutoencoderKL of
            `architecture` (see `load_pretrained_autoencoder`), the weights to start from;
            training then fine-tunes it.
        early_stopping_patience: validation epochs without a lower ``val/loss`` before stopping.
    """

    output = ENCODER

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int, architecture: dict,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 kl_weight: float = 1e-6, ssim_weight: float = 1.0, latent_scale: float | None = None,
                 pretrained: str | None = None, early_stopping_patience: int | None = 10):
        super().__init__(findings, event_dim, image_size, max_events, early_stopping_patience)
        # Plain numbers before save_hyperparameters reads them: Hydra passes a DictConfig whose
        # list would reach the checkpoint as its repr, not as a list.
        architecture = plain_architecture(architecture)
        self.save_hyperparameters()
        if pretrained:
            self.autoencoder = load_pretrained_autoencoder(pretrained, image_size, architecture)
        else:
            self.autoencoder = build_autoencoder(image_size, **architecture)
        self.measure_scale = latent_scale is None
        if latent_scale is not None and not latent_scale > 0:
            raise UserInputError(f"model.latent_scale={latent_scale} must be positive (or null: measured).")
        # Until measured, Cheff's value: a model used before any training step still has a scale.
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale or PAPER_LATENT_SCALE)))
        self.ssim = SSIMLoss(spatial_dims=2, data_range=2.0, win_size=self._ssim_window(image_size))
        # The epoch's latent statistics (count, sum, sum of squares), float64 on the CPU.
        self._latent_moments = torch.zeros(3, dtype=torch.float64)

    @staticmethod
    def _ssim_window(image_size: int) -> int:
        """SSIM's usual 11-pixel window, smaller (odd) for images under 11 pixels."""
        return min(11, image_size - 1 + image_size % 2)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, H_f, W_f) of one image's latent: (3, 64, 64) at the paper's size."""
        config = self.autoencoder.config
        side = self.image_size // downsampling_factor(config.block_out_channels)
        return int(config.latent_channels), side, side

    def posterior(self, images: Tensor):
        """The latent posterior of images in [0, 1] (diffusers' DiagonalGaussianDistribution)."""
        return self.autoencoder.encode(to_autoencoder_range(images)).latent_dist

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents ``latent_scale × z`` [B, C_z, H_f, W_f] of images [B, 1, S, S] in [0, 1]:
        the posterior's mode, or a sample of it."""
        posterior = self.posterior(images)
        latents = posterior.sample(generator) if sample else posterior.mode()
        return latents * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, 1, S, S] in [0, 1] from scaled latents (the inverse of :meth:`encode`)."""
        return from_autoencoder_range(self.autoencoder.decode(latents / self.latent_scale).sample)

    def reconstruct(self, images: Tensor) -> Tensor:
        """Images [B, 1, S, S] in [0, 1] through the autoencoder (the posterior's mode)."""
        return self.decode(self.encode(images))

    def loss(self, images: Tensor, sample: bool) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(loss, its terms, the latents) for images in [0, 1]."""
        target = to_autoencoder_range(images)
        posterior = self.autoencoder.encode(target).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        reconstruction = self.autoencoder.decode(latents).sample
        l1 = (reconstruction - target).abs().mean()
        ssim = self.ssim(reconstruction, target)
        kl = kl_divergence(posterior.mean, posterior.logvar).mean() / target[0].numel()
        loss = l1 + self.hparams.ssim_weight * ssim + self.hparams.kl_weight * kl
        return loss, {"l1": l1, "ssim": ssim, "kl": kl}, latents

    @staticmethod
    def pair_images(batch: Batch) -> Tensor:
        """Every image of the batch's pairs: the previous images, then the targets [2B, 1, S, S]."""
        return torch.cat([batch["prev_image"], batch["target_image"]])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, terms, latents = self.loss(self.pair_images(batch), sample=True)
        n = len(batch["pair_id"]) * 2
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_epoch=True, batch_size=n)
        if self.measure_scale:
            self._update_latent_scale(latents.detach())
        return loss

    def on_train_epoch_start(self) -> None:
        self._latent_moments.zero_()

    def _update_latent_scale(self, latents: Tensor) -> None:
        """latent_scale = 1 / std of this epoch's posterior samples so far (LDM's scale_by_std
        measures one batch; an epoch's worth is steadier). Set at every step, so that the value
        in a checkpoint written after the epoch's validation is the whole epoch's."""
        values = latents.double().flatten()
        self._latent_moments += torch.stack([values.new_tensor(values.numel()), values.sum(),
                                             values.pow(2).sum()]).cpu()
        count, total, squares = self._latent_moments.tolist()
        if count < 2:
            return
        variance = (squares - total * total / count) / (count - 1)
        if variance > 0:
            self.latent_scale.fill_(1.0 / math.sqrt(variance))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, terms, _ = self.loss(self.pair_images(batch), sample=False)
        n = len(batch["pair_id"]) * 2
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, value in terms.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val/latent_scale", self.latent_scale, on_epoch=True, batch_size=n, sync_dist=True)

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        raise NotImplementedError("an autoencoder forecasts nothing: it is a part of EHRXDiff (see test_metrics)")

    @torch.no_grad()
    def test_metrics(self, dataloader) -> dict[str, float]:
        """Reconstruction of the test pairs' previous and target images (posterior mode), in [0, 1]:
        ``test/reconstruction_mse`` (per pixel), ``test/psnr`` (dB, mean over images of
        10·log10(1 / MSE)) and ``test/ssim`` (mean over images; 11-pixel Gaussian window)."""
        was_training = self.training
        self.eval()
        squared, psnr, ssim, n_images, n_pixels = 0.0, 0.0, 0.0, 0, 0
        try:
            for batch in dataloader:
                images = self.pair_images({k: batch[k].to(self.device) for k in ("prev_image", "target_image")})
                reconstruction = self.reconstruct(images)
                errors = (reconstruction - images).pow(2).flatten(1)
                squared += float(errors.sum())
                n_pixels += errors.numel()
                image_mse = errors.mean(dim=1).clamp(min=1e-10)  # a perfect image: 100 dB, not infinity
                psnr += float((10.0 * torch.log10(1.0 / image_mse)).sum())
                ssim += float((1.0 - self._ssim_per_image(reconstruction, images)).sum())
                n_images += len(images)
        finally:
            self.train(was_training)
        if not n_images:
            return {}
        return {"test/reconstruction_mse": squared / n_pixels, "test/psnr": psnr / n_images,
                "test/ssim": ssim / n_images}

    def _ssim_per_image(self, x: Tensor, y: Tensor) -> Tensor:
        """1 − SSIM per image [B] for images in [0, 1]."""
        loss = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=self._ssim_window(self.image_size),
                        reduction="none")
        return loss(x, y).flatten(1).mean(dim=1)

    def configure_optimizers(self):
        return self.optimizers_for(self.parameters())


__all__ = ["ARCHITECTURE_KEYS", "AUTOENCODER_KEY", "PAPER_LATENT_SCALE", "CXRAutoencoder", "build_autoencoder", "from_autoencoder_range",
           "load_pretrained_autoencoder", "plain_architecture", "to_autoencoder_range"]
