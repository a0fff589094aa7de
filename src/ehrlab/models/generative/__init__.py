"""Synthetic-EHR generators: trained like any model, then ``generate(n, seed)`` a long table.

- ``base.Generator``: the contract every generator fulfils (see its module docstring);
  ``flat.FlatGenerator``: its base for generators of one row per patient.
- ``halo.HALO``: hierarchical visit/code autoregression (seed 002 §2.5, F.4), ``model=halo``
  (paper size), ``model=halo_small`` (CPU size), ``model=halo_labels`` (CCS phenotype labels).
- ``promptehr.PromptEHR``: demographic-prompted BART (seed 002 §2.4, F.3), ``model=promptehr``
  and ``model=promptehr_small``.
- ``gpt.GPTBaseline``: Hugging Face GPT-2 over flattened visits (seed 002 §2.6, F.5),
  ``model=gpt``.
- ``medgan.MedGAN``: binary and count mode (seed 002 §2.2, F.1), ``model=medgan`` and
  ``model=medgan_count``.
- ``corgan.CorGAN``: 8-layer convolutional autoencoder and WGAN-GP (seed 002 §2.3, F.2),
  ``model=corgan``.

Models are imported from their modules (``_target_`` paths), so importing this package does
not pull in transformers.
"""

from ehrlab.models.generative.base import Generator

__all__ = ["Generator"]
