"""Patient-level code prevalence and how well synthetic prevalence fits real (§3.1, seed 002).

Prevalence of code c in a data set of N patients: p_c = |{patients with c}| / N (§3.1).
The fit compares the real (ground truth) and synthetic vectors over the union of codes,
codes absent from one side counting as prevalence 0 there:

- R² = 1 − Σ_c (p_c − q_c)² / Σ_c (p_c − mean(p))²   (real p as ground truth; not symmetric)
- Pearson r between p and q
- RMSE = sqrt(mean_c (p_c − q_c)²)

Frequency deciles (Appendix G.2, Figure 8): the codes of the real vocabulary ranked by real
prevalence (most frequent first; ties broken by code order, for determinism) and cut into
ten equal-size buckets, Q1 the most frequent tenth, Q10 the rarest.

Long-tail ablation (§4 "Long Tailed Codes", Figure 3): at percentile P the kept codes are
the ceil(P% · |real vocabulary|) most prevalent real codes, i.e. the rarest (100 − P)% of
the vocabulary are dropped from both real and synthetic records. The paper's wording
("dropping top percentile codes") is ambiguous; we follow its reading that P = 99 "includes
rare long-tail codes" and P = 75 keeps only the head.

A metric whose denominator is zero (e.g. R² in a bucket where every real prevalence is
equal) is NaN, not a made-up number.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse

LONG_TAIL_PERCENTILES = (75.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0)


def prevalence(patient_codes: sparse.spmatrix, weights: np.ndarray | None = None) -> np.ndarray:
    """Fraction of patients having each code; `weights` counts each patient (bootstrap).

    weights may be (n_patients,) or (n_resamples, n_patients); the result then has the same
    leading shape.
    """
    if weights is None:
        return np.asarray(patient_codes.sum(axis=0)).ravel() / patient_codes.shape[0]
    weights = np.asarray(weights, dtype=np.float64)
    totals = patient_codes.T @ weights.T  # (n_codes,) or (n_codes, n_resamples)
    return (totals / weights.sum(axis=-1)).T


def r2_score(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Coefficient of determination with `real` as ground truth."""
    # equal real values (a rare bucket of codes seen once each) leave R² undefined; test the
    # spread, not the float sum of squares, which rounding makes tiny but nonzero
    if real.size == 0 or np.ptp(real) == 0:
        return math.nan
    total = float(np.sum((real - real.mean()) ** 2))
    return 1.0 - float(np.sum((real - synthetic) ** 2)) / total


def pearson(real: np.ndarray, synthetic: np.ndarray) -> float:
    if real.size < 2 or real.std() == 0.0 or synthetic.std() == 0.0:
        return math.nan
    return float(np.corrcoef(real, synthetic)[0, 1])


def rmse(real: np.ndarray, synthetic: np.ndarray) -> float:
    return float(np.sqrt(np.mean((real - synthetic) ** 2))) if real.size else math.nan


def prevalence_fit(real: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """R², Pearson and RMSE of two prevalence vectors over the same codes."""
    return {"r2": r2_score(real, synthetic), "pearson": pearson(real, synthetic), "rmse": rmse(real, synthetic)}


def frequency_rank(real: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Indices of `candidates` (code ids) ordered by real prevalence, most frequent first."""
    # lexsort sorts by the last key first: prevalence descending, then code id ascending
    return candidates[np.lexsort((candidates, -real[candidates]))]


def frequency_buckets(real: np.ndarray, n_buckets: int = 10) -> list[np.ndarray]:
    """Code ids of the real vocabulary (real prevalence > 0) in equal-size frequency buckets.

    Bucket 0 is Q1 (most frequent); sizes differ by at most one code (np.array_split).
    """
    ranked = frequency_rank(real, np.flatnonzero(real > 0))
    return np.array_split(ranked, n_buckets)


def long_tail_code_sets(real: np.ndarray, percentiles=LONG_TAIL_PERCENTILES) -> dict[float, np.ndarray]:
    """For each percentile P, the code ids of the ceil(P% of the real vocabulary) most prevalent codes."""
    ranked = frequency_rank(real, np.flatnonzero(real > 0))
    return {p: ranked[: math.ceil(len(ranked) * p / 100.0)] for p in percentiles}


def percentile_label(percentile: float) -> str:
    """Metric-name-safe label: 75 -> 'p75', 97.5 -> 'p97_5'."""
    text = f"{percentile:g}".replace(".", "_")
    return f"p{text}"
