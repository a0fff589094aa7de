"""Realism (seed 004 §4.3.3, Table 3): the Fréchet distance between features of the predicted
and of the true target images.

The paper takes the features from TorchXRayVision's DenseNet-121 (1,024-d, trained on several
chest X-ray sets). Those weights are a download and need torchvision, so by default the
features are the project's own evaluator's pooled penultimate layer (`evaluators.py`), and
the report says so: such an FID compares models on one task, not with the paper's numbers.

A user can give a TorchScript file of any feature network (``cxr_evaluation.fid_features``),
e.g. an exported TorchXRayVision DenseNet-121. It is called on float32 [B, 1, S, S] images in
[0, 1] at the task's image size and must return [B, K] (or [B, K, 1, 1]); whatever the
network needs (resizing to 224², TorchXRayVision's [-1024, 1024] scaling) belongs inside the
exported module. Loading TorchScript runs no pickled Python objects.

The distance itself is torchmetrics' `FrechetInceptionDistance` with the network as its
`feature` module (torchmetrics does the mean / covariance and matrix square root in float64).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ehrlab.errors import UserInputError
from ehrlab.evaluation.cxr.evaluators import CXREvaluator, as_float_images


class ScriptedFeatures(nn.Module):
    """A user's TorchScript feature network, flattened to [B, K]."""

    def __init__(self, script: torch.jit.ScriptModule, num_features: int):
        super().__init__()
        self.script = script
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.script(images).reshape(images.shape[0], -1)


def load_feature_file(path: str | Path, image_size: int) -> ScriptedFeatures:
    """A TorchScript feature network from `path`, probed once on a blank image of the task's
    size; a UserInputError says why a file cannot serve."""
    path = Path(path).expanduser()
    option = f"cxr_evaluation.fid_features={path}"
    if not path.is_file():
        raise UserInputError(f"{option}: no such file; give a TorchScript (torch.jit.save) feature network or "
                             "leave it empty to use the project's evaluator features")
    try:
        script = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # not a TorchScript archive (a state dict, a truncated file, ...)
        raise UserInputError(f"{option}: not a TorchScript module ({type(error).__name__}: {str(error)[:200]}); "
                             "export the feature network with torch.jit.script/trace and torch.jit.save") from error
    try:
        with torch.no_grad():
            probe = script(torch.zeros(2, 1, image_size, image_size))
    except Exception as error:
        raise UserInputError(f"{option}: the module fails on float images [B, 1, {image_size}, {image_size}] in "
                             f"[0, 1] ({type(error).__name__}: {str(error)[:200]}); wrap its own resizing and "
                             "scaling inside the exported module") from error
    if not isinstance(probe, torch.Tensor) or probe.ndim < 2 or probe.shape[0] != 2:
        raise UserInputError(f"{option}: the module must return a tensor [B, K]; it returned "
                             f"{type(probe).__name__} {tuple(getattr(probe, 'shape', ()))}")
    return ScriptedFeatures(script, int(probe[0].numel()))


def feature_network(evaluator: CXREvaluator, feature_file: str | Path | None = None) -> tuple[nn.Module, str]:
    """The FID feature module and a sentence for the report saying whose features they are."""
    if feature_file:
        module = load_feature_file(feature_file, evaluator.image_size)
        return module, f"FID features: the TorchScript network {feature_file} ({module.num_features}-d)."
    module = evaluator.feature_module()
    return module, (f"FID features: the project's own evaluator ({evaluator.config.get('architecture')}, "
                    f"{module.num_features}-d pooled penultimate layer), not the paper's TorchXRayVision "
                    "DenseNet-121: compare FIDs between models of this run's task, not with Table 3.")


class FrechetDistance:
    """FID of predicted image sets against one set of real images, whose features are
    extracted once (a model's several sampling seeds are compared with the same targets).

    Args: real (uint8 [N, S, S] or float in [0, 1]), the feature module, the image size, the
    images per feature batch.
    """

    def __init__(self, real: np.ndarray, features: nn.Module, image_size: int, batch_size: int = 128):
        self.image_size, self.batch_size = image_size, batch_size
        self.n_real = len(real)
        self.device = next(features.parameters(), torch.zeros(())).device
        # reset_real_features=False: reset() between predictions keeps the real statistics.
        self.metric = FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False,
                                               input_img_size=(1, image_size, image_size)).to(self.device)
        if self.n_real >= 2:
            self._update(real, is_real=True)

    @torch.no_grad()
    def _update(self, images: np.ndarray, is_real: bool) -> None:
        for start in range(0, len(images), self.batch_size):
            batch = as_float_images(images[start:start + self.batch_size], self.image_size).to(self.device)
            self.metric.update(batch, real=is_real)

    @torch.no_grad()
    def __call__(self, predicted: np.ndarray) -> float:
        """FID of `predicted` against the real images; NaN with fewer than two on either side."""
        if self.n_real < 2 or len(predicted) < 2:
            return math.nan
        self.metric.reset()
        self._update(predicted, is_real=False)
        # A tiny negative value is the matrix square root's rounding of an FID of zero.
        return max(float(self.metric.compute()), 0.0)


def frechet_distance(real: np.ndarray, predicted: np.ndarray, features: nn.Module, image_size: int,
                     batch_size: int = 128) -> float:
    """FID between two image sets (uint8 [N, S, S] or float in [0, 1]); NaN with fewer than two
    images on either side."""
    return FrechetDistance(real, features, image_size, batch_size)(predicted)
