"""Codes per visit: the diagnosis rows of every admission and their SEQ_NUM order
(package doc, step 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ehrlab.data.synthetic.cohorts import COHORTS
from ehrlab.data.synthetic.sampling import (
    cumulative_probabilities,
    draw_codes,
    negative_binomial,
    segment_starts,
)

if TYPE_CHECKING:
    from ehrlab.data.synthetic.catalogue import CodeUniverse
    from ehrlab.data.synthetic.cohorts import PlantedCohorts
    from ehrlab.data.synthetic.config import SyntheticConfig
    from ehrlab.data.synthetic.patients import Patients

MAX_SEQ_NUM = 39  # the largest SEQ_NUM in MIMIC-III DIAGNOSES_ICD


def _fixed_rows(config: SyntheticConfig, universe: CodeUniverse, cohorts: PlantedCohorts,
                visit_patient: np.ndarray, visit_rank: np.ndarray, onset_rank: np.ndarray,
                rng: np.random.Generator, extra: tuple[np.ndarray, np.ndarray] | None):
    """(visit, code id, is_target) rows for recorded risk factors, cohort diseases and the
    `extra` (visit, code id) rows (the outpatient profile's precursor codes)."""
    visits, codes, is_target = [], [], []
    if extra is not None:
        visits.append(extra[0])
        codes.append(extra[1])
        is_target.append(np.zeros(len(extra[0]), dtype=bool))
    recorded = cohorts.factors[visit_patient] & (rng.random((len(visit_patient), cohorts.factors.shape[1]))
                                                 < config.risk_factor_recording)
    for j, (ids, cumulative) in enumerate(universe.factor_codes.values()):
        rows = np.flatnonzero(recorded[:, j])
        visits.append(rows)
        codes.append(draw_codes(cumulative, ids, rng, len(rows)))
        is_target.append(np.zeros(len(rows), dtype=bool))
    onset = onset_rank[visit_patient]  # (V, D), -1 = never
    coded = (onset >= 0) & (visit_rank[:, None] >= onset) & (
        (visit_rank[:, None] == onset) | (rng.random(onset.shape) < config.target_persistence))
    for d, cohort in enumerate(COHORTS):
        ids, cumulative = universe.cohort_codes[cohort]
        rows = np.flatnonzero(coded[:, d])
        visits.append(rows)
        codes.append(draw_codes(cumulative, ids, rng, len(rows)))
        is_target.append(np.ones(len(rows), dtype=bool))
    return np.concatenate(visits), np.concatenate(codes), np.concatenate(is_target)


def _free_draws(visit: np.ndarray, component_weight: np.ndarray, samplers,
                rng: np.random.Generator) -> np.ndarray:
    """One free code per entry of `visit`: a mixture component, then a code from it."""
    cumulative = np.cumsum(component_weight[visit], axis=1)
    u = rng.random(len(visit)) * cumulative[:, -1]
    component = (cumulative < u[:, None]).sum(axis=1)
    codes = np.empty(len(visit), dtype=np.int64)
    for k, (ids, cdf) in enumerate(samplers):
        chosen = component == k
        codes[chosen] = draw_codes(cdf, ids, rng, int(chosen.sum()))
    return codes


def _new_keys(taken: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of `keys` that are not in `taken` and not repeats of an earlier key (one sort)."""
    combined = np.concatenate([taken, keys])
    order = np.argsort(combined, kind="stable")  # stable: `taken` wins ties
    ordered = combined[order]
    first = np.empty(len(combined), dtype=bool)
    first[order] = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    return first[len(taken):]


def sample_diagnoses(config: SyntheticConfig, universe: CodeUniverse, patients: Patients,
                     cohorts: PlantedCohorts, n_visits: np.ndarray, visit_patient: np.ndarray,
                     visit_rank: np.ndarray, onset_rank: np.ndarray, rng: np.random.Generator,
                     extra: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Diagnosis rows (visit index, code id, SEQ_NUM) for every visit (package doc 7);
    `extra` (visit, code id) rows are written as they are, like recorded risk factors."""
    n_visits_total = len(visit_patient)
    n_codes = len(universe.codes)
    fixed_visit, fixed_code, fixed_target = _fixed_rows(
        config, universe, cohorts, visit_patient, visit_rank, onset_rank, rng, extra)
    fixed_count = np.bincount(fixed_visit, minlength=n_visits_total)
    size = 1 + negative_binomial(rng, np.full(n_visits_total, config.mean_codes_per_visit - 1.0),
                                 config.codes_per_visit_dispersion)
    size = np.minimum(size, MAX_SEQ_NUM)

    # Mixture components: 0 = background over all free codes except pregnancy (a phenotype
    # of its own), 1..P = phenotypes (free codes of the phenotype, Zipf-weighted).
    free_ids, free_weight = universe.free_ids, universe.free_weight
    phenotype_names = patients.phenotypes
    pregnancy = phenotype_names.index("pregnancy") if "pregnancy" in phenotype_names else -2
    background = universe.phenotype[free_ids] != pregnancy
    samplers = [(free_ids[background], cumulative_probabilities(free_weight[background]))]
    for k in range(len(phenotype_names)):
        members = universe.phenotype[free_ids] == k
        samplers.append((free_ids[members], cumulative_probabilities(free_weight[members])))
    active = (visit_rank[:, None] >= patients.phenotype_onset[visit_patient])
    phenotype_weight = np.where(active, np.maximum(patients.phenotype_weight[visit_patient],
                                                   config.secondary_phenotype_weight * active), 0.0)
    background_weight = (config.background_share / (1 - config.background_share)
                         * phenotype_weight.sum(axis=1, keepdims=True))
    component_weight = np.concatenate([background_weight, phenotype_weight], axis=1)
    visit_male = patients.male[visit_patient]

    first_visit = segment_starts(n_visits)
    rows_visit, rows_code, rows_role = [], [], []
    previous_visit = np.empty(0, dtype=np.int64)
    previous_code = np.empty(0, dtype=np.int64)
    for rank in range(int(n_visits.max())):
        # Visits of this rank; a patient's visit of rank r is first_visit + r.
        has_rank = n_visits > rank
        visits = first_visit[has_rank] + rank
        # Codes carried over from the previous visit of the same patient (progression).
        keep_p = np.where(universe.chronic[previous_code], config.chronic_persistence,
                          config.acute_recurrence)
        kept = rng.random(len(previous_code)) < keep_p
        carried_visit, carried_code = previous_visit[kept] + 1, previous_code[kept]
        carried_count = np.bincount(carried_visit, minlength=n_visits_total)[visits]
        need = np.maximum(size[visits] - fixed_count[visits] - carried_count, 0)
        draw_visit = np.repeat(visits, need)
        taken_key = carried_visit * n_codes + carried_code
        new_visit, new_code = [], []
        for _ in range(4):  # redraw duplicates and sex-incompatible codes a few times
            if len(draw_visit) == 0:
                break
            codes = _free_draws(draw_visit, component_weight, samplers, rng)
            key = draw_visit * n_codes + codes
            sex = universe.sex[codes]
            male_visit = visit_male[draw_visit]
            ok = _new_keys(taken_key, key) & ~((sex == 1) & ~male_visit) & ~((sex == -1) & male_visit)
            new_visit.append(draw_visit[ok])
            new_code.append(codes[ok])
            taken_key = np.concatenate([taken_key, key[ok]])
            draw_visit = draw_visit[~ok]
        new_visit = np.concatenate(new_visit) if new_visit else np.empty(0, dtype=np.int64)
        new_code = np.concatenate(new_code) if new_code else np.empty(0, dtype=np.int64)
        rows_visit += [carried_visit, new_visit]
        rows_code += [carried_code, new_code]
        # Role for the primary-diagnosis order below: fresh acute 0, chronic 1.
        rows_role += [np.full(len(carried_visit), 1), universe.chronic[new_code].astype(int)]
        # What the next visit can carry over: this visit's free and carried codes of
        # patients who have a next visit.
        previous_visit = np.concatenate([carried_visit, new_visit])
        previous_code = np.concatenate([carried_code, new_code])
        continues = n_visits[visit_patient[previous_visit]] > rank + 1
        previous_visit, previous_code = previous_visit[continues], previous_code[continues]

    visit = np.concatenate(rows_visit + [fixed_visit])
    code = np.concatenate(rows_code + [fixed_code])
    # Primary-diagnosis order: fresh acute codes and cohort diseases first, then carried
    # chronic codes, recorded risk factors, V-codes; E-codes (external causes) never lead.
    role = np.concatenate(rows_role + [np.where(fixed_target, 0, 2)]).astype(float)
    first_char = universe.codes.astype("U1")[code]
    role = np.where(first_char == "V", 3, role)
    role = np.where(first_char == "E", 4, role)
    order = np.lexsort((role + 0.9 * rng.random(len(role)), visit))
    visit, code = visit[order], code[order]
    seq_num = np.arange(len(visit)) - segment_starts(np.bincount(visit, minlength=n_visits_total))[visit] + 1
    return pd.DataFrame({"visit": visit, "code": code, "seq_num": seq_num})
