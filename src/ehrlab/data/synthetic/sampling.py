"""Small numpy sampling helpers shared by the generator's steps (all vectorised, seeded by
the caller's `numpy.random.Generator`)."""

from __future__ import annotations

import numpy as np


def cumulative_probabilities(weights) -> np.ndarray:
    """Normalised cumulative sum of `weights`: the CDF that `searchsorted` draws from."""
    cumulative = np.cumsum(np.asarray(weights, dtype=float))
    return cumulative / cumulative[-1]


def draw_labels(rng: np.random.Generator, mix: dict[str, float], size: int) -> np.ndarray:
    """`size` labels drawn from `mix` (label -> relative weight)."""
    labels = np.array(list(mix))
    return labels[np.searchsorted(cumulative_probabilities(list(mix.values())), rng.random(size), side="right")]


def draw_codes(cumulative: np.ndarray, ids: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` entries of `ids` drawn with the CDF `cumulative`."""
    return ids[np.searchsorted(cumulative, rng.random(size), side="right").clip(max=len(ids) - 1)]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def negative_binomial(rng: np.random.Generator, mean, shape: float, size=None) -> np.ndarray:
    """Counts with the given mean and variance mean + mean²/shape (gamma-Poisson)."""
    mean = np.asarray(mean, dtype=float)
    return rng.poisson(rng.gamma(shape, np.maximum(mean, 0.0) / shape, size=size))


def segment_starts(n_visits: np.ndarray) -> np.ndarray:
    """Index of each patient's first visit in the flat visit arrays (patients in order)."""
    return np.concatenate([[0], np.cumsum(n_visits)[:-1]])
