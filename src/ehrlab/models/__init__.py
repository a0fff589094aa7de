"""Models, grouped by family; each family shares one base class that fixes its contract.

- :mod:`ehrlab.models.base`: what every model declares to the runner (:class:`EHRModule`).
- :mod:`ehrlab.models.risk`: risk predictors, ``forward(batch) -> logits``; a backbone
  (``nn.Module``) plus the thin :class:`~ehrlab.models.risk.base.RiskPredictor` wrapper.
- :mod:`ehrlab.models.generative`: synthetic-EHR generators, ``generate(n, seed)``.

Models are built by the runner as ``instantiate(cfg.model, vocabulary=...)`` from
``conf/model/<name>.yaml``.
"""
