"""Weak geometric augmentation of chest X-rays with torch ops (seed 004 §3.4, Appendix B.2).

EHRXDiff_w_null's no-change samples pair a previous image with a slightly moved copy of
itself: B.2 applies "random rotation within (-10, +10) degrees and random scaling with factors
from 0.9 to 1.1", which simulates the patient's posture between two exposures while keeping
every finding (the authors use torchvision's ``RandomAffine(degrees=10, scale=(0.9, 1.1))``).
torchvision does not import with this project's CPU torch (REFERENCES.md, environment notes),
so the same transformation is built here with ``affine_grid`` / ``grid_sample``: one rotation
angle and one isotropic scale per image, about the image centre, bilinear.

Decision: the area the moved image no longer covers repeats the border pixels
(``padding_mode="border"``) rather than torchvision's black fill: a black wedge at the corners
is an artefact no real radiograph has, and the model would learn to draw it on no-change pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ehrlab.errors import UserInputError


def affine_matrices(angles: Tensor, scales: Tensor) -> Tensor:
    """``affine_grid`` matrices [B, 2, 3] that rotate each image by ``angles`` (radians; the
    sign only sets the direction) and scale it by ``scales`` (> 1 enlarges) about its centre.

    ``affine_grid`` maps output coordinates to the input coordinates sampled there, so the
    matrix is the inverse transformation: rotation by −angle and scaling by 1 / scale.
    """
    cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, sin, zero], dim=-1), torch.stack([-sin, cos, zero], dim=-1)], dim=1)


def random_affine(images: Tensor, degrees: float, scale: Sequence[float],
                  generator: torch.Generator | None = None) -> Tensor:
    """`images` [B, C, H, W], each rotated by an angle drawn uniformly from [−degrees, degrees]
    and scaled by a factor drawn uniformly from ``scale = (low, high)`` (B.2: 10°, (0.9, 1.1)).

    The draws come from `generator` (a CPU generator, or None for torch's global one); border
    pixels fill the uncovered area (see the module's note). Values stay within the input's range
    (bilinear interpolation of in-range pixels).
    """
    low, high = (float(s) for s in scale)
    if degrees < 0 or not 0 < low <= high:
        raise UserInputError(f"augmentation: rotation degrees={degrees} must be ≥ 0 and the scale range "
                             f"({low}, {high}) positive with low ≤ high.")
    n = images.shape[0]
    draws = torch.rand(2, n, generator=generator, dtype=torch.float64)
    angles = (draws[0] * 2.0 - 1.0) * math.radians(degrees)
    scales = low + draws[1] * (high - low)
    theta = affine_matrices(angles, scales).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
