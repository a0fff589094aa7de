"""CorGAN: a WGAN-GP in the latent space of a 1-D convolutional autoencoder (seed 002 §2.3, F.2).

A patient is one binary row over the vocabulary (:class:`~ehrlab.models.generative.flat.FlatGenerator`).
Training has two phases, told apart by ``self.current_epoch`` (F.2 "CorGAN Training"):

1. **Autoencoder pretraining** (epochs ``0 .. autoencoder_epochs - 1``, F.2: 10): an 8-layer
   ``Conv1d`` encoder squeezes the row (length V, one channel) to a latent of 128 channels x
   length 1; an 8-layer ``ConvTranspose1d`` decoder maps it back to V probabilities. Loss:
   binary cross-entropy of the reconstruction.
2. **Adversarial training** (the remaining epochs, F.2: 500; ``epochs: 510`` in
   conf/model/corgan.yaml): the generator, an MLP, maps noise z ~ N(0, I_128) to a latent;
   the decoder turns it into a record; a critic scores records. WGAN-GP objective (F.2): the
   critic minimises ``D(x~) - D(x) + lambda (||grad D(x^)||_2 - 1)^2`` with x^ on the line
   between a real and a generated record, lambda = 10, no weight clipping; the generator
   minimises ``-D(x~)``. Critic:generator 5:1.

Generation (§2.3): z ~ N(0, I) drawn from the caller's ``torch.Generator`` -> generator ->
decoder -> threshold at 0.5 -> one pseudo-visit per patient (``matrix_codes``).

Architecture (F.2 table; kernels, strides and channels from the seed-002 authors' 8-layer
port of CorGAN in PyHealth, ``CorGAN8LayerAutoencoder``):

====  ===============  ==========  ======  ==================  ==============
layer encoder Conv1d   length      stride  kernel enc / dec    channels out
====  ===============  ==========  ======  ==================  ==============
1     LeakyReLU(0.2)   6955->3476  2       5 / 5               4
2     BN, LeakyReLU    3476->1736  2       5 / 6               8
3     BN, LeakyReLU    1736->578   3       5 / 5               16
4     BN, LeakyReLU    578->192    3       5 / 5               32
5     BN, LeakyReLU    192->63     3       5 / 6               64
6     BN, LeakyReLU    63->20      3       5 / 6               96
7     BN, LeakyReLU    20->4       4       5 / 8               112
8     Tanh             4->1        1       4 / 4               128
====  ===============  ==========  ======  ==================  ==============

The decoder runs the table bottom-up with ``ConvTranspose1d`` (ReLU; batch norm after its
layers 2-7; Sigmoid last). A transposed convolution's output length is
``(L_in - 1) * stride + kernel``, so decoder layer i's kernel is the one that lands exactly
on the encoder's input length: ``L_{i-1} - (L_i - 1) * s_i`` — the encoder's 5 plus the
remainder its floor division dropped. (F.2's "corrected stride bug in decoder layer 3" is a
fix to the 6-layer port's strides; in this pathway every decoder stride is its encoder
layer's.) All weights: Xavier-uniform (F.2), biases zero.

Decisions where F.2 is silent or lost its numbers:

- **Any vocabulary size.** The F.2 pathway is fixed to V = 6,955. Here the strides (2, 2,
  3, 3, 3, 3, 4, 1), channels and encoder kernel 5 are kept and the lengths are derived from V:
  ``L_i = floor((L_{i-1} - k_i) / s_i) + 1`` with ``k_i = min(5, L_{i-1})`` for layers 1-7
  (once a length reaches 1 the layer is a 1x1 convolution, pure channel mixing), and layer 8's
  kernel spans the whole remaining length ``L_7`` (4 at 6,955) so the latent is always
  128 x 1. Decoder kernels follow from the lengths as above, so the decoder returns exactly V
  columns for every V >= 2, with no padding columns and no pooling; at V = 6,955 this is
  exactly F.2's pathway (tests/models/test_generative_corgan.py checks both). Columns 0
  ([PAD]) and [UNK] are zero in every training row and never generated.
- **Zero biases**, so an untrained decoder puts every code near p = 0.5 and emits about half
  the vocabulary per patient, as the references' would; pretraining removes that. A sparse
  start (the last bias at the logit of ~12.6 codes per patient) was tried and dropped: a
  barely trained model then emits no code at all, and an empty table cannot be evaluated.
- **Batch norm** in encoder layers 2-7 and decoder layers 2-7, as the authors' port (F.2 lists
  activations only). None in the critic: the gradient penalty is per record, which batch
  norm would break (Gulrajani et al. 2017, §4).
- **Generator**: F.2's three linear layers 128 -> 256 -> 128 -> latent with LeakyReLU(0.2) and
  a final Tanh (the encoder's latent is Tanh too). F.2's "128 -> 1" reads in the table's
  length units: the decoder takes 128 channels of length 1, so the last layer has 128 outputs.
  (The authors' port uses MedGAN's residual batch-norm MLP instead; F.2 is followed here.)
- **Critic** (``critic_type``): F.2 says "four convolutional layers". Default ``"conv"``:
  three ``Conv1d`` with the encoder's first three kernels and strides (5/2, 5/2, 5/3;
  ``critic_channels`` 16, 32, 64, LeakyReLU(0.2)), then a fourth ``Conv1d`` to one channel
  whose kernel spans the remaining length (578 at V = 6,955), giving one score per record
  without pooling (a code's position is its identity). ``"mlp"``: the critic of the authors'
  code and the original CorGAN, four linear layers V -> 256 -> 256 -> 256 -> 1 with ReLU
  (no minibatch averaging: it would couple the records the penalty treats one by one).
  Cost: on a CPU, convolutions over a 6,955-long record with few channels are slow, and the
  penalty's double backward triples them: one critic step at V = 6,955, batch 256, took 8.1 s
  with the conv critic against 0.37 s with the MLP (2 busy cores), so ``critic_type=mlp`` is
  the practical choice for CPU runs; on a GPU either is fast.
- **5:1**: as the reference loops, each training batch runs ``critic_steps`` (5) critic
  updates against the same real records, each with fresh noise and a fresh interpolation,
  then one generator update. The references' extra schedule (100 critic steps for the first
  25 generator steps and every 500th) belongs to weight-clipped WGAN and is not used.
- **The decoder keeps learning in the adversarial phase**, in the generator's optimiser at
  ``decoder_lr`` = 1e-4 (the original CorGAN and the authors' port do this; 0 freezes it).
- **Optimisers**: Adam lr 1e-3, betas (0.5, 0.9) for the autoencoder (F.2), the critic and
  the generator (F.2 gives the adversarial lr only; the authors' script uses these betas
  throughout), no weight decay; one ``optimizer`` factory builds all three.
- **Reconstruction loss**: binary cross-entropy summed over the V columns and averaged over
  patients (the original CorGAN's ``autoencoder_loss``: a per-code mean would be dominated by
  the zeros of a sparse row), computed from the decoder's pre-sigmoid logits.
- A training batch of one patient is skipped (batch norm cannot normalise a single record
  whose length has reached 1; the references drop incomplete batches altogether).

Model selection: the adversarial losses do not measure sample quality, so ``monitor = None``
and checkpoints/best.ckpt is the latest epoch. Validation logs ``val/reconstruction_loss``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrlab.models.generative.flat import AutoencoderGAN

#: F.2's eight strides, encoder order (the decoder uses them in reverse)
STRIDES = (2, 2, 3, 3, 3, 3, 4, 1)
#: channels after each encoder layer (the authors' 8-layer port); the latent is 128 x 1
CHANNELS = (4, 8, 16, 32, 64, 96, 112, 128)
ENCODER_KERNEL = 5
#: F.2 "Latent dimension": the generator's noise
NOISE_DIM = 128
CRITIC_TYPES = ("conv", "mlp")


@dataclass(frozen=True)
class ConvLayerShape:
    """One encoder layer and its mirror decoder layer: lengths, stride and both kernels."""

    length_in: int
    length_out: int
    stride: int
    encoder_kernel: int
    decoder_kernel: int


def conv_pathway(
    length: int, strides: Sequence[int] = STRIDES, kernel: int = ENCODER_KERNEL, to_one: bool = True
) -> list[ConvLayerShape]:
    """The layer shapes that take a record of ``length`` codes down the F.2 pathway.

    Layers use ``min(kernel, L)`` (a 1x1 convolution once the length is 1); with ``to_one``
    the last layer's kernel spans the remaining length, so it ends at length 1 (its stride,
    1 in F.2, does not matter then). ``decoder_kernel`` makes ``ConvTranspose1d`` with the same
    stride land back on ``length_in`` exactly. At 6,955: 3476, 1736, 578, 192, 63, 20, 4, 1.
    """
    if length < 1:
        raise ValueError(f"need a positive length, got {length}")
    shapes = []
    for index, stride in enumerate(strides):
        last = to_one and index == len(strides) - 1
        layer_kernel = length if last else min(kernel, length)
        length_out = (length - layer_kernel) // stride + 1
        decoder_kernel = length - (length_out - 1) * stride
        shapes.append(ConvLayerShape(length, length_out, stride, layer_kernel, decoder_kernel))
        length = length_out
    return shapes


def _init_xavier(module: nn.Module) -> None:
    """F.2: "All layers use Xavier uniform initialization" (weights; biases zero)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ConvAutoencoder(nn.Module):
    """F.2's 8-layer 1-D convolutional autoencoder for rows of ``n_codes`` columns.

    ``encode``: float [B, V] -> latent [B, 128, 1] in (-1, 1); ``decode_logits``: latent ->
    pre-sigmoid logits [B, V]; ``decode``: probabilities.
    """

    def __init__(self, n_codes: int):
        super().__init__()
        self.n_codes = n_codes
        self.shapes = conv_pathway(n_codes)
        channels_in = (1,) + CHANNELS[:-1]
        encoder: list[nn.Module] = []
        last = len(self.shapes) - 1
        for index, (shape, c_in, c_out) in enumerate(zip(self.shapes, channels_in, CHANNELS)):
            encoder.append(nn.Conv1d(c_in, c_out, shape.encoder_kernel, stride=shape.stride))
            if 0 < index < last:
                encoder.append(nn.BatchNorm1d(c_out))
            encoder.append(nn.Tanh() if index == last else nn.LeakyReLU(0.2))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = []
        for index, shape in enumerate(reversed(self.shapes)):  # latent side first
            c_in, c_out = CHANNELS[last - index], channels_in[last - index]
            decoder.append(nn.ConvTranspose1d(c_in, c_out, shape.decoder_kernel, stride=shape.stride))
            if 0 < index < last:
                decoder.append(nn.BatchNorm1d(c_out))
            if index < last:
                decoder.append(nn.ReLU())
        self.decoder = nn.Sequential(*decoder)  # the final Sigmoid is applied by decode()
        _init_xavier(self)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(channels, length) of the latent: (128, 1)."""
        return CHANNELS[-1], self.shapes[-1].length_out

    def encode(self, rows: Tensor) -> Tensor:
        return self.encoder(rows.unsqueeze(1))

    def decode_logits(self, latent: Tensor) -> Tensor:
        return self.decoder(latent).squeeze(1)

    def decode(self, latent: Tensor) -> Tensor:
        return torch.sigmoid(self.decode_logits(latent))

    def forward(self, rows: Tensor) -> Tensor:
        """Reconstruction logits [B, V] of binary rows [B, V]."""
        return self.decode_logits(self.encode(rows))


class LatentGenerator(nn.Module):
    """F.2's generator: Linear 128 -> 256 -> 128 -> latent (LeakyReLU(0.2), Tanh last)."""

    def __init__(self, noise_dim: int, latent_shape: tuple[int, int], hidden: Sequence[int] = (256, 128)):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        widths = [noise_dim, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.LeakyReLU(0.2)]
        layers += [nn.Linear(widths[-1], self.latent_shape[0] * self.latent_shape[1]), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_xavier(self)

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise).view(noise.shape[0], *self.latent_shape)


class ConvCritic(nn.Module):
    """Four ``Conv1d`` layers over a record [B, V] -> one score per record [B] (F.2; see the
    module docstring): three strided layers, then one whose kernel spans the rest."""

    def __init__(self, n_codes: int, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"the convolutional critic has three hidden widths, got {list(channels)}")
        self.shapes = conv_pathway(n_codes, strides=STRIDES[:3] + (1,))
        widths = (1, *channels, 1)
        layers: list[nn.Module] = []
        for index, shape in enumerate(self.shapes):
            layers.append(nn.Conv1d(widths[index], widths[index + 1], shape.encoder_kernel, stride=shape.stride))
            if index < len(self.shapes) - 1:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        _init_xavier(self)

    def forward(self, records: Tensor) -> Tensor:
        return self.net(records.unsqueeze(1)).view(records.shape[0])


class MLPCritic(nn.Module):
    """The reference code's critic: four linear layers V -> 256 -> 256 -> 256 -> 1 (ReLU)."""

    def __init__(self, n_codes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_codes, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        _init_xavier(self)

    def forward(self, records: Tensor) -> Tensor:
        return self.net(records).view(records.shape[0])


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, mix: Tensor | None = None) -> Tensor:
    """WGAN-GP's penalty ``mean_i (||grad_x D(x^_i)||_2 - 1)^2`` (F.2; Gulrajani et al. 2017,
    Eq. 3), unweighted, with ``x^_i = mix_i real_i + (1 - mix_i) fake_i`` and ``mix_i ~ U[0, 1]``
    per record unless given. Differentiable (``create_graph``), so the critic's step trains on it.
    """
    if mix is None:
        mix = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    mixed = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((gradient.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


class CorGAN(AutoencoderGAN):
    """CorGAN (seed 002 §2.3, F.2): see the module docstring for the design and its decisions.

    Args:
        vocabulary: code strings by id, ``[PAD]`` first.
        autoencoder_epochs: epochs of autoencoder pretraining before the adversarial phase
            (F.2: 10); the run's ``trainer.max_epochs`` is the total.
        noise_dim: size of the generator's noise z (F.2 latent dimension: 128).
        critic_type: ``"conv"`` (F.2's four convolutional layers) or ``"mlp"`` (the
            reference code's four linear layers).
        critic_channels: widths of the convolutional critic's first three layers.
        critic_steps: critic updates per generator update (F.2: 5).
        gradient_penalty_weight: lambda of WGAN-GP (F.2: 10).
        decoder_lr: the decoder's learning rate in the adversarial phase (0 freezes it).
        threshold: a generated code is present when its probability is at least this (0.5).
        optimizer: ``(params=...)`` -> optimiser; builds the autoencoder's, the critic's and
            the generator's (F.2: Adam, lr 1e-3, betas (0.5, 0.9)).
    """

    def __init__(
        self,
        vocabulary: list[str],
        autoencoder_epochs: int = 10,
        noise_dim: int = NOISE_DIM,
        critic_type: str = "conv",
        critic_channels: Sequence[int] = (16, 32, 64),
        critic_steps: int = 5,
        gradient_penalty_weight: float = 10.0,
        decoder_lr: float = 1e-4,
        threshold: float = 0.5,
        optimizer: Any = None,
    ):
        super().__init__(vocabulary, "binary", autoencoder_epochs, noise_dim, optimizer)
        critic_channels = tuple(int(c) for c in critic_channels)  # plain data in the checkpoint
        self.save_hyperparameters(ignore=["vocabulary", "optimizer"])
        if critic_type not in CRITIC_TYPES:
            raise ValueError(f"critic_type must be one of {CRITIC_TYPES}, got {critic_type!r}")
        if critic_steps < 1 or decoder_lr < 0:
            raise ValueError(f"need critic_steps >= 1 and decoder_lr >= 0; got {critic_steps}, {decoder_lr}")
        self.critic_steps = critic_steps
        self.gradient_penalty_weight = gradient_penalty_weight
        self.decoder_lr = decoder_lr
        self.threshold = threshold
        self.autoencoder = ConvAutoencoder(self.vocab_size)
        self.generator = LatentGenerator(noise_dim, self.autoencoder.latent_shape)
        self.critic = (ConvCritic(self.vocab_size, critic_channels) if critic_type == "conv"
                       else MLPCritic(self.vocab_size))

    # -- pieces -------------------------------------------------------------------------------

    def reconstruction_loss(self, rows: Tensor) -> Tensor:
        """BCE of the autoencoder's reconstruction, summed over codes, mean over patients."""
        logits = self.autoencoder(rows)
        return F.binary_cross_entropy_with_logits(logits, rows, reduction="none").sum(dim=1).mean()

    # -- training -----------------------------------------------------------------------------

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("CorGAN needs an `optimizer` (a _partial_ config node)")
        autoencoder = self.optimizer_factory(params=self.autoencoder.parameters())
        critic = self.optimizer_factory(params=self.critic.parameters())
        generator_groups = [{"params": list(self.generator.parameters())}]
        if self.decoder_lr > 0:
            generator_groups.append({"params": list(self.autoencoder.decoder.parameters()), "lr": self.decoder_lr})
        generator = self.optimizer_factory(params=generator_groups)
        return [autoencoder, critic, generator]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        rows = self.patient_matrix(batch)
        n = rows.shape[0]
        if n < 2:
            return  # see the module docstring: batch norm needs two records
        autoencoder_opt, critic_opt, generator_opt = self.optimizers()
        if self.in_pretraining():
            self.autoencoder_step(rows, autoencoder_opt)
            return

        for _ in range(self.critic_steps):
            with torch.no_grad():
                fake = self.decode_noise(self.noise(n))
            real_score, fake_score = self.critic(rows).mean(), self.critic(fake).mean()
            penalty = gradient_penalty(self.critic, rows, fake)
            critic_loss = fake_score - real_score + self.gradient_penalty_weight * penalty
            self.manual_step(critic_opt, critic_loss)

        self.toggle_optimizer(generator_opt)  # the critic (and the encoder) get no gradient
        generator_loss = -self.critic(self.decode_noise(self.noise(n))).mean()
        self.manual_step(generator_opt, generator_loss)
        self.untoggle_optimizer(generator_opt)

        logged = {"critic_loss": critic_loss, "gradient_penalty": penalty,
                  "wasserstein_estimate": real_score - fake_score, "generator_loss": generator_loss}
        for name, value in logged.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, prog_bar=name == "generator_loss",
                     batch_size=n)
        return

    # -- generation (§2.3) --------------------------------------------------------------------

    def sample_codes(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        probabilities = self.decode_noise(self.noise(n, generator))
        return self.matrix_codes(probabilities >= self.threshold)
