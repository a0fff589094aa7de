"""MedGAN: a GAN in the latent space of a pretrained linear autoencoder (seed 002 §2.2, F.1).

A patient is one row over the full vocabulary (:class:`~ehrlab.models.generative.flat.FlatGenerator`):
a binary indicator per code (``mode="binary"``) or, in the count mode that seed 002 restores
(§2.2, F.1 "MedGAN Count Mode Restoration"), the number of the patient's visits that hold the
code. Training has two phases, told apart by ``self.current_epoch`` (F.1 "MedGAN Training"):

1. **Autoencoder pretraining** (epochs ``0 .. autoencoder_epochs - 1``; F.1: 100). Encoder
   ``Linear(V -> 128)``, decoder ``Linear(128 -> V)``; the decoder ends in a sigmoid (binary)
   or a ReLU (count) (F.1). Loss: binary cross-entropy (binary) or mean squared error (count)
   of the reconstruction (F.1 table).
2. **Adversarial training** (the remaining epochs; F.1: 1000, so ``epochs: 1100`` in
   conf/model/medgan.yaml, batch 128). The generator maps noise z ~ N(0, I_128) to a latent
   of 128 through residual blocks ``h + act(BN(W h))`` (F.1 "residual connections"); the
   decoder maps the latent to a record; the discriminator scores records with minibatch
   averaging (F.1): its input is ``[x; mean of x over the batch]``.

Generation (F.1 "MedGAN Generation"): z ~ N(0, I) from the caller's ``torch.Generator`` ->
generator (eval mode: batch-norm running statistics) -> decoder; binary mode keeps the codes
whose probability is at least 0.5, count mode rounds the ReLU output and clips it to
``[0, max_count]``; the rows become one pseudo-visit per patient (``matrix_codes``). The full
vocabulary is modelled (§2.2: a linear layer takes any V; 6,955 ICD-9 codes in the paper).

Facts taken from the original TensorFlow medGAN (Choi et al. 2017, ``mp2893/medgan``), where
F.1 lost or omits them:

- **Encoder activation**: tanh in binary mode, ReLU in count mode (the original's
  ``aeActivation``); one layer each way (the original's default empty compress/decompress
  lists), so the latent is the 128 encoder units.
- **Generator**: the original's ``generatorDims = (128, 128)`` plus an output block of the
  latent size: two residual blocks ``h <- h + ReLU(BN(W h))`` then an output block
  ``h + tanh(BN(W h))`` (binary) or ``h + ReLU(BN(W h))`` (count). The linear maps have no
  bias (batch norm's shift plays it); batch norm as TensorFlow's (``decay`` 0.99 -> PyTorch
  momentum 0.01, epsilon 1e-3, learned scale and shift).
- **Discriminator**: ``[x; batch mean] (2V) -> 256 -> 128 -> 1``, ReLU, no dropout (the
  original feeds keep-rate 1.0); the last unit is a logit, its sigmoid taken inside the loss.
- **Loss**: the standard GAN loss: the discriminator minimises
  ``-mean log D(x) - mean log(1 - D(G(z)))``, the generator the non-saturating
  ``-mean log D(G(z))``.
- **Step ratio 2:1**: the original's ``n_discriminator_update = 2``, ``n_generator_update = 1``.
- **The decoder keeps training in the adversarial phase**: the original's generator optimiser
  covers the generator's variables and the decoder's (``g_vars + decodeVariables``), at the
  same learning rate. The encoder is not used after pretraining.
- **Reconstruction losses**: binary cross-entropy summed over the V codes and averaged over
  patients; mean squared error averaged over every entry (both as the original).

Decisions where F.1 and the original are silent or disagree with this framework:

- **Count decoder: ReLU**, not Softplus: F.1's implementation note and the original both use
  ReLU, and it outputs exact zeros, so rounding leaves a sparse row.
- **Optimisers**: F.1's Adam, lr 1e-3, betas (0.9, 0.999), weight decay 1e-4 (PyTorch's
  coupled L2, the counterpart of the original's L2 term added to each loss) for all three
  optimisers (autoencoder, discriminator, generator + decoder); one ``optimizer`` factory
  builds them.
- **One batch size for both phases** (the DataModule's ``data.batch_size``, F.1: 128): the
  original pretrains with batches of 100 and trains the GAN with batches of 1,000; the single
  dataloader of a Lightning fit offers one size, and F.1 gives 128.
- **The two discriminator updates of a step see the same real batch** (with fresh noise
  each): a Lightning step receives one batch; the original draws a new random batch for each
  update. An epoch is one pass over the training split, so it has ``N / 128`` generator
  updates and twice as many discriminator updates, as in the original.
- **The generator's batch norm uses batch statistics in both updates** (train mode). The
  original uses the running averages while updating the discriminator; with momentum 0.01
  those lag the generator by ~100 steps, so the discriminator would judge records the
  generator no longer makes. Its running averages are what generation uses (eval mode).
- **No burn-in before generation**: the original refreshes the running averages with 1,000
  throw-away batches before sampling. Here they are kept current by training (the last ~100
  of the generator's batch-norm passes dominate them), and ``generate`` stays a pure function
  of the weights and the seed.
- **max_count** (count mode's clip) is a persistent buffer: the largest entry of any training
  row seen in training batches (after the first epoch: the largest count of the training
  split, as the model's batches hold it). It works with any dataloader, is restored from
  checkpoints, and needs no statistics pass. A model that has never seen a training batch
  (``max_count`` 0) does not clip from above.
- **Initialisation**: Xavier-uniform weights, zero biases (the original's ``get_variable``
  default is Glorot-uniform).
- A training batch of one patient is skipped in the adversarial phase (batch norm cannot
  normalise a single record).

Model selection: the adversarial losses do not measure sample quality, so ``monitor = None``
and checkpoints/best.ckpt is the latest epoch. Validation logs ``val/reconstruction_loss``.
Resuming from last.ckpt restores the epoch (hence the phase), the three optimisers' states
and ``max_count``; nothing else carries state between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.generative.flat import AutoencoderGAN

#: F.1 hidden (latent) dimension of the autoencoder
LATENT_DIM = 128
#: F.1 latent dimension: the generator's noise
NOISE_DIM = 128
#: the original's ``generatorDims``; an output block of LATENT_DIM follows
GENERATOR_DIMS = (128, 128)
#: the original's ``discriminatorDims`` (the last, 1, is the score)
DISCRIMINATOR_DIMS = (256, 128)
#: TensorFlow batch norm with decay 0.99 and epsilon 1e-3, in PyTorch's terms
BATCH_NORM = {"momentum": 0.01, "eps": 1e-3}


def _init_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear layer."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _activation(mode: str) -> nn.Module:
    """The autoencoder's hidden activation: tanh (binary) or ReLU (count), as the original."""
    return nn.Tanh() if mode == "binary" else nn.ReLU()


class LinearAutoencoder(nn.Module):
    """F.1's autoencoder: ``Linear(V -> latent)`` + tanh/ReLU, ``Linear(latent -> V)``.

    ``decode_raw`` gives the decoder's pre-activation output; ``decode`` applies the mode's
    output activation (sigmoid: probabilities; ReLU: non-negative counts).
    """

    def __init__(self, n_codes: int, mode: str, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.mode = mode
        self.encoder = nn.Sequential(nn.Linear(n_codes, latent_dim), _activation(mode))
        self.decoder = nn.Linear(latent_dim, n_codes)
        _init_xavier(self)

    def encode(self, rows: Tensor) -> Tensor:
        return self.encoder(rows)

    def decode_raw(self, latent: Tensor) -> Tensor:
        return self.decoder(latent)

    def decode(self, latent: Tensor) -> Tensor:
        raw = self.decode_raw(latent)
        return torch.sigmoid(raw) if self.mode == "binary" else F.relu(raw)


class ResidualBlock(nn.Module):
    """``h + act(BN(W h))``: the original medGAN's generator layer (no bias: BN shifts)."""

    def __init__(self, width: int, activation: nn.Module):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.norm = nn.BatchNorm1d(width, **BATCH_NORM)
        self.activation = activation

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.activation(self.norm(self.linear(hidden)))


class ResidualGenerator(nn.Module):
    """Noise [n, noise_dim] -> latent [n, latent_dim]: ReLU residual blocks of ``hidden``
    widths, then an output block with tanh (binary) or ReLU (count) (see the module docstring).

    A residual block keeps its input's width, so every width must equal the noise's and the
    latent's (128 in F.1 and the original, where the same holds).
    """

    def __init__(self, mode: str, noise_dim: int = NOISE_DIM, hidden: Sequence[int] = GENERATOR_DIMS,
                 latent_dim: int = LATENT_DIM):
        super().__init__()
        widths = [noise_dim, *hidden, latent_dim]
        if len(set(widths)) != 1:
            raise ValueError(f"residual generator layers keep their width: noise_dim, generator_dims and latent_dim "
                             f"must all be equal, got {noise_dim}, {list(hidden)}, {latent_dim}")
        blocks = [ResidualBlock(width, nn.ReLU()) for width in hidden]
        blocks.append(ResidualBlock(latent_dim, nn.Tanh() if mode == "binary" else nn.ReLU()))
        self.blocks = nn.Sequential(*blocks)
        _init_xavier(self)

    def forward(self, noise: Tensor) -> Tensor:
        return self.blocks(noise)


class MinibatchAveragingDiscriminator(nn.Module):
    """Records [B, V] -> one logit per record [B]. Input ``[x; mean over the batch of x]``
    (2V; F.1 "minibatch averaging"), then ``hidden`` ReLU layers (256, 128) and a score."""

    def __init__(self, n_codes: int, hidden: Sequence[int] = DISCRIMINATOR_DIMS):
        super().__init__()
        widths = [2 * n_codes, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        _init_xavier(self)

    def forward(self, records: Tensor) -> Tensor:
        # The first layer on [x; mean] is W_x x + (W_m mean + b): the mean's half is computed
        # once for the batch instead of once per record (the same function and gradients,
        # half the first layer's work, which dominates MedGAN's cost at V = 6,955).
        first, n_codes = self.net[0], records.shape[1]
        batch_mean = records.mean(dim=0, keepdim=True)
        hidden = F.linear(records, first.weight[:, :n_codes]) + F.linear(batch_mean, first.weight[:, n_codes:], first.bias)
        return self.net[1:](hidden).view(records.shape[0])


class MedGAN(AutoencoderGAN):
    """MedGAN (seed 002 §2.2, F.1), binary or count: see the module docstring.

    Args:
        vocabulary: code strings by id, ``[PAD]`` first.
        mode: ``"binary"`` (code present or not) or ``"count"`` (visits holding the code).
        autoencoder_epochs: epochs of autoencoder pretraining before the adversarial phase
            (F.1: 100); the run's ``trainer.max_epochs`` is the total.
        latent_dim: the autoencoder's latent width (F.1: 128).
        noise_dim: the generator's noise width (F.1: 128).
        generator_dims: widths of the generator's ReLU residual blocks (original: 128, 128).
        discriminator_dims: the discriminator's hidden widths (original: 256, 128).
        discriminator_steps: discriminator updates per generator update (original: 2).
        threshold: binary mode: a code is generated when its probability is at least this.
        optimizer: ``(params=...)`` -> optimiser; builds the autoencoder's, the
            discriminator's and the generator's (F.1: Adam, lr 1e-3, weight decay 1e-4).
    """

    def __init__(
        self,
        vocabulary: list[str],
        mode: str = "binary",
        autoencoder_epochs: int = 100,
        latent_dim: int = LATENT_DIM,
        noise_dim: int = NOISE_DIM,
        generator_dims: Sequence[int] = GENERATOR_DIMS,
        discriminator_dims: Sequence[int] = DISCRIMINATOR_DIMS,
        discriminator_steps: int = 2,
        threshold: float = 0.5,
        optimizer: Any = None,
    ):
        super().__init__(vocabulary, mode, autoencoder_epochs, noise_dim, optimizer)
        generator_dims = tuple(int(d) for d in generator_dims)  # plain data in the checkpoint
        discriminator_dims = tuple(int(d) for d in discriminator_dims)
        self.save_hyperparameters(ignore=["vocabulary", "optimizer"])
        if discriminator_steps < 1:
            raise ValueError(f"need discriminator_steps >= 1, got {discriminator_steps}")
        self.discriminator_steps = discriminator_steps
        self.threshold = threshold
        self.autoencoder = LinearAutoencoder(self.vocab_size, mode, latent_dim)
        self.generator = ResidualGenerator(mode, noise_dim, generator_dims, latent_dim)
        self.discriminator = MinibatchAveragingDiscriminator(self.vocab_size, discriminator_dims)
        # Count mode's clip: the largest count in any training row seen (module docstring).
        self.register_buffer("max_count", torch.zeros((), dtype=torch.long))

    # -- pieces -------------------------------------------------------------------------------

    def reconstruction_loss(self, rows: Tensor) -> Tensor:
        """F.1's pretraining loss: BCE summed over codes and averaged over patients (binary),
        or MSE averaged over every entry (count)."""
        raw = self.autoencoder.decode_raw(self.autoencoder.encode(rows))
        if self.mode == "binary":
            return F.binary_cross_entropy_with_logits(raw, rows, reduction="none").sum(dim=1).mean()
        return F.mse_loss(F.relu(raw), rows)

    # -- training -----------------------------------------------------------------------------

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("MedGAN needs an `optimizer` (a _partial_ config node)")
        autoencoder = self.optimizer_factory(params=self.autoencoder.parameters())
        discriminator = self.optimizer_factory(params=self.discriminator.parameters())
        # The original trains the decoder with the generator (module docstring).
        generator = self.optimizer_factory(
            params=list(self.generator.parameters()) + list(self.autoencoder.decoder.parameters()))
        return [autoencoder, discriminator, generator]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        rows = self.patient_matrix(batch)
        n = rows.shape[0]
        if n > 0:
            self.max_count.copy_(torch.maximum(self.max_count, rows.max().long()))
        autoencoder_opt, discriminator_opt, generator_opt = self.optimizers()
        if self.in_pretraining():
            self.autoencoder_step(rows, autoencoder_opt)
            return
        if n < 2:
            return  # batch norm cannot normalise a single record

        for _ in range(self.discriminator_steps):
            with torch.no_grad():
                fake = self.decode_noise(self.noise(n))
            real_logit, fake_logit = self.discriminator(rows), self.discriminator(fake)
            # -log D(x) - log(1 - D(G(z))), each averaged over the batch
            discriminator_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
            self.manual_step(discriminator_opt, discriminator_loss)

        self.toggle_optimizer(generator_opt)  # the discriminator (and the encoder) get no gradient
        fake_logit = self.discriminator(self.decode_noise(self.noise(n)))
        generator_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))  # -log D(G(z))
        self.manual_step(generator_opt, generator_loss)
        self.untoggle_optimizer(generator_opt)

        self.log("train/discriminator_loss", discriminator_loss.detach(), on_step=True, on_epoch=True, batch_size=n)
        self.log("train/generator_loss", generator_loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=n)

    # -- generation (F.1 "MedGAN Generation") -------------------------------------------------

    def sample_codes(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        records = self.decode_noise(self.noise(n, generator))
        if self.mode == "binary":
            return self.matrix_codes(records >= self.threshold)
        counts = records.round()
        if self.max_count > 0:
            counts = counts.clamp(max=float(self.max_count))
        return self.matrix_codes(counts)
