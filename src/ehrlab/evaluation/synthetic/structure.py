"""Structure of a data set and of its code vocabulary (Appendix G.1, G.2, G.3–G.5, seed 002).

Table 12 (G.1): patients, visits, visits/patient, codes/visit (unique codes per visit,
averaged over visits), codes/patient (unique codes across a patient's record, averaged over
patients), unique codes.

Table 13 (G.2), synthetic against the real training vocabulary R and synthetic vocabulary S
(a code is in a vocabulary when its prevalence there is > 0):
- unique = |S|; coverage = |S ∩ R| / |R|; novel = |S ∖ R|; Jaccard = |S ∩ R| / |S ∪ R|
- KL(P‖Q) and JS(P, Q) of the prevalence *distributions* P = p / Σp, Q = q / Σq over R ∪ S,
  in nats (so 0 ≤ JS ≤ ln 2). Q is zero wherever a real code is never generated, which makes
  KL infinite; we add ε = 1e-6 to every entry of both vectors before normalising
  (additive smoothing; the paper does not say how it handles zeros). JS needs no smoothing
  and gets none.
- top-k overlap = |top-k(p) ∩ top-k(q)|, a count out of k (ties broken by code order).

Table 14 (G.5): the patient-level co-occurrence matrix over the 50 most prevalent real codes,
C_ij = fraction of patients having both code i and code j. Its diagonal is the prevalence,
already measured above, so we compare the off-diagonal part only (the diagonal is set to 0):
cosine similarity of the flattened matrices, and the Frobenius norm ‖C_real − C_syn‖_F.

Chapter prevalence (G.4): fraction of patients with at least one code in each chapter.

Every function takes optional patient weights (bootstrap resamples, see `bootstrap.py`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse

from ehrlab.evaluation.synthetic.prevalence import frequency_rank
from ehrlab.evaluation.synthetic.records import PatientRecords

KL_SMOOTHING = 1e-6
TOP_K = (10, 50)


def _ones(n: int, weights: np.ndarray | None) -> np.ndarray:
    return np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)


def dataset_statistics(records: PatientRecords, weights: np.ndarray | None = None) -> dict[str, float]:
    """Table 12's row for one data set; `weights` counts each patient (bootstrap)."""
    w = _ones(records.n_patients, weights)
    visit_weight = w[records.visit_patient]
    patients = w.sum()
    visits = visit_weight.sum()
    code_totals = records.patient_codes.T @ w
    return {
        "patients": float(patients),
        "visits": float(visits),
        "visits_per_patient": float(visits / patients),
        # elementwise, not `@`: a float @ int32 dot takes numpy's slow generic loop (20 ms at
        # MIMIC-III size) and a float dot a multithreaded BLAS, which stalls on a shared 2-core machine
        "codes_per_visit": float(np.sum(visit_weight * records.codes_per_visit) / visits),
        "codes_per_patient": float(np.sum(w * records.codes_per_patient) / patients),
        "unique_codes": float(np.count_nonzero(code_totals)),
    }


def count_distribution(values: np.ndarray, weights: np.ndarray | None = None) -> dict[int, float]:
    """Share of items with each count (e.g. visits per patient): {count: fraction}."""
    counts = np.bincount(values, weights=weights)
    shares = counts / counts.sum()
    return {int(k): float(shares[k]) for k in np.flatnonzero(counts)}


def vocabulary_overlap(real: np.ndarray, synthetic: np.ndarray, top_k=TOP_K) -> dict[str, float]:
    """Table 13 for prevalence vectors over the same codes."""
    in_real, in_synthetic = real > 0, synthetic > 0
    shared = np.count_nonzero(in_real & in_synthetic)
    union = np.count_nonzero(in_real | in_synthetic)
    result = {
        "unique_codes": float(np.count_nonzero(in_synthetic)),
        "coverage": shared / np.count_nonzero(in_real) if in_real.any() else math.nan,
        "novel_codes": float(np.count_nonzero(in_synthetic & ~in_real)),
        "jaccard": shared / union if union else math.nan,
        "kl": kl_divergence(real[in_real | in_synthetic], synthetic[in_real | in_synthetic]),
        "js": js_divergence(real, synthetic),
    }
    for k in top_k:
        result[f"top{k}_overlap"] = float(top_k_overlap(real, synthetic, k))
    return result


def kl_divergence(real: np.ndarray, synthetic: np.ndarray, smoothing: float = KL_SMOOTHING) -> float:
    """KL(P‖Q) in nats of the smoothed, normalised prevalence vectors."""
    p = real + smoothing
    q = synthetic + smoothing
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def js_divergence(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats of the normalised prevalence vectors (no smoothing)."""
    if real.sum() == 0 or synthetic.sum() == 0:
        return math.nan
    p, q = real / real.sum(), synthetic / synthetic.sum()
    m = (p + q) / 2

    def kl_to_m(x: np.ndarray) -> float:
        support = x > 0  # 0·log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[support] * np.log(x[support] / m[support])))

    return 0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)


def top_codes(prevalence: np.ndarray, k: int) -> np.ndarray:
    """Code ids of the k most prevalent codes (prevalence > 0; ties by code id)."""
    return frequency_rank(prevalence, np.flatnonzero(prevalence > 0))[:k]


def top_k_overlap(real: np.ndarray, synthetic: np.ndarray, k: int) -> int:
    return len(np.intersect1d(top_codes(real, k), top_codes(synthetic, k)))


def code_pair_incidence(patient_codes: sparse.spmatrix, codes: np.ndarray) -> sparse.csr_matrix:
    """(n_patients, k·k) 0/1: entry (i, a·k + b), a < b, says patient i has both codes[a] and codes[b].

    Built once per set, it turns the co-occurrence matrix under any patient weights into one
    sparse product (`cooccurrence_from_pairs`), which the bootstrap repeats a hundred times. A
    patient with r of the k codes has r(r − 1)/2 entries (r is a handful for the 50 most
    common codes); the matrix is symmetric, so the pairs a < b are enough.
    """
    columns = sparse.csr_matrix(patient_codes[:, codes], dtype=np.float64)
    columns.sum_duplicates()
    k = len(codes)
    per_patient = np.diff(columns.indptr)
    entry_patient = np.repeat(np.arange(columns.shape[0]), per_patient)  # patient of each stored code
    repeats = per_patient[entry_patient]  # each stored code meets every code of its patient
    first = np.repeat(columns.indices, repeats)
    second = columns.indices[columns.indptr[np.repeat(entry_patient, repeats)] + _positions_within(repeats)]
    pair_patient = np.repeat(entry_patient, repeats)
    keep = first < second
    return sparse.csr_matrix((np.ones(int(keep.sum())), (pair_patient[keep], first[keep] * k + second[keep])),
                             shape=(columns.shape[0], k * k))


def _positions_within(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., lengths[0]-1, 0, 1, ..., lengths[1]-1, ... (vectorised)."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


def cooccurrence_from_pairs(pairs: sparse.csr_matrix, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(k, k) fraction of patients having both codes, diagonal 0 (pairs only)."""
    w = _ones(pairs.shape[0], weights)
    upper = np.asarray(pairs.T @ w).reshape(k, k) / w.sum()
    return upper + upper.T


def cooccurrence(patient_codes: sparse.spmatrix, codes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(k, k) fraction of patients having both codes, diagonal set to 0 (pairs only)."""
    return cooccurrence_from_pairs(code_pair_incidence(patient_codes, codes), len(codes), weights)


def cooccurrence_similarity(real: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """Table 14: cosine similarity and Frobenius difference of two co-occurrence matrices."""
    norms = np.linalg.norm(real) * np.linalg.norm(synthetic)
    cosine = float(np.sum(real * synthetic) / norms) if norms > 0 else math.nan
    return {"cosine": cosine, "frobenius": float(np.linalg.norm(real - synthetic))}


def chapter_incidence(patient_codes: sparse.spmatrix, code_chapter: np.ndarray, n_chapters: int) -> sparse.csr_matrix:
    """(n_patients, n_chapters) 0/1: the patient has at least one code of the chapter."""
    code_to_chapter = sparse.csr_matrix(
        (np.ones(len(code_chapter)), (np.arange(len(code_chapter)), code_chapter)),
        shape=(len(code_chapter), n_chapters),
    )
    return sparse.csr_matrix((patient_codes @ code_to_chapter) > 0, dtype=np.float64)


def chapter_prevalence_from(has_chapter: sparse.csr_matrix, weights: np.ndarray | None = None) -> np.ndarray:
    """(n_chapters,) fraction of patients with at least one code in each chapter."""
    w = _ones(has_chapter.shape[0], weights)
    return np.asarray(has_chapter.T @ w).ravel() / w.sum()


def chapter_prevalence(
    patient_codes: sparse.spmatrix, code_chapter: np.ndarray, n_chapters: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """(n_chapters,) fraction of patients with at least one code in each chapter."""
    return chapter_prevalence_from(chapter_incidence(patient_codes, code_chapter, n_chapters), weights)
