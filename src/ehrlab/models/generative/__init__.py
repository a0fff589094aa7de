"""Synthetic-EHR generators: trained like any model, then ``generate(n, seed)`` a long table.

- ``base.Generator``: the contract every generator fulfils (see its module docstring).
- ``halo.HALO``: hierarchical visit/code autoregression (seed 002 §2.5, F.4), ``model=halo``
  (paper size) and ``model=halo_small`` (CPU size).
- ``gpt.GPTBaseline``: Hugging Face GPT-2 over flattened visits (seed 002 §2.6, F.5),
  ``model=gpt``.

Models are imported from their modules (``_target_`` paths), so importing this package does
not pull in transformers.
"""

from ehrlab.models.generative.base import Generator

__all__ = ["Generator"]
