"""Checkpoints that hold data, never code, and the one way ehrlab reads them.

A checkpoint is a file a user hands to ehrlab (``ckpt_path=``, ``resume=``): it may be
truncated, empty, made for other data or another model, or crafted. So every checkpoint is
read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers
only and refuses anything that would run code, and each way a file can be wrong ends in one
message naming the file and the problem.

For that to work, what ehrlab writes must be plain data too: `plain_data` turns a model's
hyperparameters (which hold ``functools.partial`` optimiser and backbone factories built by
Hydra) into their config form, and the random-number state of a run is stored as tensors
and integers (`RandomStateCheckpoint`).
"""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ehrlab.errors import UserInputError

#: keys ehrlab adds to every checkpoint it writes
VOCABULARY_KEY = "ehrlab_vocabulary"
MODEL_KEY = "ehrlab_model"
#: the findings (label columns) a chest X-ray forecaster's checkpoint forecasts
FINDINGS_KEY = "ehrlab_findings"


def plain_data(value: Any) -> Any:
    """`value` as nested dicts, lists, strings and numbers: what a weights-only load accepts.

    A ``functools.partial`` becomes its Hydra config (``_target_``, ``_partial_``, keywords),
    a class or function its qualified name; anything else unknown its ``repr``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, functools.partial):
        return {"_target_": qualified_name(value.func), "_partial_": True,
                **{k: plain_data(v) for k, v in value.keywords.items()}}
    if isinstance(value, type) or callable(value):
        return qualified_name(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # lists, tuples, OmegaConf ListConfig
        return [plain_data(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return repr(value)


def qualified_name(thing: Any) -> str:
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', type(thing).__qualname__)}"


def read_checkpoint(path: str | Path, role: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at `path`, loaded without executing anything; a UserInputError naming
    the file and what is wrong with it otherwise. `role` is the option that named the file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{role}={path} does not exist (a run directory's checkpoints/best.ckpt or last.ckpt).")
    if path.stat().st_size == 0:
        raise UserInputError(f"{role}={path} is an empty file, not a checkpoint.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserInputError(
            f"{role}={path} holds Python objects other than tensors and plain data, and ehrlab never "
            f"executes code from a checkpoint: it was not written by this version of ehrlab, or it was "
            f"tampered with.") from error
    except Exception as error:  # torch's unpickler fails on garbage with whatever it trips on
        raise UserInputError(
            f"{role}={path} is not a readable checkpoint (truncated, corrupt or another kind of file): "
            f"{str(error).splitlines()[0]}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserInputError(f"{role}={path} is not a Lightning checkpoint: it has no model weights (state_dict).")
    return checkpoint


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint written by another kind of model, for another code vocabulary or
    other findings."""
    saved_model = checkpoint.get(MODEL_KEY)
    if saved_model is not None and saved_model != qualified_name(type(model)):
        raise UserInputError(
            f"checkpoint {path} holds a {saved_model.rsplit('.', 1)[-1]} model, not the "
            f"{type(model).__name__} of this run: choose the model= that trained it.")
    saved_vocabulary = checkpoint.get(VOCABULARY_KEY)
    vocabulary = getattr(model, "vocabulary", None)
    if saved_vocabulary is not None and vocabulary is not None and list(saved_vocabulary) != list(vocabulary):
        raise UserInputError(
            f"checkpoint {path} was trained on a different code vocabulary ({len(saved_vocabulary)} codes) "
            f"than the data of this run ({len(vocabulary)} codes): use the same data=, task= and data "
            "options as the run that trained it.")
    saved_findings = checkpoint.get(FINDINGS_KEY)
    findings = getattr(model, "findings", None)
    if saved_findings is not None and findings is not None and list(saved_findings) != list(findings):
        # Same number of findings but other names would load without a shape error.
        raise UserInputError(
            f"checkpoint {path} forecasts the findings {list(saved_findings)}, this run's data has {list(findings)}: "
            "use the same data= and task= options as the run that trained it.")


def load_model_weights(model: torch.nn.Module, path: str | Path, role: str = "ckpt_path") -> dict[str, Any]:
    """Load the weights of the checkpoint at `path` into `model`; returns the checkpoint."""
    checkpoint = read_checkpoint(path, role)
    check_checkpoint_fits(model, checkpoint, path)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # missing/unexpected keys or shape mismatches
        first_line = str(error).splitlines()[0]
        raise UserInputError(
            f"checkpoint {path} does not fit model {type(model).__name__} as configured (different sizes "
            f"or layers: use the model options of the run that trained it): {first_line}") from error
    return checkpoint


class RandomStateCheckpoint(Callback):
    """Stores the random state (Python, NumPy, torch CPU and CUDA) in every checkpoint and
    restores it on resume, so that a resumed run draws the same shuffles, dropout masks and
    diffusion noise as one that was never interrupted.

    The state is captured when the checkpoint is written, at the end of a training epoch;
    nothing between that point and the next epoch draws random numbers.
    """

    def state_dict(self) -> dict[str, Any]:
        version, mt_state, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        state = {
            "python": {"version": version, "state": list(mt_state), "gauss": gauss},
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["gauss"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
