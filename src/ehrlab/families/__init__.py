"""Model families and what the runner does with each once a model is trained.

A model names its family (``family = "risk"`` on `RiskPredictor`, ``"generation"`` on
`Generator`, ``"cxr_forecast"`` on `ImageForecaster`); `family_of` returns the `Family`
that knows which task the model learns from, which stages apply to it and what happens
after training (test and analyse; generate and evaluate; forecast chest X-rays and
evaluate them). The pipeline asks the family at each stage and never branches on model
classes: a new family is a new module here, added to `FAMILIES`.
"""

from __future__ import annotations

from ehrlab.families.base import Family
from ehrlab.families.cxr import CXR_FORECAST
from ehrlab.families.generation import GENERATION
from ehrlab.families.risk import RISK

FAMILIES: dict[str, Family] = {family.name: family for family in (RISK, GENERATION, CXR_FORECAST)}


def family_of(model) -> Family:
    """The family a model (or model class) declares through its ``family`` attribute."""
    name = getattr(model, "family", None)
    if name not in FAMILIES:
        model_name = model.__name__ if isinstance(model, type) else type(model).__name__
        raise TypeError(f"{model_name} declares no known model family (family={name!r}); "
                        f"set its `family` to one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "family_of"]
