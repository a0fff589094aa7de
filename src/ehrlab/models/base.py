"""What every ehrlab model declares to the runner, whatever its family.

The runner (``ehrlab.pipeline``) never hard-codes model specifics: it reads the monitored
metric and its mode from the model and lets the model build its own optimisers (manual
optimisation included, for GANs); each family's base class (``models/risk/base.py``,
``models/generative/base.py``) fixes the rest of its contract.

Every model is built as ``instantiate(cfg.model, vocabulary=datamodule.vocabulary)``:
``vocabulary[i]`` is the code string of id ``i`` and id 0 is padding. The vocabulary and the
model's class are stored in every checkpoint so that a checkpoint can be checked against
the data and model it is loaded with (``ehrlab.checkpoints``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from ehrlab.checkpoints import MODEL_KEY, VOCABULARY_KEY, plain_data, qualified_name
from ehrlab.data.schema import PAD_CODE


class EHRModule(pl.LightningModule):
    """Base of every ehrlab LightningModule."""

    #: the model family (ehrlab.families): what the runner does with it after training
    family: str | None = None
    #: metric logged during validation that selects the best checkpoint
    monitor: str = "val/loss"
    #: "min" or "max"
    monitor_mode: str = "min"

    def __init__(self, vocabulary: list[str]):
        super().__init__()
        if not vocabulary or vocabulary[0] != PAD_CODE:
            raise ValueError(f"vocabulary must start with the padding entry {PAD_CODE!r}")
        self.vocabulary = list(vocabulary)

    @property
    def vocab_size(self) -> int:
        """Number of code ids, padding included (embedding tables have this many rows)."""
        return len(self.vocabulary)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data only, so that ehrlab can read its own checkpoints with a weights-only
        # load (ehrlab.checkpoints): the hyperparameters hold Hydra's partial factories.
        checkpoint[VOCABULARY_KEY] = list(self.vocabulary)
        checkpoint[MODEL_KEY] = qualified_name(type(self))
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_data(checkpoint["hyper_parameters"])
