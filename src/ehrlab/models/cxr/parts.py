"""Loading one part of a model (an autoencoder, a CLIP encoder) from another run's checkpoint.

EHRXDiff is assembled from parts trained in their own runs (``model=cxr_vae``,
``model=cxr_clip``; seed 004 §3.3, Appendix B.1), and the table classifiers start from the CLIP
table encoder (Appendix B.3). Each part's weights are the ``state_dict`` entries of that run's
checkpoint under one key prefix (``autoencoder.``, ``image_encoder.``, ``table_encoder.``), at
the top level or nested one module deeper (``clip.table_encoder.``). The checkpoint is read
weights-only (`ehrlab.checkpoints.read_checkpoint`); a file without the part, or with a part of
other sizes, is one UserInputError naming the file, the option and what does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import Tensor, nn

from ehrlab.checkpoints import read_checkpoint
from ehrlab.errors import UserInputError


def part_weights(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `state_dict` under ``prefix.`` (top level or nested), with the prefix removed."""
    marker = prefix + "."
    weights = {}
    for key, value in state_dict.items():
        if key.startswith(marker):
            weights[key[len(marker):]] = value
        elif (nested := key.find("." + marker)) >= 0:
            weights[key[nested + 1 + len(marker):]] = value
    return weights


def load_part(module: nn.Module, path: str | Path, prefix: str, role: str, hint: str,
              skip: Iterable[str] = (), checkpoint: dict | None = None) -> dict:
    """Load `module` from the weights under `prefix` in the checkpoint at `path`; returns the checkpoint.

    Args:
        module: the part to fill (all of its parameters and buffers must be in the file).
        path: an ehrlab (Lightning) checkpoint.
        prefix: the attribute name the part has in the model that trained it.
        role: the config option that named the file (for messages: ``model.clip_checkpoint``).
        hint: what to do when the part does not fit (which options must match the part's run).
        skip: name prefixes inside the part that are not loaded (a projection `module` lacks).
        checkpoint: the file's content when the caller has read it already (several parts
            from one file); `path` then only names it in messages.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path, role=role)
    skip = tuple(skip)
    weights = {name: value for name, value in part_weights(checkpoint["state_dict"], prefix).items()
               if not (skip and name.startswith(skip))}
    part = prefix.replace("_", " ")
    if not weights:
        raise UserInputError(f"{role}={path} holds no {part} weights (no state_dict key under '{prefix}.'): "
                             "give the checkpoint of the run that trained this part (its checkpoints/best.ckpt).")
    own = module.state_dict()
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    mismatched = sorted(k for k in own.keys() & weights.keys()
                        if not isinstance(weights[k], Tensor) or weights[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        problems = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected),
                                        ("other shapes", mismatched)) if keys]
        raise UserInputError(f"{role}={path}: its {part} does not fit this model's: {'; '.join(problems)}. {hint}")
    module.load_state_dict(weights)
    return checkpoint
