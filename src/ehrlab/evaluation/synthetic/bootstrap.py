"""Bootstrapped 95% confidence intervals (seed 002, §4.1: "report bootstrapped confidence intervals").

Each resample draws every data set's patients with replacement, independently per set
(training, held-out, synthetic), and recomputes the metric. A resample is represented by
patient *weights* (how often each patient was drawn), so metrics that are sums over patients
(prevalence, Table 12, co-occurrence, chapters) are recomputed as weighted sums without
copying any records.

Interval: the *standard* bootstrap interval θ̂ ± z·sd(θ*) (Efron & Tibshirani, ch. 13),
z = 1.96 for 95%, not the percentile interval. Why: most metrics here measure a
*discrepancy* between two samples (R², RMSE, KL, coverage, unique codes, co-occurrence
cosine). A resample repeats some patients and drops about 37% of them, which adds sampling
noise to both sides and loses rare codes, so every resample looks systematically worse than
the full data; on MIMIC-like data the whole percentile interval of prevalence R² or unique
codes lay below the point estimate. We use the bootstrap for the spread only and centre the
interval on the estimate. Intervals are not clipped to a metric's range.

What stays fixed across resamples, by design (recomputing it would cost a full refit):
- code sets that define a metric: frequency deciles, long-tail cuts, the top-50 codes of the
  co-occurrence matrix (all taken from the full real data);
- nearest neighbours: NNAAR and MIA resample records with their full-data nearest-neighbour
  distances (the records are resampled, the neighbour search is not rerun);
- trained discriminators: their held-out predictions are resampled, the models are not
  retrained.
So the intervals measure the sampling variability of the evaluated records, not of model
training.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95


def resample_indices(n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws with replacement from range(n)."""
    return rng.integers(0, n, size=n)


def resample_weights(n: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of n items is drawn in one resample of size n."""
    return np.bincount(resample_indices(n, rng), minlength=n).astype(np.float64)


def standard_interval(estimate: float, samples, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """estimate ± z·sd of the finite bootstrap samples; NaN when fewer than two or no estimate."""
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or not math.isfinite(estimate):
        return math.nan, math.nan
    half_width = NormalDist().inv_cdf(0.5 + confidence / 2.0) * float(values.std(ddof=1))
    return estimate - half_width, estimate + half_width


def confidence_intervals(
    estimates: dict[str, float], replicates: list[dict[str, float]], confidence: float = CONFIDENCE
) -> dict[str, tuple[float, float]]:
    """Per metric of `estimates`, its standard interval over the resampled metric dicts."""
    if not replicates:
        return {}
    return {
        name: standard_interval(estimate, [replicate.get(name, math.nan) for replicate in replicates], confidence)
        for name, estimate in estimates.items()
    }
