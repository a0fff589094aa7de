"""Four GAN generators and their discriminators in visit-embedding space (seed 000, §4.5, Table 4).

Seed 000 fits "current GAN-based EHR generation methods [5, 40, 17, 9]" — ehrGAN (Che et al.,
ICDM 2017), GcGAN (Yang et al., BIBM 2019), actGAN (Koivu et al., JAMIA 2020) and medGAN
(Choi et al., MLHC 2017) — into MedDiffusion's framework in place of the diffusion module:
each generator turns visit embeddings into synthetic visit embeddings ``e'_k``, which the risk
backbone re-encodes and classifies (:class:`~ehrlab.models.risk.adversarial.GANAugmentedPredictor`
owns that loop, the step-wise attention of the "+Att" rows and the two optimisers).

Every generator here is a :class:`VisitGenerator`: ``generator(x, visit_mask, labels, rng)``
maps the generator input ``x_k`` — ``e_k``, or ``ê_k`` (Eq. 3.11) with +Att — to ``e'_k``
[B, V, visit_dim], zero at padding visits. Every discriminator maps visit embeddings and a
visit mask to one real-vs-synthetic logit per visit [B, V]; visits outside the mask are
ignored (the losses mask them out, and nothing a discriminator computes for an included
visit reads an excluded one, except medGAN's minibatch average, which is over included visits
only).

What the four original papers generate (multi-hot code vectors of a patient, or a patient's
90-day windows) is not what Table 4 generates (d_e-wide visit embeddings of a patient who
has a label), so every class documents where fitting into visit-embedding space forced a
choice. Two choices are shared:

- **Conditioning.** In the MedDiffusion authors' code (``models/ALL_GAN.py``) only ehrGAN's
  generator reads the real visit; their medGAN, actGAN and GcGAN generators decode pure noise
  ``z ~ N(0, I)`` (shaped like the encoded visits), so their synthetic sequence is unrelated
  to the patient whose label its synthetic CE (Eq. 3.14) uses, and their "+Att" changes only
  the discriminator's real samples. Here every generator reads ``x_k``: the paper's §4.5 says
  "each GAN generator utilizes visit embeddings e_k for synthetic visits", and +Att must reach
  the generator. Each paper's noise stays the source of variation (how it enters is per GAN).
- **Per visit.** The authors' generators act per visit in a latent of d_e/4 (64 for
  d_e = 256) between a d_e → d_e/2 → d_e/4 encoder and its mirror decoder, except GcGAN's,
  which mixes visit positions with a 1×1 convolution over a fixed 50 + 1 rows. We keep the
  per-visit form (vectorised over all visits at once) and give GcGAN a position-free, causal
  mixing instead (see :class:`GcGANGenerator`), so e'_k never depends on a later visit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ActGANGenerator",
    "EHRGANGenerator",
    "GcGANGenerator",
    "MedGANGenerator",
    "TemporalConvDiscriminator",
    "VisitDiscriminator",
    "VisitGenerator",
    "masked_mean",
]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` (broadcast to ``values``) is True; 0
    if there are none (so a batch without a selected patient contributes a zero loss)."""
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _keep(visit_mask: Tensor, like: Tensor) -> Tensor:
    return visit_mask.unsqueeze(-1).to(like.dtype)


def _noise(shape, like: Tensor, rng: torch.Generator | None) -> Tensor:
    return torch.randn(shape, device=like.device, dtype=like.dtype, generator=rng)


def _masked_batch_norm(norm: nn.BatchNorm1d, values: Tensor, visit_mask: Tensor) -> Tensor:
    """Batch norm over the real visits only (padding visits neither enter nor move the
    statistics); padding positions pass through unchanged (they are zeroed later)."""
    rows = values[visit_mask]
    if norm.training and rows.shape[0] < 2:
        # BatchNorm cannot estimate a variance from one row: use the running statistics.
        normed = F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    else:
        normed = norm(rows)
    return values.masked_scatter(visit_mask.unsqueeze(-1), normed)


def _autoencoder_halves(visit_dim: int, dropout: float) -> tuple[nn.Sequential, nn.Sequential]:
    """The authors' encoder d_e → d_e/2 → d_e/4 (Linear, dropout, ReLU) and decoder back
    (Linear, ReLU, Linear), shared by their four GANs; kept for ehrGAN and GcGAN."""
    hidden, latent = max(visit_dim // 2, 1), max(visit_dim // 4, 1)
    encoder = nn.Sequential(nn.Linear(visit_dim, hidden), nn.Dropout(dropout), nn.ReLU(),
                            nn.Linear(hidden, latent), nn.Dropout(dropout), nn.ReLU())
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, visit_dim))
    return encoder, decoder


class VisitGenerator(nn.Module):
    """What :class:`~ehrlab.models.risk.adversarial.GANAugmentedPredictor` asks of a generator.

    ``forward(inputs, visit_mask, labels, rng)`` → ``e'`` [B, V, visit_dim], zero at padding.
    ``synthetic_patients(labels)`` says which patients get a synthetic sequence (all but for
    actGAN). ``auxiliary_losses(real_visits, visit_mask)`` are the generator's own loss terms
    on the real visit embeddings (medGAN's reconstruction), weighted by ``loss_weights``.
    """

    def __init__(self, visit_dim: int):
        super().__init__()
        self.visit_dim = visit_dim
        self.loss_weights: dict[str, float] = {}

    def forward(self, inputs: Tensor, visit_mask: Tensor, labels: Tensor,
                rng: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def synthetic_patients(self, labels: Tensor) -> Tensor:
        return torch.ones_like(labels, dtype=torch.bool)

    def auxiliary_losses(self, real_visits: Tensor, visit_mask: Tensor) -> dict[str, Tensor]:
        return {}


class EHRGANGenerator(VisitGenerator):
    """ehrGAN's generator (Che et al., "Boosting Deep Learning Risk Prediction with Generative
    Adversarial Networks for Electronic Health Records", ICDM 2017, §III): an encoder–decoder
    that encodes a real patient, replaces part of the code with noise and decodes a synthetic
    patient close to it: ``h = Enc(x)``, ``h̃ = m ⊙ z + (1 − m) ⊙ h`` with ``z ~ N(0, I)`` and a
    random binary mask ``m``, ``x̃ = Dec(h̃)``.

    Fitting into visit-embedding space:

    - The paper's encoder and decoder are CNNs over the patient's 90-day-window × code matrix;
      here they are the MedDiffusion authors' per-visit MLPs d_e → d_e/2 → d_e/4 and back
      (``models/ALL_GAN.py``), applied to every visit embedding at once.
    - ``m`` is drawn per latent unit with ``P(m = 1) = replace_probability`` = 0.5: the
      authors' ``z < m`` with their default m = 0 replaces each unit with probability ½.
    - The authors insert their medGAN-style residual latent block between encoder and decoder
      for every GAN; ehrGAN's paper has none, so this generator has none either.
    """

    def __init__(self, visit_dim: int, replace_probability: float = 0.5, dropout: float = 0.1):
        super().__init__(visit_dim)
        if not 0.0 <= replace_probability <= 1.0:
            raise ValueError(f"replace_probability must be in [0, 1], got {replace_probability}")
        self.replace_probability = replace_probability
        self.encoder, self.decoder = _autoencoder_halves(visit_dim, dropout)

    def forward(self, inputs, visit_mask, labels, rng=None):
        latent = self.encoder(inputs)
        noise = _noise(latent.shape, latent, rng)
        replace = torch.rand(latent.shape, device=latent.device, generator=rng) < self.replace_probability
        return self.decoder(torch.where(replace, noise, latent)) * _keep(visit_mask, inputs)


class _GroupMixing(nn.Module):
    """One cross-group layer of :class:`GcGANGenerator`: visit row k reads itself, the mean of
    the patient's visit rows 1..k and the label row; the label row (if updated) reads itself."""

    def __init__(self, in_dim: int, out_dim: int, update_label: bool):
        super().__init__()
        self.visits = nn.Linear(3 * in_dim, out_dim)
        self.label = nn.Linear(in_dim, out_dim) if update_label else None

    def forward(self, visit_rows: Tensor, label_row: Tensor, visit_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        keep = _keep(visit_mask, visit_rows)
        counts = keep.cumsum(dim=1).clamp(min=1.0)
        prefix_mean = (visit_rows * keep).cumsum(dim=1) / counts
        label = label_row.unsqueeze(1).expand_as(visit_rows)
        mixed_visits = torch.relu(self.visits(torch.cat([visit_rows, prefix_mean, label], dim=-1)))
        mixed_label = torch.relu(self.label(label_row)) if self.label is not None else None
        return mixed_visits, mixed_label


class GcGANGenerator(VisitGenerator):
    """GcGAN's generator (Yang et al., "Grouped Correlational Generative Adversarial Networks
    for Discrete Electronic Health Records", IEEE BIBM 2019): the record and its label are
    generated together as correlated groups, by a fully connected generator whose layers
    alternate within-group transforms with cross-group mixing and reuse earlier layers'
    outputs through concatenated shortcuts.

    As the MedDiffusion authors fit it (``models/ALL_GAN.py``: ``GcGAN``, ``FCN_generator``):
    the label is embedded (d_e wide) and appended to the patient's visits as one more row,
    all rows go through the shared encoder d_e → d_e/2 → d_e/4, and in the latent
    ``orange = L₁(gray)``, ``brown = Mix([gray; orange])``, ``blue = L₂(brown)``,
    ``red = Mix([blue; brown; gray])``, ``out = L₃(red)``, decoded per row.

    Fitting into visit-embedding space (and into variable-length batches):

    - The authors' ``Mix`` is a 1×1 convolution whose channels are the 50 visit positions +
      the label row: weights tied to absolute positions and every visit mixed with every
      other, later ones included. Here a visit row k mixes itself, the mean of the patient's
      real visit rows 1..k and the label row (:class:`_GroupMixing`, ReLU after each mix):
      position-free, padding-free and causal, so e'_k depends on visits 1..k and the label.
    - The generator is conditioned on the real label (the authors encode ``[x; y]`` too) and
      on the real visits: ``gray = Enc([x; emb(y)]) + z``, ``z ~ N(0, I)``. The paper's
      generator also emits a label; the authors decode one and discard it, and here the
      synthetic sequence carries the real label that conditioned it, so no label is decoded.
    - The label row is updated by the first mix only (the second mix's label output would
      feed nothing).
    """

    def __init__(self, visit_dim: int, dropout: float = 0.1, n_labels: int = 2):
        super().__init__(visit_dim)
        self.encoder, self.decoder = _autoencoder_halves(visit_dim, dropout)
        latent = max(visit_dim // 4, 1)
        self.label_embedding = nn.Embedding(n_labels, visit_dim)
        self.transform_1 = nn.Linear(latent, latent)  # orange
        self.mix_1 = _GroupMixing(2 * latent, latent, update_label=True)  # brown
        self.transform_2 = nn.Linear(latent, latent)  # blue
        self.mix_2 = _GroupMixing(3 * latent, latent, update_label=False)  # red
        self.output = nn.Linear(latent, latent)

    def forward(self, inputs, visit_mask, labels, rng=None):
        rows = self.encoder(torch.cat([inputs, self.label_embedding(labels).unsqueeze(1)], dim=1))
        rows = rows + _noise(rows.shape, rows, rng)
        gray_visits, gray_label = rows[:, :-1], rows[:, -1]
        orange_visits, orange_label = self.transform_1(gray_visits), self.transform_1(gray_label)
        brown_visits, brown_label = self.mix_1(torch.cat([gray_visits, orange_visits], dim=-1),
                                               torch.cat([gray_label, orange_label], dim=-1), visit_mask)
        blue_visits, blue_label = self.transform_2(brown_visits), self.transform_2(brown_label)
        red_visits, _ = self.mix_2(torch.cat([blue_visits, brown_visits, gray_visits], dim=-1),
                                   torch.cat([blue_label, brown_label, gray_label], dim=-1), visit_mask)
        return self.decoder(self.output(red_visits)) * _keep(visit_mask, inputs)


_OUTPUT_ACTIVATIONS = {"identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}


class ActGANGenerator(VisitGenerator):
    """actGAN's generator (Koivu et al., "Synthetic minority oversampling of vital statistics
    data with generative adversarial networks", JAMIA 2020): a GAN trained on the minority
    class only, used to oversample it, whose generator ends in an *activation-specific*
    output layer (each output variable gets the activation of its type).

    Fitting into visit-embedding space:

    - Minority oversampling: only patients of ``minority_class`` (1, the positive class, the
      rarer one in seed 000's cohorts) get a synthetic sequence; the synthetic CE and both
      adversarial losses are averaged over them (:meth:`synthetic_patients`). The authors'
      later code masks negatives the same way.
    - The generator is an MLP from ``[x_k; z_k]`` (``z ~ N(0, I_{noise_dim})``) through
      ``n_layers`` ReLU layers of ``hidden_dim`` to d_e; the paper's generator reads noise
      only and its sizes were tuned by Bayesian optimisation, so noise_dim 64 (the authors'
      latent width) and two layers of 128 are our choice.
    - A visit embedding has one variable type (continuous, unbounded for most backbones), so
      the activation-specific output layer reduces to one activation, ``identity`` by default
      (``relu``/``tanh`` for backbones whose e_k lives in that range).
    """

    def __init__(self, visit_dim: int, noise_dim: int = 64, hidden_dim: int = 128, n_layers: int = 2,
                 minority_class: int = 1, output_activation: str = "identity", dropout: float = 0.0):
        super().__init__(visit_dim)
        if output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {sorted(_OUTPUT_ACTIVATIONS)}, got {output_activation!r}")
        self.noise_dim = noise_dim
        self.minority_class = minority_class
        layers: list[nn.Module] = []
        width = visit_dim + noise_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers += [nn.Linear(width, visit_dim), _OUTPUT_ACTIVATIONS[output_activation]()]
        self.network = nn.Sequential(*layers)

    def synthetic_patients(self, labels: Tensor) -> Tensor:
        return labels == self.minority_class

    def forward(self, inputs, visit_mask, labels, rng=None):
        noise = _noise((*inputs.shape[:-1], self.noise_dim), inputs, rng)
        return self.network(torch.cat([inputs, noise], dim=-1)) * _keep(visit_mask, inputs)


class MedGANGenerator(VisitGenerator):
    """medGAN's generator (Choi et al., "Generating Multi-label Discrete Patient Records using
    Generative Adversarial Networks", MLHC 2017, §3): an autoencoder (Enc, Dec) learns the
    data, and the generator G maps a random code to the autoencoder's latent through
    shortcut layers with batch norm, ``u ← u + act(BN(W u))`` (ReLU; tanh for the last), its
    output decoded by Dec; Dec is fine-tuned by the adversarial loss.

    Fitting into visit-embedding space:

    - Enc is ``tanh(W x + b)`` to ``latent_dim`` = 128 (the paper's code size) and Dec a
      linear map back: visit embeddings are real-valued, so the paper's sigmoid (binary) or
      ReLU (count) output gives way to a linear one.
    - The paper pretrains the autoencoder (100 epochs, MSE for counts) before the GAN; here
      it is trained jointly: ``reconstruction_loss = mean ‖Dec(Enc(e_k)) − e_k‖² / mean ‖e_k‖²``
      (means over real visits and dimensions; relative, so that its weight and its share of
      the clipped gradient norm do not depend on the backbone's embedding scale; on the
      detached real e_k, so it shapes the autoencoder and not the backbone), added to the
      classifier side's loss with ``reconstruction_weight`` = 1.
    - G's input is ``Enc(x_k) + z``, ``z ~ N(0, I)``: the paper's noise prior centred on the
      visit's own code instead of at 0, so that e'_k belongs to the patient (see the module
      docstring); ``n_layers`` = 2 shortcut layers of 128 as in the paper.
    - Batch norm is over the batch's real visits only (padding visits do not enter the
      statistics); in ``eval()`` it uses the running statistics.
    - The paper's discriminator with minibatch averaging is
      ``VisitDiscriminator(hidden_dims=(256, 128), minibatch_averaging=True)``.
    """

    def __init__(self, visit_dim: int, latent_dim: int = 128, n_layers: int = 2, reconstruction_weight: float = 1.0):
        super().__init__(visit_dim)
        self.encoder = nn.Sequential(nn.Linear(visit_dim, latent_dim), nn.Tanh())
        self.decoder = nn.Linear(latent_dim, visit_dim)
        self.layers = nn.ModuleList([nn.Linear(latent_dim, latent_dim, bias=False) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.BatchNorm1d(latent_dim) for _ in range(n_layers)])
        self.loss_weights = {"reconstruction_loss": reconstruction_weight}

    def generate_latent(self, codes: Tensor, visit_mask: Tensor) -> Tensor:
        """G: the shortcut layers with batch norm over real visits."""
        for index, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            activation = torch.tanh if index == len(self.layers) - 1 else torch.relu
            codes = codes + activation(_masked_batch_norm(norm, layer(codes), visit_mask))
        return codes

    def forward(self, inputs, visit_mask, labels, rng=None):
        codes = self.encoder(inputs)
        codes = codes + _noise(codes.shape, codes, rng)
        return self.decoder(self.generate_latent(codes, visit_mask)) * _keep(visit_mask, inputs)

    def auxiliary_losses(self, real_visits: Tensor, visit_mask: Tensor) -> dict[str, Tensor]:
        target = real_visits.detach()
        keep = visit_mask.unsqueeze(-1)
        squared_error = masked_mean((self.decoder(self.encoder(target)) - target).pow(2), keep)
        # Relative to the embeddings' mean square: the loss (and its share of the clipped
        # gradient norm) does not depend on the backbone's embedding scale.
        return {"reconstruction_loss": squared_error / masked_mean(target.pow(2), keep).clamp(min=1e-8)}


class VisitDiscriminator(nn.Module):
    """A per-visit MLP discriminator: one real-vs-synthetic logit per visit embedding.

    ``hidden_dims=()`` is the MedDiffusion authors' discriminator for all four GANs (one
    linear layer, ``models/ALL_GAN.py``); medGAN's is ``hidden_dims=(256, 128)`` with
    ``minibatch_averaging=True`` (Choi et al., MLHC 2017, §3.2: each sample is concatenated
    with the mean of its minibatch, which lets the discriminator see mode collapse). The
    minibatch here is the set of included visits passed in (real ones, or synthetic ones).
    """

    def __init__(self, visit_dim: int, hidden_dims: tuple[int, ...] | list[int] = (),
                 minibatch_averaging: bool = False, dropout: float = 0.0):
        super().__init__()
        self.minibatch_averaging = minibatch_averaging
        layers: list[nn.Module] = []
        width = 2 * visit_dim if minibatch_averaging else visit_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.network = nn.Sequential(*layers)

    def forward(self, visits: Tensor, visit_mask: Tensor) -> Tensor:
        if self.minibatch_averaging:
            keep = _keep(visit_mask, visits)
            average = (visits * keep).sum(dim=(0, 1)) / keep.sum().clamp(min=1.0)
            visits = torch.cat([visits, average.expand_as(visits)], dim=-1)
        return self.network(visits).squeeze(-1)


class TemporalConvDiscriminator(nn.Module):
    """ehrGAN's discriminator (Che et al., ICDM 2017): a CNN over the patient's time axis.

    Here a causal 1-D convolution over the visit embeddings (``kernel_size`` visits: the
    visit and the ones before it), ReLU, and a linear read-out give one logit per visit. The
    paper's CNN pools its feature maps into one score per patient; per-visit scores keep the
    discriminator's loss on the same visits as the other GANs'. Causal padding on the left
    means padding visits (always after the real ones) never reach a real visit's logit;
    excluded visits are zeroed before the convolution.
    """

    def __init__(self, visit_dim: int, channels: int = 64, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.convolution = nn.Conv1d(visit_dim, channels, kernel_size)
        self.output = nn.Linear(channels, 1)

    def forward(self, visits: Tensor, visit_mask: Tensor) -> Tensor:
        series = (visits * _keep(visit_mask, visits)).transpose(1, 2)
        features = torch.relu(self.convolution(F.pad(series, (self.kernel_size - 1, 0))))
        return self.output(features.transpose(1, 2)).squeeze(-1)
