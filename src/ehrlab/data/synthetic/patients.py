"""Patient and visit sampling: demographics, latent phenotypes, admissions per patient and
their times (package doc, steps 2, 3 and 6)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ehrlab.data.synthetic.catalogue import PHENOTYPES
from ehrlab.data.synthetic.sampling import negative_binomial, segment_starts

if TYPE_CHECKING:
    from ehrlab.data.synthetic.cohorts import PlantedCohorts
    from ehrlab.data.synthetic.config import SyntheticConfig

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
DAYS_PER_YEAR = 365.2425


@dataclass
class Patients:
    """Who the patients are, before any cohort disease is planted."""

    male: np.ndarray
    age: np.ndarray  # age at first admission (90 for the > 89 group)
    elderly: np.ndarray  # older than 89: DOB shifted by 300 years
    phenotypes: list[str]  # the phenotypes in use (the first n_phenotypes of PHENOTYPES)
    primary_phenotype: np.ndarray
    phenotype_present: np.ndarray  # (n, P) bool: active at the first admission
    phenotype_weight: np.ndarray  # (n, P) drawing weight at the first admission, 0 = absent
    phenotype_onset: np.ndarray  # (n, P) visit rank from which the phenotype is active


def sample_patients(config: SyntheticConfig, rng: np.random.Generator) -> Patients:
    """Demographics and latent phenotypes (package doc 2-3)."""
    n = config.n_patients
    phenotype_names = list(PHENOTYPES)[: config.n_phenotypes]
    male = rng.random(n) < config.male_fraction
    # Adult ICU ages: skewed towards the elderly, median ≈ 65.
    age = 18.0 + 71.9 * rng.beta(2.4, 1.5, size=n)
    elderly = rng.random(n) < config.elderly_fraction
    age[elderly] = 90.0
    decades = (age - 65.0) / 10.0

    # Primary phenotype: softmax of log prior weight + age slope; pregnancy only for
    # women of 18-45.
    can_be_pregnant = (~male) & (age <= 45)
    logits = np.stack([np.log(PHENOTYPES[p]["weight"]) + PHENOTYPES[p]["age"] * decades
                       for p in phenotype_names], axis=1)
    if "pregnancy" in phenotype_names:
        logits[~can_be_pregnant, phenotype_names.index("pregnancy")] = -np.inf
    prior = np.exp(logits - logits.max(axis=1, keepdims=True))
    prior /= prior.sum(axis=1, keepdims=True)
    primary = (prior.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    primary = np.minimum(primary, len(phenotype_names) - 1)

    # Secondary phenotypes at the first admission, and acquisition at later visits: each
    # phenotype's chance is proportional to its prior, so cardio-metabolic dominates.
    n_other = max(len(phenotype_names) - 1, 1)
    secondary_p = np.clip(config.secondary_phenotype_rate * prior * len(phenotype_names) / n_other, 0, 0.95)
    has = rng.random(prior.shape) < secondary_p
    has[np.arange(n), primary] = True
    weight = np.where(has, config.secondary_phenotype_weight, 0.0)
    weight[np.arange(n), primary] = 1.0
    acquisition_p = np.clip(config.phenotype_acquisition_rate * prior * len(phenotype_names) / n_other,
                            1e-9, 0.95)
    onset = np.where(has, 0, rng.geometric(acquisition_p))
    return Patients(male, age, elderly, phenotype_names, primary, has, weight, onset)


def sample_visit_counts(config: SyntheticConfig, cohorts: PlantedCohorts,
                        rng: np.random.Generator) -> np.ndarray:
    """Admissions per patient (package doc 6): morbidity-driven, mean fixed by the config."""
    needs_history = cohorts.onset_after_first.any(axis=1)
    propensity = np.exp(config.readmission_per_disease * cohorts.case.sum(axis=1)
                        + config.readmission_per_risk_factor * cohorts.factors.sum(axis=1))
    # E[extra admissions] = n_needing_history + scale * Σ propensity; solve for the scale.
    target_extra = (config.mean_visits_per_patient - 1.0) * config.n_patients
    scale = max(target_extra - needs_history.sum(), 0.0) / propensity.sum()
    if scale == 0.0:
        log.warning("mean_visits_per_patient=%s is too small for the cases that need an earlier "
                    "admission; the realised mean will be higher.", config.mean_visits_per_patient)
    extra = negative_binomial(rng, scale * propensity, config.visit_count_dispersion)
    return np.minimum(1 + needs_history + extra, config.max_visits_per_patient)


def sample_visit_counts_before_outcome(config: SyntheticConfig, factors: np.ndarray,
                                      rng: np.random.Generator) -> np.ndarray:
    """Visits per patient of the outpatient profile (package doc, "Outpatient profile"):
    drawn before the outcome, so they depend on the risk factors but not on case status."""
    propensity = np.exp(config.readmission_per_risk_factor * factors.sum(axis=1))
    scale = (config.mean_visits_per_patient - 1.0) * config.n_patients / propensity.sum()
    extra = negative_binomial(rng, scale * propensity, config.visit_count_dispersion)
    return np.minimum(1 + extra, config.max_visits_per_patient)


def sample_times(config: SyntheticConfig, n_visits: np.ndarray, visit_patient: np.ndarray,
                 visit_rank: np.ndarray, rng: np.random.Generator):
    """Admission and discharge times in seconds since 1970, minute resolution."""
    n_total = len(visit_patient)
    los_days = np.clip(rng.lognormal(np.log(config.los_median_days), config.los_sigma, n_total), 0.1, 150)
    gap_days = np.clip(rng.lognormal(np.log(config.gap_median_days), config.gap_sigma, n_total), 0.5, 3650)
    gap_days[visit_rank == 0] = 0.0
    # admit_k = Σ_{j≤k} (gap_j + los_j) - los_k within a patient (gap_0 = 0): a cumulative
    # sum over the whole array minus its value before the patient's first visit.
    step = los_days + gap_days
    cumulative = np.cumsum(step)
    first = segment_starts(n_visits)
    before_patient = (cumulative[first] - step[first])[visit_patient]
    admit_offset_days = cumulative - before_patient - los_days
    # Dates shifted into 2100-2200 as in MIMIC: each patient's first admission is placed so
    # that the whole stay history ends before 2200.
    last = first + n_visits - 1
    span_days = admit_offset_days[last] + los_days[last]
    latest_start_days = np.clip(100 * DAYS_PER_YEAR - span_days, 0, 90 * DAYS_PER_YEAR)
    start_2100 = np.datetime64("2100-01-01T00:00:00", "s").astype(np.int64)
    first_admit = start_2100 + rng.random(len(n_visits)) * latest_start_days * SECONDS_PER_DAY
    admit = first_admit[visit_patient] + admit_offset_days * SECONDS_PER_DAY
    discharge = admit + los_days * SECONDS_PER_DAY
    return (admit // 60 * 60).astype(np.int64), (discharge // 60 * 60).astype(np.int64)
