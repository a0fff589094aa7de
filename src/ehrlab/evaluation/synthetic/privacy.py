"""Distance-based privacy attacks on synthetic records (§3.2, seed 002).

Patient distance (§3.2.1). Records a = (a_1 … a_n) and b = (b_1 … b_m), visits as code sets:

    d(a, b) = Σ_{i ≤ min(n,m)} |a_i Δ b_i| + Σ_{i > min(n,m)} |longer_i| + 1[n ≠ m]

Computed for all pairs at once: lay each record out as one 0/1 row whose block i holds visit
i ("visit-position-aligned multi-hot"). With S(a) = Σ_i |a_i| and a·b the row dot product
(= Σ_i |a_i ∩ b_i| over aligned visits),

    d(a, b) = S(a) + S(b) − 2 a·b + 1[n ≠ m]

because |a_i Δ b_i| = |a_i| + |b_i| − 2|a_i ∩ b_i| and an unmatched visit has nothing to
intersect. The dot products of all pairs are a matrix product, done in row chunks (2,048 rows,
fewer against more than 32,768 records) so that no block holds more than 256 MB. Within one
set (d(x, X∖x)) only the pairs i ≤ j are computed: the distance is symmetric. How the product is split:
a few hundred (position, code) columns — common codes in the first visits — are shared by
most pairs, so a sparse product would produce an almost dense result (92% of the pairs on
MIMIC-like data) slowly. Those "head" columns go through one dense float32 matrix product
that also carries the other terms (augmented rows [−2·head, 1, S(a) + 1, −onehot(n)] and
[head, S(b), 1, onehot(m)] give −2·a·b|head + S(a) + S(b) + 1 − 1[n = m]); the remaining
"tail" columns are a sparse product with a sparse result, subtracted twice. float32 holds
these small integers exactly. Each block's dense product runs on one BLAS thread (on a shared
2-core machine a multithreaded BLAS was up to 40× slower); instead, ``n_jobs`` threads compute
whole blocks side by side.

NNAAR (§3.2, after Yale et al. / HALO):
    AA_XS = ½ [ mean_{x∈X} 1(d(x,S) > d(x,X∖x)) + mean_{s∈S} 1(d(s,X) > d(s,S∖s)) ]
    NNAAR = AA_ES − AA_TS      (E held-out real, T training real, S synthetic)
Ties and zeros, exactly as implemented:
- d(x, X∖x) leaves out x itself only (its own row); another record identical to x is a
  neighbour at distance 0.
- Distances are integers, so ties d(x,S) = d(x,X∖x) are frequent (a quarter to a half of
  all records on MIMIC-like data). The indicator 1(>) taken literally counts a tie as 0,
  which drags AA far below its ideal 0.5 even when S is a fresh sample of the real
  distribution. We count a tie as ½ (the adversary guesses): 1(>) + ½·1(=), so AA = 0.5
  when S and X are exchangeable. A synthetic copy of a training record has d(t,S) = 0 and
  scores 0 (or ½ when t has an exact duplicate in T), which pushes AA_TS down and NNAAR up,
  as it should.
- A set with a single record has no d(x, X∖x); its term is NaN.

Membership inference (§3.2): n members drawn from training and n non-members from held-out
(n = the smaller set, or `max_records`); each record's distance to its nearest synthetic
record; the n records below the median are predicted members. Records tied at the median
are split by a seeded random order, so exactly half of the attack set is predicted member
(a strict "< median" rule would predict no member at all when more than half the
distances are 0, i.e. exactly when the training set was copied). Members are the positive
class for precision, recall and F1 (computed by `ehrlab.metrics`; an empty attack set gives
NaN). With equal numbers of members and non-members and exactly half called members,
precision = recall = F1 = accuracy; all four are reported, as in the paper, but they carry
one number.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from ehrlab import metrics
from ehrlab.evaluation.synthetic.records import PatientRecords

# rows of the left operand per dense block: at most 2,048, and at most BLOCK_ENTRIES distances
# (256 MB of float32) per block, so 150,000 columns take blocks of 447 rows
CHUNK_ROWS = 2048
BLOCK_ENTRIES = 2**26
# (position, code) columns computed densely; the rest have few enough pairs for a sparse product
DENSE_COLUMNS = 128
_FAR = np.float32(2**24)  # larger than any distance; stands in for d(x, x) when x is excluded


@dataclass
class AlignedRecords:
    """Visit-position-aligned multi-hot rows with the sizes the distance needs."""

    rows: sparse.csr_matrix  # (n_patients, n_positions * n_codes) 0/1 int32
    total_codes: np.ndarray  # S(a): Σ_i |a_i|
    n_visits: np.ndarray  # visits per patient


def align_visits(
    records: PatientRecords, n_positions: int, code_mask: np.ndarray | None = None
) -> AlignedRecords:
    """Lay out each patient's visits by position; `code_mask` keeps only some codes.

    n_positions must be at least the longest record of every set compared (column i·V + c
    means "code c in visit i").
    """
    visits = records.visit_codes
    if code_mask is not None:
        visits = visits[:, np.flatnonzero(code_mask)]
    visits = visits.tocoo()
    n_codes = visits.shape[1]
    columns = records.visit_position[visits.row] * n_codes + visits.col
    rows = sparse.csr_matrix(
        (np.ones(visits.nnz, dtype=np.int32), (records.visit_patient[visits.row], columns)),
        shape=(records.n_patients, n_positions * n_codes),
    )
    return AlignedRecords(rows=rows, total_codes=np.diff(rows.indptr), n_visits=records.visits_per_patient)


class _DistanceOperands:
    """What every block of d(a_i, b_j) is computed from, prepared once per pair of sets."""

    def __init__(self, a: AlignedRecords, b: AlignedRecords):
        column_pairs = np.diff(a.rows.tocsc().indptr) + np.diff(b.rows.tocsc().indptr)
        head = np.sort(np.argsort(-column_pairs, kind="stable")[:DENSE_COLUMNS])
        is_tail = np.ones(a.rows.shape[1], bool)
        is_tail[head] = False
        visit_counts = np.union1d(a.n_visits, b.n_visits)

        def visit_count_one_hot(n_visits: np.ndarray) -> np.ndarray:
            return (n_visits[:, None] == visit_counts[None, :]).astype(np.float32)

        self.left = np.hstack([-2 * a.rows[:, head].toarray(), np.ones((a.rows.shape[0], 1)), a.total_codes[:, None] + 1,
                               -visit_count_one_hot(a.n_visits)]).astype(np.float32)
        self.right = np.hstack([b.rows[:, head].toarray(), b.total_codes[:, None], np.ones((b.rows.shape[0], 1)),
                                visit_count_one_hot(b.n_visits)]).astype(np.float32)
        self.a_tail = a.rows[:, is_tail].tocsr()
        self.b_tail = b.rows[:, is_tail].tocsr()
        self.n_rows, self.n_columns = a.rows.shape[0], b.rows.shape[0]
        self.chunk_rows = max(1, min(CHUNK_ROWS, BLOCK_ENTRIES // max(1, self.n_columns)))

    def block(self, start: int, *, exclude_self: bool, upper: bool) -> np.ndarray:
        """float32 d(a_i, b_j) for the rows [start, start + chunk_rows); see `_blocks`."""
        stop = min(start + self.chunk_rows, self.n_rows)
        first_column = start if upper else 0
        block = self.left[start:stop] @ self.right[first_column:].T
        tail = (self.a_tail[start:stop] @ self.b_tail[first_column:].T).tocoo()
        block[tail.row, tail.col] -= 2 * tail.data
        if exclude_self:
            local = np.arange(stop - start)
            block[local, start - first_column + local] = _FAR
        return block


def _blocks(a: AlignedRecords, b: AlignedRecords, reduce, *, exclude_self: bool = False, upper: bool = False,
            workers: int = 1):
    """``reduce(start, block)`` of every row block of d(a_i, b_j), in row order.

    exclude_self (b is a): d(a_i, a_i) is made huge. upper (b is a): the block of rows
    [start, stop) holds the columns from ``start`` on only, i.e. the pairs i ≤ j; the distance
    is symmetric, so the pairs j < i were in an earlier block, as its columns.

    ``workers`` threads compute blocks at once (matrix products and reductions release the
    GIL), each with a single-threaded BLAS; at most ``workers`` blocks are alive at a time, and
    the results are reduced in row order.
    """
    operands = _DistanceOperands(a, b)
    starts = range(0, operands.n_rows, operands.chunk_rows)

    def reduced(start: int):
        return reduce(start, operands.block(start, exclude_self=exclude_self, upper=upper))

    with threadpool_limits(limits=1, user_api="blas"):
        if workers <= 1:
            yield from map(reduced, starts)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(reduced, starts)


def _workers(n_jobs: int) -> int:
    """joblib's convention: -1 = every core, -2 = all but one, n > 0 = n."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, n_jobs if n_jobs > 0 else cores + 1 + n_jobs))


def distance_matrix(a: AlignedRecords, b: AlignedRecords) -> np.ndarray:
    """All pairwise §3.2.1 distances as a dense int array (small inputs; tests, reports)."""
    return np.vstack(list(_blocks(a, b, lambda start, block: block))).astype(np.int64)


def nearest_distances(a: AlignedRecords, b: AlignedRecords, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(d(a_i, B) for each i, d(b_j, A) for each j): both nearest-neighbour distances of one pass."""
    a_to_b = np.empty(a.rows.shape[0], dtype=np.float32)
    b_to_a = np.full(b.rows.shape[0], _FAR, dtype=np.float32)
    minima = _blocks(a, b, lambda start, block: (start, block.min(axis=1), block.min(axis=0)), workers=_workers(n_jobs))
    for start, row_min, column_min in minima:
        a_to_b[start : start + len(row_min)] = row_min
        np.minimum(b_to_a, column_min, out=b_to_a)
    return a_to_b.astype(np.int64), b_to_a.astype(np.int64)


def nearest_other_distances(a: AlignedRecords, n_jobs: int = 1) -> np.ndarray:
    """d(a_i, A ∖ a_i): nearest other record of the same set (duplicates of a_i count).

    Half the pairs: each block covers the pairs i ≤ j of its rows (``upper``); its row minima
    serve the rows, its column minima the later rows (j > i) that the pair also belongs to.
    """
    n = a.rows.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    nearest = np.full(n, _FAR, dtype=np.float32)
    minima = _blocks(a, a, lambda start, block: (start, block.min(axis=1), block.min(axis=0)),
                     exclude_self=True, upper=True, workers=_workers(n_jobs))
    for start, row_min, column_min in minima:
        np.minimum(nearest[start : start + len(row_min)], row_min, out=nearest[start : start + len(row_min)])
        np.minimum(nearest[start:], column_min, out=nearest[start:])
    return nearest.astype(np.int64)


@dataclass
class PrivacyDistances:
    """The nearest-neighbour distances NNAAR and MIA are computed from."""

    train_to_synthetic: np.ndarray
    synthetic_to_train: np.ndarray
    test_to_synthetic: np.ndarray
    synthetic_to_test: np.ndarray
    train_to_train: np.ndarray
    test_to_test: np.ndarray
    synthetic_to_synthetic: np.ndarray


def privacy_distances(train: PatientRecords, test: PatientRecords, synthetic: PatientRecords,
                      n_jobs: int = 1) -> PrivacyDistances:
    """Every nearest-neighbour distance of NNAAR and the MIA, over the full sets (``n_jobs``
    threads, joblib's convention)."""
    n_positions = int(max(r.visits_per_patient.max() for r in (train, test, synthetic)))
    t, e, s = (align_visits(r, n_positions) for r in (train, test, synthetic))
    train_to_synthetic, synthetic_to_train = nearest_distances(t, s, n_jobs)
    test_to_synthetic, synthetic_to_test = nearest_distances(e, s, n_jobs)
    return PrivacyDistances(
        train_to_synthetic=train_to_synthetic,
        synthetic_to_train=synthetic_to_train,
        test_to_synthetic=test_to_synthetic,
        synthetic_to_test=synthetic_to_test,
        train_to_train=nearest_other_distances(t, n_jobs),
        test_to_test=nearest_other_distances(e, n_jobs),
        synthetic_to_synthetic=nearest_other_distances(s, n_jobs),
    )


def adversarial_accuracy(
    real_to_synthetic: np.ndarray, real_to_real: np.ndarray, synthetic_to_real: np.ndarray, synthetic_to_synthetic: np.ndarray
) -> float:
    """AA_XS of §3.2 from the four nearest-neighbour distance vectors (ties count ½)."""
    real_term = farther_scores(real_to_synthetic, real_to_real).mean()
    synthetic_term = farther_scores(synthetic_to_real, synthetic_to_synthetic).mean()
    return float(0.5 * (real_term + synthetic_term))


def farther_scores(to_other: np.ndarray, to_own: np.ndarray) -> np.ndarray:
    """Per record 1(d_other > d_own) + ½·1(d_other = d_own); AA averages these.

    NaN where d_own is undefined (a set of one record), so AA is NaN then too.
    """
    scores = (to_other > to_own) + 0.5 * (to_other == to_own)
    return np.where(np.isnan(to_own), np.nan, scores)


def nnaar(d: PrivacyDistances) -> dict[str, float]:
    """AA_ES, AA_TS and NNAAR = AA_ES − AA_TS."""
    aa_es = adversarial_accuracy(d.test_to_synthetic, d.test_to_test, d.synthetic_to_test, d.synthetic_to_synthetic)
    aa_ts = adversarial_accuracy(d.train_to_synthetic, d.train_to_train, d.synthetic_to_train, d.synthetic_to_synthetic)
    return {"aa_es": aa_es, "aa_ts": aa_ts, "nnaar": aa_es - aa_ts}


def attack_sample(n_train: int, n_test: int, rng: np.random.Generator, max_records: int | None = None):
    """Equal-size member (training) and non-member (held-out) row indices for the MIA."""
    n = min(n_train, n_test) if max_records is None else min(n_train, n_test, max_records)
    members = np.sort(rng.choice(n_train, size=n, replace=False))
    non_members = np.sort(rng.choice(n_test, size=n, replace=False))
    return members, non_members


def membership_inference(
    member_distances: np.ndarray, non_member_distances: np.ndarray, tie_order: np.ndarray
) -> dict[str, float]:
    """Median-threshold attack: the lower half by distance (ties by `tie_order`) are called members.

    tie_order: one random number per attack record (members first), fixed by the caller so
    that bootstrap resamples break ties the same way.
    """
    distances = np.concatenate([member_distances, non_member_distances])
    is_member = np.concatenate([np.ones(len(member_distances), bool), np.zeros(len(non_member_distances), bool)])
    order = np.lexsort((tie_order, distances))
    predicted = np.zeros(len(distances), bool)
    predicted[order[: len(distances) // 2]] = True
    return {
        "accuracy": metrics.accuracy(is_member, predicted),
        "precision": metrics.precision(is_member, predicted),
        "recall": metrics.recall(is_member, predicted),
        "f1": metrics.f1(is_member, predicted),
    }


def attack_distances(
    train: PatientRecords,
    test: PatientRecords,
    synthetic: PatientRecords,
    members: np.ndarray,
    non_members: np.ndarray,
    code_mask: np.ndarray | None = None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-synthetic distances of the attack records, over the codes in `code_mask` only.

    The long-tail ablation reruns the attack on records restricted to the head of the
    vocabulary; visits keep their positions (a visit may become empty).
    """
    n_positions = int(max(r.visits_per_patient.max() for r in (train, test, synthetic)))
    s = align_visits(synthetic, n_positions, code_mask)
    member_d, _ = nearest_distances(align_visits(train.subset(members), n_positions, code_mask), s, n_jobs)
    non_member_d, _ = nearest_distances(align_visits(test.subset(non_members), n_positions, code_mask), s, n_jobs)
    return member_d, non_member_d
