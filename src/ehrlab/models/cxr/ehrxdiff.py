"""EHRXDiff (seed 004 §3): a latent diffusion model that forecasts the later chest X-ray of a pair
from the previous image and the medical events between the two.

Parts (§3.3, Figure 2):

- the frozen KL autoencoder (`ehrlab.models.cxr.autoencoder`, trained by its own run, the
  ``autoencoder_checkpoint``): the target image's latent ``z_0 = E_VAE(I_trg)`` is what the
  UNet denoises (Eq. 1), and the previous image's latent is the VAE condition ``c_VAE^img``;
- the CLIP encoders (`ehrlab.models.cxr.clip`, pretrained contrastively, Appendix B.1, the
  ``clip_checkpoint``): the previous image's ViT tokens ``c_CLIP^img`` and the event tokens
  ``c_CLIP^tab``, trained further with the UNet (the authors' ``clip_trainable: true``);
- the adapter A_fusion (`ehrlab.models.cxr.adapter`, §3.3.2) that fuses the three streams
  into C_fusion context tokens;
- the denoiser ε_θ: ``diffusers.UNet2DConditionModel`` with cross-attention to the context
  (§3.2), trained with ε-prediction and the L2 loss of Eq. 2 on the noising of Eq. 1 (or,
  as a documented departure for short runs, v-prediction: ``prediction``).

Facts from the authors' code (REFERENCES.md) where the paper is silent: the UNet of Cheff /
LDM (224 channels, multipliers 1/2/4/4, two residual blocks per level, attention at the down
factors 8, 4 and 2 and in the middle block, 8 heads, context 768); 1,000 steps of LDM's
"linear" schedule, β from 0.0015 to 0.0295 evenly spaced in √β (diffusers' ``scaled_linear``);
target latents are posterior samples × the latent scale, the VAE condition is the posterior
mode, unscaled; batch 128, AdamW 5e-5 constant, an EMA of the weights, the best checkpoint by
validation loss; no classifier-free guidance; DDIM with 100 steps and η = 1.

Decisions:

- The EMA weights (LDM's ``LitEma``: decay ``min(decay, (1 + n) / (10 + n))`` after n updates)
  are used for validation and forecasting. The authors' sampling script does not switch to
  them (a quirk, not copied): an EMA that is trained and then never used is not the intent.
- Table 4 row 1 concatenates the previous image's latent to the UNet input: that latent is
  scaled like the noisy one (LDM's concat conditioning goes through the same latent scale), so
  both input halves have comparable variance.
- The VAE condition through the adapter stays unscaled (authors).
- w_null (§3.4, Appendix B.2): each training batch gains no-change triples (previous image,
  no events, a randomly rotated and scaled copy of the previous image), ``null_share`` of the
  extended batch; the authors add one per pair (0.5). Their null event matrix is all zeros
  through a table encoder without a mask; ours is an empty event list, whose table tokens are
  zeros (the table stream then contributes nothing but the adapter's bias).
- ``prediction: v`` (ehrxdiff_small; the paper and ``model=ehrxdiff`` keep ``epsilon``) trains the
  denoiser to predict v = √ᾱ·ε − √(1 − ᾱ)·z_0 (Salimans & Ho 2022) with the same L2 loss, and
  DDIM samples with it. Why: this schedule ends at ᾱ ≈ 3·10⁻⁶, so at the first sampling steps an
  ε-predictor's error is multiplied by up to 1/√ᾱ ≈ 560 in the latent it implies; it must learn
  ε̂ = z_t almost exactly there before its samples become images, which 100 GPU epochs give and a
  CPU budget does not. Measured on ehrxdiff_small after 8 epochs: at t = 981 the ε-MSE was 0.014
  where the trivial answer ε̂ = z_t scores 0.00001, and DDIM ended at latents of standard
  deviation 25 instead of 1 (noise images, FID 32-40). A v-predictor's error at high noise is
  an error in z_0 itself, not amplified.
- Sampling draws all noise of a pair (its initial latent and every DDIM step's) from a
  generator seeded by (sampling seed, pair id): a forecast does not depend on the batch it
  is computed in, nor on the batch size.
- ``val/loss`` is Eq. 2 with noise, timesteps and posterior samples drawn from a generator
  seeded by the batch's index, so that epochs are compared on the same draws.
- Speed: the autoencoder encodes a step's previous and target images in one pass; the table
  encoder runs only on rows that have events; the adapter multiplies only the batch's real
  event slots. With ``cache_conditions`` what the frozen parts compute (the posteriors, and the
  CLIP tokens when ``train_clip`` is False) is kept per pair id during training, so that from
  the second epoch on a step costs the UNet and the adapter only (ehrxdiff_small, whose CPU
  budget needs it; the same loss, tested).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from ehrlab.checkpoints import read_checkpoint
from ehrlab.errors import UserInputError
from ehrlab.models.cxr.adapter import Context, FusionAdapter, check_table_context
from ehrlab.models.cxr.augment import random_affine
from ehrlab.models.cxr.autoencoder import (
    AUTOENCODER_KEY,
    PAPER_LATENT_SCALE,
    build_autoencoder,
    downsampling_factor,
    from_autoencoder_range,
    norm_groups,
    to_autoencoder_range,
)
from ehrlab.models.cxr.base import IMAGE, Batch, ImageForecaster
from ehrlab.models.cxr.clip import build_clip_encoders
from ehrlab.models.cxr.parts import load_part
from ehrlab.models.cxr.table_encoder import TABLE_ENCODER_KEY

log = logging.getLogger(__name__)

#: Table 4 row 7 = EHRXDiff: the VAE latent, the CLIP image and table tokens, all by cross-attention
DEFAULT_CONDITIONING = {"vae_concat": False, "vae_cross_attention": True, "clip_image": True, "table": True}
#: the authors' UNet (Cheff / LDM): attention at levels 1-3, i.e. down factors 2, 4 and 8
DEFAULT_UNET = {"block_out_channels": [224, 448, 896, 896], "layers_per_block": 2, "attention_levels": [1, 2, 3],
                "n_heads": 8}
IMAGE_ENCODER_KEY = "image_encoder"


def plain(value: Any) -> Any:
    """A Hydra node as plain dicts and lists (the constructor's arguments may be either)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def conditioning_options(conditioning: Mapping | None) -> dict[str, bool]:
    """Table 4's switches, completed with EHRXDiff's defaults; unknown keys are refused."""
    options = dict(plain(conditioning) or {})
    unknown = sorted(set(options) - set(DEFAULT_CONDITIONING))
    if unknown:
        raise UserInputError(f"model.conditioning has unknown key(s) {unknown}; known: {sorted(DEFAULT_CONDITIONING)}.")
    options = {key: bool(options.get(key, default)) for key, default in DEFAULT_CONDITIONING.items()}
    if not any(options.values()):
        raise UserInputError("model.conditioning switches every condition off: EHRXDiff would not see the pair at "
                             "all. Keep at least one of vae_concat, vae_cross_attention, clip_image, table.")
    return options


def build_unet(latent_size: int, in_channels: int, out_channels: int, context_dim: int,
               block_out_channels: Sequence[int], layers_per_block: int, attention_levels: Sequence[int],
               n_heads: int) -> UNet2DConditionModel:
    """The denoiser: LDM's UNet as ``diffusers.UNet2DConditionModel``, untrained.

    Level i has ``block_out_channels[i]`` channels and ``layers_per_block`` residual blocks, a
    Transformer (self-attention, cross-attention to the context, feed-forward) after each of
    them at the `attention_levels` (``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``), and
    halves the resolution but at the last level; the middle block always attends. `n_heads`
    heads per attention layer: diffusers' ``attention_head_dim`` argument of this class is the
    number of heads (a naming slip diffusers keeps for compatibility). Group normalisation has
    32 groups, or fewer for narrow channels (as the autoencoder's).
    """
    block_out_channels = [int(c) for c in block_out_channels]
    levels = len(block_out_channels)
    attention_levels = sorted({int(level) for level in attention_levels})
    if not block_out_channels or min(block_out_channels) < 1 or layers_per_block < 1:
        raise UserInputError(f"model.unet: block_out_channels={block_out_channels} and layers_per_block="
                             f"{layers_per_block} must be positive (one level or more).")
    if any(not 0 <= level < levels for level in attention_levels):
        raise UserInputError(f"model.unet.attention_levels={attention_levels}: levels are 0 … {levels - 1}.")
    factor = 2 ** (levels - 1)
    if latent_size % factor:
        raise UserInputError(f"the latent side {latent_size} is not divisible by the UNet's downsampling factor "
                             f"{factor} ({levels} levels in model.unet.block_out_channels): use fewer levels.")
    attending = [block_out_channels[level] for level in attention_levels] + [block_out_channels[-1]]
    if any(channels % n_heads for channels in attending):
        raise UserInputError(f"model.unet.n_heads={n_heads} does not divide the channels {attending} of the levels "
                             "that attend (and the middle block).")
    down = tuple("CrossAttnDownBlock2D" if level in attention_levels else "DownBlock2D" for level in range(levels))
    up = tuple("CrossAttnUpBlock2D" if level in attention_levels else "UpBlock2D" for level in reversed(range(levels)))
    return UNet2DConditionModel(sample_size=latent_size, in_channels=in_channels, out_channels=out_channels,
                                down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                                layers_per_block=layers_per_block, cross_attention_dim=context_dim,
                                attention_head_dim=n_heads, norm_num_groups=norm_groups(block_out_channels))


#: model.prediction → diffusers' prediction_type
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise UserInputError(f"model.prediction={prediction!r}: one of {sorted(PREDICTIONS)} (the paper: epsilon).")


def noise_scheduler(train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                    prediction: str = "epsilon") -> DDIMScheduler:
    """LDM's diffusion process and DDIM sampler in diffusers' terms: the betas of the training
    schedule; timesteps 1, 1 + k, 1 + 2k, … (LDM's "uniform" DDIM discretisation = diffusers'
    ``leading`` spacing with offset 1); the last step goes to ᾱ_0, not to 1 (LDM's
    ``alphas_cumprod_prev``); no clipping of the predicted latent (latents are unbounded);
    the denoiser predicts ε or v (`PREDICTIONS`)."""
    check_prediction(prediction)
    try:
        return DDIMScheduler(num_train_timesteps=train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             prediction_type=PREDICTIONS[prediction], timestep_spacing="leading")
    except NotImplementedError as error:
        raise UserInputError(f"model.beta_schedule={beta_schedule!r}: {error}") from error


def pair_generator(seed: int | None, pair_id: int) -> torch.Generator:
    """A CPU generator for one pair's sampling noise, seeded by (sampling seed, pair id)."""
    state = np.random.SeedSequence([int(seed or 0) % 2**64, int(pair_id) % 2**64]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def add_null_samples(batch: Batch, share: float, degrees: float, scale: Sequence[float],
                     generator: torch.Generator | None = None) -> tuple[Batch, Tensor]:
    """w_null (§3.4, Appendix B.2): `batch` extended with no-change triples; returns (batch, source).

    k = round(B · share / (1 − share)) rows are appended (k = B for the authors' 0.5): each takes
    the previous image of a row of `batch` (drawn without replacement while k ≤ B), no events
    (an all-False mask), as target a copy of that previous image rotated and scaled at random
    (`ehrlab.models.cxr.augment.random_affine`: ±`degrees`, factor in `scale`), and as labels
    the previous labels (no change). The original rows come first, unchanged. ``source`` [B + k]
    is the row of `batch` each row's previous image comes from (0 … B − 1 for the original rows),
    so that what depends on the previous image alone is computed once per distinct image.
    """
    size = batch["prev_image"].shape[0]
    n_null = round(size * share / (1.0 - share))
    device = batch["prev_image"].device
    if n_null == 0:
        return batch, torch.arange(size, device=device)
    picks = (torch.randperm(size, generator=generator)[:n_null] if n_null <= size
             else torch.randint(size, (n_null,), generator=generator)).to(device)
    source = torch.cat([torch.arange(size, device=device), picks])
    extended = {}
    for key, value in batch.items():
        extended[key] = value[source] if isinstance(value, Tensor) and value.ndim and len(value) == size else value
    extended["events"] = extended["events"].clone()
    extended["events"][size:] = 0.0
    extended["event_mask"] = extended["event_mask"].clone()
    extended["event_mask"][size:] = False
    targets = extended["target_image"].clone()
    targets[size:] = random_affine(batch["prev_image"][picks], degrees, scale, generator=generator)
    extended["target_image"] = targets
    if "prev_labels" in batch and "target_labels" in batch:
        labels = extended["target_labels"].clone()
        labels[size:] = batch["prev_labels"][picks]
        extended["target_labels"] = labels
    return extended, source


def condition_shift(size: int) -> int:
    """How far `EHRXDiff.diffusion_loss` rolls a batch's conditions for ``other_conditions``: half a
    batch, so that a pair seldom gets the conditions of the same patient's next pair (the
    datasets keep a patient's pairs together)."""
    return max(1, size // 2)


def table_tokens(encoder: nn.Module, events: Tensor, event_mask: Tensor, width: int) -> Tensor:
    """The table encoder's tokens [B, E, width] (zero at padding), run only on the rows that have
    events (a w_null row, or a pair whose events were all dropped, is all zeros anyway)."""
    has_events = event_mask.any(dim=1)
    if bool(has_events.all()):
        return encoder(events, event_mask)
    tokens = events.new_zeros(*event_mask.shape, width)
    if bool(has_events.any()):
        tokens[has_events] = encoder(events[has_events], event_mask[has_events]).to(tokens.dtype)
    return tokens


class EHRXDiff(ImageForecaster):
    """Seed 004's EHRXDiff (§3) and EHRXDiff_w_null (§3.4): see the module's notes.

    Args:
        findings, event_dim, image_size, max_events: from the datamodule; `max_events` sizes the
            adapter's table stream (1,024 in the paper).
        autoencoder: the autoencoder run's ``model.architecture`` ({block_out_channels,
            latent_channels, layers_per_block}, `ehrlab.models.cxr.autoencoder.build_autoencoder`).
        autoencoder_checkpoint: that run's checkpoint (weights under ``autoencoder.``, its
            ``latent_scale``); None: an untrained autoencoder (tests only; a warning says so).
        clip: the CLIP run's ``model.architecture`` (`ehrlab.models.cxr.clip.build_clip_encoders`).
        clip_checkpoint: that run's checkpoint (``image_encoder.``, ``table_encoder.``); None:
            the encoders start from scratch (Table 10's ablation).
        train_clip: train the CLIP encoders with the UNet (the authors' ``clip_trainable: true``);
            False freezes them.
        conditioning: Table 4's switches ``vae_concat`` (the previous latent concatenated to the
            UNet input), ``vae_cross_attention``, ``clip_image``, ``table`` (adapter streams);
            missing keys take EHRXDiff's (row 7: all but vae_concat).
        n_context: C_fusion, the adapter's context tokens (1,024).
        table_context: ``mixed`` (§3.3.2, the paper: the event tokens go through the adapter's
            mixing layer) or ``tokens`` (they are context tokens of their own, after the mixed
            ones; a departure, `ehrlab.models.cxr.adapter` says why and what it measured).
        context_dim: the UNet's cross-attention width (768 = D_CLIP: no extra projection).
        unet: {block_out_channels, layers_per_block, attention_levels, n_heads} (`build_unet`).
        train_timesteps, beta_start, beta_end, beta_schedule: the diffusion process (Eq. 1).
        prediction: what the denoiser predicts, ``epsilon`` (the paper, Eq. 2) or ``v`` (see the
            module's notes).
        sampling_steps, eta: DDIM's steps and η (100 and 1 in the paper).
        sampling_seeds: the seeds the test pairs are forecast with (three in §4.5).
        null_share: w_null's share of no-change triples in each training batch (0: EHRXDiff;
            0.5: EHRXDiff_w_null as the authors train it, one per pair).
        null_rotation_degrees, null_scale: B.2's augmentation of the no-change targets.
        ema_decay: the EMA's decay (LDM: 0.9999); None: no EMA, the trained weights are used.
        cache_conditions: keep what the frozen parts compute per pair (the autoencoder's
            posteriors; the CLIP tokens too when ``train_clip`` is False) in memory during
            training and validation, computed once per pair instead of once per epoch: the same
            loss, faster from the second epoch on, for as much memory (about 100 kB a pair at
            ehrxdiff_small's size; off for the paper's 100k pairs at 256²).
        optimizer: ``optimizer(params=...)`` (a ``_partial_`` node; AdamW 5e-5 in §4.5).
        scheduler: ``scheduler(optimizer=...)`` or None (none in the paper), stepped each epoch.
        early_stopping_patience: validation epochs without a lower ``val/loss`` before stopping.
    """

    output = IMAGE

    def __init__(self, findings: list[str], event_dim: int, image_size: int, max_events: int,
                 autoencoder: Mapping, clip: Mapping, optimizer: Callable[..., torch.optim.Optimizer],
                 autoencoder_checkpoint: str | None = None, clip_checkpoint: str | None = None,
                 train_clip: bool = True, conditioning: Mapping | None = None, n_context: int = 1024,
                 table_context: str = "mixed", context_dim: int = 768, unet: Mapping | None = None,
                 train_timesteps: int = 1000,
                 beta_start: float = 0.0015, beta_end: float = 0.0295, beta_schedule: str = "scaled_linear",
                 prediction: str = "epsilon",
                 sampling_steps: int = 100, eta: float = 1.0, sampling_seeds: Sequence[int] = (0, 1, 2),
                 null_share: float = 0.0, null_rotation_degrees: float = 10.0,
                 null_scale: Sequence[float] = (0.9, 1.1), ema_decay: float | None = 0.9999,
                 cache_conditions: bool = False, scheduler: Callable[..., Any] | None = None,
                 early_stopping_patience: int | None = None):
        super().__init__(findings, event_dim, image_size, max_events, early_stopping_patience)
        self.save_hyperparameters()
        self.conditioning = conditioning_options(conditioning)
        if not 0.0 <= null_share < 1.0:
            raise UserInputError(f"model.null_share={null_share} must be in [0, 1) (0.5: one no-change triple per pair).")
        if not 1 <= sampling_steps <= train_timesteps:
            raise UserInputError(f"model.sampling_steps={sampling_steps} must be between 1 and train_timesteps="
                                 f"{train_timesteps}.")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise UserInputError(f"model.ema_decay={ema_decay} must be in (0, 1), or null for no EMA.")
        seeds = tuple(int(seed) for seed in plain(sampling_seeds))
        if not seeds:
            raise UserInputError("model.sampling_seeds is empty: give at least one seed (the paper uses three).")
        self.sampling_seeds = seeds
        self.train_clip = bool(train_clip)
        self.null_share = float(null_share)
        self.null_scale = tuple(float(s) for s in plain(null_scale))
        self.sampling_steps, self.eta = int(sampling_steps), float(eta)
        self.cache_conditions = bool(cache_conditions)
        self._feature_cache: dict[int, dict[str, Tensor]] = {}  # pair id → features (cache_conditions)
        # Parts built without weights, said when training starts: a forecast-only run loads
        # every weight from an EHRXDiff checkpoint afterwards, so they mean nothing there.
        self._untrained_parts: list[tuple[int, str]] = []

        # The frozen autoencoder (§3.2): its weights are part of this model's state dict, so an
        # EHRXDiff checkpoint stands on its own.
        architecture = plain(autoencoder) or {}
        keys = ("block_out_channels", "latent_channels", "layers_per_block")
        if any(key not in architecture for key in keys):
            raise UserInputError(f"model.autoencoder needs {list(keys)} (the autoencoder run's model.architecture), "
                                 f"got {sorted(architecture)}.")
        architecture = {key: architecture[key] for key in keys}
        self.autoencoder = build_autoencoder(image_size, **architecture)
        self.register_buffer("latent_scale", torch.tensor(PAPER_LATENT_SCALE))
        if autoencoder_checkpoint:
            self._load_autoencoder(Path(autoencoder_checkpoint).expanduser(), architecture)
        else:
            self._untrained_parts.append((logging.WARNING, (
                "EHRXDiff: no model.autoencoder_checkpoint: the autoencoder is untrained and stays frozen, so the "
                "forecasts are meaningless (tests only; the runner trains it as pretrain.autoencoder)")))
        self.autoencoder.requires_grad_(False)
        self.latent_channels = int(self.autoencoder.config.latent_channels)
        self.latent_size = image_size // downsampling_factor(self.autoencoder.config.block_out_channels)

        # The CLIP encoders (§3.3.1): only those a stream reads are kept.
        clip = plain(clip)
        self.clip_dim = int(clip["clip_dim"])
        image_encoder, table_encoder = build_clip_encoders(image_size, event_dim, clip)
        self.image_encoder = image_encoder if self.conditioning["clip_image"] else None
        self.table_encoder = table_encoder if self.conditioning["table"] else None
        if clip_checkpoint:
            self._load_clip(Path(clip_checkpoint).expanduser())
        elif self.image_encoder is not None or self.table_encoder is not None:
            self._untrained_parts.append((logging.INFO, (
                "EHRXDiff: no model.clip_checkpoint: the CLIP encoders start from scratch (Table 10's ablation)")))
        if not self.train_clip:
            for encoder in (self.image_encoder, self.table_encoder):
                if encoder is not None:
                    encoder.requires_grad_(False)
            if not clip_checkpoint and (self.image_encoder is not None or self.table_encoder is not None):
                self._untrained_parts.append((logging.WARNING, (
                    "EHRXDiff: model.train_clip=false without a model.clip_checkpoint: the CLIP encoders stay "
                    "untrained (random); Table 10's ablation trains them from scratch: train_clip=true")))

        self.adapter = FusionAdapter(
            self.clip_dim, n_context, context_dim,
            table_tokens=max_events if self.conditioning["table"] else 0,
            image_tokens=image_encoder.n_tokens if self.conditioning["clip_image"] else 0,
            vae_channels=self.latent_channels if self.conditioning["vae_cross_attention"] else 0,
            vae_pixels=self.latent_size ** 2, table_context=table_context)
        unet = {**DEFAULT_UNET, **(plain(unet) or {})}
        unknown = sorted(set(unet) - set(DEFAULT_UNET))
        if unknown:
            raise UserInputError(f"model.unet has unknown key(s) {unknown}; known: {sorted(DEFAULT_UNET)}.")
        in_channels = self.latent_channels * (2 if self.conditioning["vae_concat"] else 1)
        self.unet = build_unet(self.latent_size, in_channels, self.latent_channels, context_dim, **unet)

        with torch.device("cpu"):  # the schedule is numbers, also when the model is built on the meta device
            process = noise_scheduler(train_timesteps, beta_start, beta_end, beta_schedule, prediction)
        self.scheduler_config = dict(process.config)
        # ᾱ_t of Eq. 1; derived from the hyperparameters, so not saved
        self.register_buffer("alphas_cumprod", process.alphas_cumprod.float(), persistent=False)
        self.train_timesteps = int(train_timesteps)
        self.prediction = prediction

        # The EMA copies of what is trained (LDM's LitEma), in the state dict so that resuming
        # continues the same average.
        self.ema_decay = ema_decay
        self.ema = nn.ModuleDict()
        if ema_decay is not None:
            for name in self.trained_names():
                self.ema[name] = copy.deepcopy(getattr(self, name)).requires_grad_(False)
        self.register_buffer("ema_updates", torch.tensor(0, dtype=torch.long))
        self.train()

    @staticmethod
    def check_options(options: Mapping) -> None:
        """Options whose wrong value would otherwise show only once the parts are trained (the
        runner calls this first, `ehrlab.families.base.Family.check`)."""
        check_prediction(options.get("prediction", "epsilon"))
        conditioning_options(options.get("conditioning"))
        check_table_context(options.get("table_context", "mixed"))

    # ----------------------------------------------------------------------------------- parts

    def _load_autoencoder(self, path: Path, architecture: dict) -> None:
        checkpoint = load_part(self.autoencoder, path, AUTOENCODER_KEY, role="model.autoencoder_checkpoint",
                               hint=f"model.autoencoder must be the autoencoder run's model.architecture "
                                    f"(here {architecture}), at its data.image_size.")
        state = checkpoint["state_dict"]
        scale = state.get("latent_scale")
        if scale is None:
            scale = next((value for key, value in state.items() if key.endswith(".latent_scale")), None)
        if scale is None:
            log.warning("EHRXDiff: %s has no latent_scale: using Cheff's %s", path, PAPER_LATENT_SCALE)
        else:
            self.latent_scale.fill_(float(scale))

    def _load_clip(self, path: Path) -> None:
        hint = ("model.clip must be the CLIP run's model.architecture, at its data.image_size and with the same "
                "text encoder (event width).")
        checkpoint = read_checkpoint(path, role="model.clip_checkpoint")  # read once for both encoders
        for name, encoder in ((IMAGE_ENCODER_KEY, self.image_encoder), (TABLE_ENCODER_KEY, self.table_encoder)):
            if encoder is not None:
                load_part(encoder, path, name, role="model.clip_checkpoint", hint=hint, checkpoint=checkpoint)

    def trained_names(self) -> list[str]:
        """The modules the optimiser trains (and the EMA averages)."""
        names = ["unet", "adapter"]
        if self.train_clip:
            names += [name for name in (IMAGE_ENCODER_KEY, TABLE_ENCODER_KEY) if getattr(self, name) is not None]
        return names

    def networks(self, ema: bool) -> dict[str, nn.Module | None]:
        """The modules a forward pass uses: the EMA copies of the trained ones when `ema` (and
        there is an EMA), else the trained ones; frozen parts as they are."""
        modules = {name: getattr(self, name) for name in ("unet", "adapter", IMAGE_ENCODER_KEY, TABLE_ENCODER_KEY)}
        if ema and len(self.ema):
            modules.update({name: self.ema[name] for name in self.ema})
        return modules

    def train(self, mode: bool = True):
        """The autoencoder, frozen encoders and EMA copies stay in eval mode (no dropout)."""
        super().train(mode)
        self.autoencoder.eval()
        self.ema.eval()
        if not self.train_clip:
            for encoder in (self.image_encoder, self.table_encoder):
                if encoder is not None:
                    encoder.eval()
        return self

    # ------------------------------------------------------------------------------ conditions

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The frozen autoencoder's posterior parameters (mean, log-variance) [B, 2 C_z, h, w] of
        images [B, 1, S, S] in [0, 1] (unscaled latents)."""
        return self.autoencoder.encode(to_autoencoder_range(images)).latent_dist.parameters

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, 1, S, S] in [0, 1] from scaled latents."""
        return from_autoencoder_range(self.autoencoder.decode(latents / self.latent_scale).sample)

    def feature_keys(self) -> set[str]:
        """What `pair_features` computes for the conditions: ``prev`` always (the latent scale
        and concatenation need it), ``image`` and ``table`` when their streams are on."""
        return {"prev"} | ({"image"} if self.conditioning["clip_image"] else set()) | (
            {"table"} if self.conditioning["table"] else set())

    def pair_features(self, nets: dict[str, nn.Module | None], keys: set[str], batch: Batch) -> dict[str, Tensor]:
        """Per pair of `batch`, the `keys` among ``prev`` / ``target`` (the previous / target
        image's posterior parameters [B, 2 C_z, h, w], one autoencoder pass for both), ``image``
        (the CLIP image tokens [B, n_tokens, clip_dim]) and ``table`` (the table tokens
        [B, E, clip_dim], zero at padding, with ``table_mask`` [B, E], the batch's event mask)."""
        features = {}
        images = [batch[name] for key, name in (("prev", "prev_image"), ("target", "target_image")) if key in keys]
        if images:
            parameters = self.encode(torch.cat(images)).split(len(images[0]))
            for key, value in zip([k for k in ("prev", "target") if k in keys], parameters, strict=True):
                features[key] = value
        if "image" in keys:
            features["image"] = nets[IMAGE_ENCODER_KEY](batch["prev_image"])
        if "table" in keys:
            features["table"] = table_tokens(nets[TABLE_ENCODER_KEY], batch["events"], batch["event_mask"],
                                             self.clip_dim)
            features["table_mask"] = batch["event_mask"]
        return features

    def cached_pair_features(self, nets: dict[str, nn.Module | None], keys: set[str], batch: Batch) -> dict[str, Tensor]:
        """`pair_features`, with what frozen parts compute kept per pair id (``cache_conditions``):
        the autoencoder's posteriors always, the CLIP tokens when the encoders are frozen
        (``train_clip`` False). A pair's features are computed in the first epoch and read back
        afterwards; the rest is computed each time."""
        frozen = {"prev", "target"} | (set() if self.train_clip else {"image", "table"})
        cached, computed = keys & frozen, keys - frozen
        features = self.pair_features(nets, computed, batch) if computed else {}
        if not cached:
            return features
        ids = batch["pair_id"].tolist()
        missing = [row for row, pair in enumerate(ids) if pair not in self._feature_cache]
        if missing:
            rows = torch.tensor(missing, device=batch["pair_id"].device)
            fresh = self.pair_features(nets, frozen & keys, {k: v[rows] for k, v in batch.items()
                                                              if isinstance(v, Tensor) and v.ndim})
            lengths = batch["event_mask"][rows].sum(dim=1).tolist()
            for index, row in enumerate(missing):
                entry = {key: value[index].detach().cpu() for key, value in fresh.items() if key != "table_mask"}
                if "table" in entry:  # the real events only: the padding depends on the batch
                    entry["table"] = entry["table"][:lengths[index]].clone()
                self._feature_cache[ids[row]] = entry
        entries = [self._feature_cache[pair] for pair in ids]
        if "table" in cached:
            lengths = batch["event_mask"].sum(dim=1).tolist()
            if any(len(entry["table"]) != length for entry, length in zip(entries, lengths, strict=True)):
                raise RuntimeError("cache_conditions: a pair id came back with another number of events; the "
                                   "cache needs each pair id to stand for one pair (the task's pair ids do)")
        device = batch["prev_image"].device
        for key in cached:
            if key == "table":
                tokens = torch.zeros(len(ids), batch["event_mask"].shape[1], self.clip_dim)
                for row, entry in enumerate(entries):
                    tokens[row, :len(entry["table"])] = entry["table"]
                features[key] = tokens.to(device)
                features["table_mask"] = batch["event_mask"]
            else:
                features[key] = torch.stack([entry[key] for entry in entries]).to(device)
        return features

    def fuse(self, nets: dict[str, nn.Module | None], features: dict[str, Tensor], size: int,
             source: Tensor | None = None) -> tuple[Context, Tensor | None]:
        """(the context of the UNet's cross-attention, the scaled previous latent to concatenate or None).

        ``features["prev"]`` and ``features["image"]`` are per distinct previous image,
        ``features["table"]`` and ``features["table_mask"]`` per row; `source` [B] maps each row to
        its previous image (None: one image per row). The VAE conditions use the posterior's mode
        (its mean).
        """
        def rows(value: Tensor) -> Tensor:
            return value if source is None else value[source]

        prev_latent = rows(features["prev"][:, :self.latent_channels])
        streams = {}
        if self.conditioning["table"]:
            streams["table"], streams["table_mask"] = features["table"], features["table_mask"]
        if self.conditioning["clip_image"]:
            streams["image"] = rows(features["image"])
        if self.conditioning["vae_cross_attention"]:
            streams["vae"] = prev_latent
        context = nets["adapter"](**streams, batch_size=size)
        concat = prev_latent * self.latent_scale if self.conditioning["vae_concat"] else None
        return context, concat

    def conditions(self, nets: dict[str, nn.Module | None], batch: Batch) -> tuple[Context, Tensor | None]:
        """(context, latent to concatenate or None) of a batch of pairs (see `fuse`)."""
        return self.fuse(nets, self.pair_features(nets, self.feature_keys(), batch), batch["prev_image"].shape[0])

    def denoise(self, unet: nn.Module, latents: Tensor, timesteps: Tensor, context: Context,
                concat: Tensor | None) -> Tensor:
        """ε_θ(z_t, t, c): the predicted noise [B, C_z, h, w] (or v, with ``prediction: v``)."""
        sample = latents if concat is None else torch.cat([latents, concat], dim=1)
        return unet(sample, timesteps, encoder_hidden_states=context.tokens,
                    encoder_attention_mask=context.mask).sample

    # -------------------------------------------------------------------------------- training

    def prediction_target(self, latents: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
        """What the denoiser learns to output for z_t = √ᾱ·`latents` + √(1 − ᾱ)·`noise`: the noise
        (Eq. 2), or v = √ᾱ·noise − √(1 − ᾱ)·latents (``prediction: v``)."""
        if self.prediction == "epsilon":
            return noise
        return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * latents

    def diffusion_loss(self, batch: Batch, nets: dict[str, nn.Module | None], source: Tensor | None = None,
                       generator: torch.Generator | None = None, other_conditions: str | None = None) -> Tensor:
        """Eq. 2: the mean squared error of the predicted noise (or v), at one random timestep per pair
        (`diffusion_losses` with one variant)."""
        return self.diffusion_losses(batch, nets, source, generator, (other_conditions,))[other_conditions]

    def diffusion_losses(self, batch: Batch, nets: dict[str, nn.Module | None], source: Tensor | None = None,
                         generator: torch.Generator | None = None,
                         variants: Sequence[str | None] = (None,)) -> dict[str | None, Tensor]:
        """Eq. 2's loss per variant of the conditions, all on the same draws (timesteps, noise,
        posterior samples): None, each pair's own conditions; ``"all"``, those of the pair half a
        batch away (`condition_shift`); ``"events"``, only that pair's events (the table stream).
        The swapped ones give the loss a model that ignores those conditions would also reach
        (`validation_step`). The features and draws are computed once for all variants.

        One autoencoder pass encodes the previous images and the targets. With `source` (a
        w_null batch, `add_null_samples`), the first ``max(source) + 1`` rows are the batch's own
        pairs and the others no-change rows on their previous images: those share the pairs'
        previous-image features, and only their (moved) targets are encoded anew. `generator`
        (CPU) fixes every draw (validation).
        """
        unknown = set(variants) - {None, "all", "events"}
        if unknown:
            raise ValueError(f"variants {sorted(map(str, unknown))}: None, 'all' or 'events'")
        size = batch["target_image"].shape[0]
        n_real = size if source is None else int(source.max()) + 1
        real = batch if n_real == size else {k: v[:n_real] for k, v in batch.items() if isinstance(v, Tensor)
                                             and v.ndim and len(v) == size}
        keys = self.feature_keys() | {"target"}
        compute = self.cached_pair_features if self.cache_conditions else self.pair_features
        features = compute(nets, keys, real)
        if n_real < size:
            null_rows = {k: v[n_real:] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim and len(v) == size}
            features["target"] = torch.cat([features["target"], self.encode(null_rows["target_image"])])
            if "table" in features:  # no events: zeros, without running the encoder
                features["table"] = torch.cat([features["table"], table_tokens(
                    nets[TABLE_ENCODER_KEY], null_rows["events"], null_rows["event_mask"], self.clip_dim)])
                features["table_mask"] = torch.cat([features["table_mask"], null_rows["event_mask"]])
        target = DiagonalGaussianDistribution(features.pop("target")).sample(generator) * self.latent_scale
        device = target.device
        if generator is None:
            timesteps = torch.randint(0, self.train_timesteps, (size,), device=device)
            noise = torch.randn_like(target)
        else:
            timesteps = torch.randint(0, self.train_timesteps, (size,), generator=generator).to(device)
            noise = torch.randn(target.shape, generator=generator).to(device=device, dtype=target.dtype)
        alpha_bar = self.alphas_cumprod.to(device)[timesteps].view(-1, 1, 1, 1).to(target.dtype)
        noisy = alpha_bar.sqrt() * target + (1.0 - alpha_bar).sqrt() * noise  # Eq. 1
        wanted = self.prediction_target(target, noise, alpha_bar)
        shift = condition_shift(size)
        context, concat = self.fuse(nets, features, size, source)
        losses = {}
        for variant in variants:
            if variant == "all":
                conditions = (context.roll(shift), None if concat is None else concat.roll(shift, dims=0))
            elif variant == "events" and "table" in features:
                events = {key: features[key].roll(shift, dims=0) for key in ("table", "table_mask")}
                conditions = self.fuse(nets, {**features, **events}, size, source)
            else:
                conditions = (context, concat)
            losses[variant] = F.mse_loss(self.denoise(nets["unet"], noisy, timesteps, *conditions), wanted)
        return losses

    def on_fit_start(self) -> None:
        self._feature_cache.clear()
        for level, message in self._untrained_parts:
            log.log(level, message)

    def on_fit_end(self) -> None:
        self._feature_cache.clear()  # forecasting computes its conditions afresh (drop_events, swap_events change them)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        source = None
        if self.null_share > 0:
            batch, source = add_null_samples(batch, self.null_share, self.hparams.null_rotation_degrees,
                                             self.null_scale)
        loss = self.diffusion_loss(batch, self.networks(ema=False), source)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["pair_id"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """``val/loss`` (Eq. 2 on fixed draws), and how much higher that loss is when each pair is
        denoised with another pair's conditions (the same noise, timesteps and target):
        ``val/condition_gain`` with all of them swapped, ``val/event_gain`` with only the events
        (with a table stream). A gain near 0 means the denoiser ignores those conditions,
        whatever its loss: the quickest sign of whether a run has learnt to use the previous
        image and the events."""
        size = len(batch["pair_id"])
        gains = {} if size < 2 else {"condition_gain": "all"} | (
            {"event_gain": "events"} if self.conditioning["table"] else {})
        draws = torch.Generator().manual_seed(batch_idx)
        losses = self.diffusion_losses(batch, self.networks(ema=True), generator=draws,
                                       variants=(None, *gains.values()))
        self.log("val/loss", losses[None], on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, swapped in gains.items():
            self.log(f"val/{name}", losses[swapped] - losses[None], on_epoch=True, batch_size=size, sync_dist=True)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA update after an optimiser step: LDM's decay with warm-up,
        ``min(decay, (1 + n) / (10 + n))`` at the n-th update."""
        if not len(self.ema):
            return
        self.ema_updates += 1
        n = int(self.ema_updates)
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        averaged, current = [], []
        for name, copy_ in self.ema.items():
            for (_, average), (_, parameter) in zip(copy_.named_parameters(), getattr(self, name).named_parameters(),
                                                    strict=True):
                averaged.append(average)
                current.append(parameter.detach())
            for (_, average), (_, buffer) in zip(copy_.named_buffers(), getattr(self, name).named_buffers(),
                                                 strict=True):
                average.copy_(buffer)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def configure_optimizers(self):
        parameters = [p for name in self.trained_names() for p in getattr(self, name).parameters() if p.requires_grad]
        return self.optimizers_for(parameters)

    # -------------------------------------------------------------------------------- sampling

    def compute_forecast(self, batch: Batch, seed: int | None) -> dict[str, Tensor]:
        """DDIM sampling (`sampling_steps` steps, η = `eta`) from noise drawn per pair (see
        `pair_generator`; seed None counts as 0), decoded to images in [0, 1]."""
        nets = self.networks(ema=True)
        context, concat = self.conditions(nets, batch)
        generators = [pair_generator(seed, pair_id) for pair_id in batch["pair_id"].tolist()]
        shape = (self.latent_channels, self.latent_size, self.latent_size)
        device, dtype = context.tokens.device, context.tokens.dtype

        def draw() -> Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device=device, dtype=dtype)

        sampler = DDIMScheduler.from_config(self.scheduler_config)
        sampler.set_timesteps(self.sampling_steps)
        latents = draw() * sampler.init_noise_sigma
        for timestep in sampler.timesteps:
            timesteps = torch.full((len(generators),), int(timestep), device=device, dtype=torch.long)
            predicted = self.denoise(nets["unet"], latents, timesteps, context, concat)
            variance_noise = draw() if self.eta > 0 else None
            step = sampler.step(predicted, timestep, latents, eta=self.eta, variance_noise=variance_noise)
            latents = step.prev_sample
        return {"image": self.decode(latents)}

    # ------------------------------------------------------------------------------ reporting

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (the EMA copies left out)."""
        counts = {name: sum(p.numel() for p in module.parameters())
                  for name, module in (("autoencoder", self.autoencoder), (IMAGE_ENCODER_KEY, self.image_encoder),
                                       (TABLE_ENCODER_KEY, self.table_encoder), ("adapter", self.adapter),
                                       ("unet", self.unet)) if module is not None}
        counts["trained"] = sum(p.numel() for name in self.trained_names() for p in getattr(self, name).parameters())
        return counts


__all__ = ["DEFAULT_CONDITIONING", "DEFAULT_UNET", "PREDICTIONS", "EHRXDiff", "add_null_samples", "build_unet",
           "condition_shift", "conditioning_options", "noise_scheduler", "pair_generator"]
