"""The cohort signals and the ceiling: latent risk factors, the planted disease model and
the codes that record both (package doc, steps 4-5).

`COHORT_EMITTED_CODES` is the generator's own list of the codes it writes for each cohort's
disease. It is deliberately not read from `conf/task/<cohort>.yaml` at run time (an
installed package has no `conf/`); the tasks' definitions stay the single source of truth
because tests/data/test_synthetic_generator.py checks that every emitted code matches its
own cohort's definition and no other, and that no other code the generator can write
matches any definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ehrlab.data.synthetic.sampling import segment_starts, sigmoid
from ehrlab.errors import UserInputError

if TYPE_CHECKING:
    from ehrlab.data.synthetic.config import SyntheticConfig
    from ehrlab.data.synthetic.patients import Patients

COHORTS = ("heart_failure", "copd", "ckd", "dementia")

#: The codes the planted model writes for a cohort's disease (MIMIC's undotted form) with
#: their relative frequency. All are in the cohort definitions the tasks use, and none is
#: in two cohorts (404.03 would make a heart-failure case a CKD case as well).
COHORT_EMITTED_CODES: dict[str, dict[str, float]] = {
    "heart_failure": {
        "4280": 0.50, "42832": 0.07, "42833": 0.06, "42823": 0.05, "42822": 0.04,
        "42830": 0.04, "42820": 0.04, "42831": 0.02, "42821": 0.02, "42842": 0.02,
        "42843": 0.02, "42840": 0.01, "42841": 0.01, "4281": 0.02, "4289": 0.03,
        "40291": 0.03, "40201": 0.01, "40211": 0.005, "40401": 0.005, "40411": 0.005,
        "40491": 0.005, "39891": 0.01,
    },
    "copd": {
        "496": 0.45, "49121": 0.15, "49122": 0.04, "49120": 0.05, "4928": 0.10,
        "4920": 0.03, "4919": 0.05, "4918": 0.02, "4910": 0.01, "4911": 0.01,
        "4940": 0.03, "4941": 0.02, "490": 0.04,
    },
    "ckd": {
        "5859": 0.33, "5853": 0.15, "5854": 0.09, "5856": 0.12, "5855": 0.04,
        "5852": 0.05, "5851": 0.01, "40391": 0.18, "40301": 0.02, "40311": 0.01,
    },
    "dementia": {
        "3310": 0.28, "2900": 0.22, "29410": 0.15, "29411": 0.05, "29040": 0.08,
        "29041": 0.02, "29010": 0.02, "29020": 0.02, "2903": 0.03, "3312": 0.04,
        "33182": 0.05, "33119": 0.04,
    },
}

#: The outpatient profile's precursor codes per cohort, (A, B): a cohort's planted risk rises
#: when A is coded before B within ``precursor_window_days`` (package doc 5b). Real ICD-9
#: symptom codes in no cohort definition; with the profile on they are never free codes.
PRECURSOR_CODES: dict[str, tuple[str, str]] = {
    "heart_failure": ("78605", "7823"),  # shortness of breath, then oedema
    "copd": ("7862", "78607"),  # cough, then wheezing
    "ckd": ("7910", "5939"),  # proteinuria, then a kidney disorder NOS
    "dementia": ("78093", "79959"),  # memory loss, then other cognitive symptoms
}
#: the two visits of a precursor pair are 1 to this many visits apart, both among the last
#: PRECURSOR_LOOKBACK visits before the index visit (so the tasks' max_visits=20 keeps them)
PRECURSOR_MAX_STEP = 3
PRECURSOR_LOOKBACK = 16

#: Latent risk factors: the codes that record them (relative frequencies) and the
#: logistic model of their presence at the first admission. ``age`` is per decade from
#: 65, ``phenotype`` effects add for every active phenotype at the first admission.
RISK_FACTOR_MODEL: dict[str, dict] = {
    "hypertension": {"codes": {"4019": 0.93, "4011": 0.05, "4010": 0.02},
                     "intercept": -0.5, "age": 0.35, "male": 0.1,
                     "phenotype": {"cardio_metabolic": 1.1, "renal": 0.6}},
    "diabetes": {"codes": {"25000": 0.66, "25002": 0.14, "25060": 0.07, "25040": 0.05,
                           "25001": 0.04, "25080": 0.04},
                 "intercept": -1.6, "age": 0.1, "male": 0.1,
                 "phenotype": {"cardio_metabolic": 0.9, "renal": 0.8}},
    "hyperlipidemia": {"codes": {"2724": 0.75, "2720": 0.2, "2722": 0.05},
                       "intercept": -1.4, "age": 0.2, "male": 0.2,
                       "phenotype": {"cardio_metabolic": 1.1}},
    "coronary_artery_disease": {"codes": {"41401": 0.85, "412": 0.15},
                                "intercept": -2.0, "age": 0.35, "male": 0.6,
                                "phenotype": {"cardio_metabolic": 1.4}},
    "atrial_fibrillation": {"codes": {"42731": 1.0},
                            "intercept": -2.3, "age": 0.6, "male": 0.2,
                            "phenotype": {"cardio_metabolic": 1.0}},
    "obesity": {"codes": {"27800": 0.6, "27801": 0.4},
                "intercept": -3.0, "age": -0.15, "male": 0.0,
                "phenotype": {"cardio_metabolic": 0.7, "respiratory": 0.3}},
    "tobacco_use": {"codes": {"3051": 0.55, "V1582": 0.45},
                    "intercept": -2.1, "age": -0.15, "male": 0.4,
                    "phenotype": {"respiratory": 1.4, "hematology_oncology": 0.5}},
    "acute_kidney_injury": {"codes": {"5849": 0.9, "5845": 0.1},
                            "intercept": -2.6, "age": 0.15, "male": 0.2,
                            "phenotype": {"renal": 1.6, "infection": 0.8,
                                          "cardio_metabolic": 0.3}},
    "stroke": {"codes": {"V1254": 0.5, "43491": 0.35, "4370": 0.15},
               "intercept": -3.4, "age": 0.4, "male": 0.1,
               "phenotype": {"neuro_psych": 1.6, "cardio_metabolic": 0.4}},
    "depression": {"codes": {"311": 0.8, "3004": 0.2},
                   "intercept": -2.8, "age": 0.0, "male": -0.4,
                   "phenotype": {"neuro_psych": 1.3}},
    "parkinsonism": {"codes": {"3320": 1.0},
                     "intercept": -4.6, "age": 0.6, "male": 0.4,
                     "phenotype": {"neuro_psych": 1.5}},
}

#: The planted disease model: log-odds per present risk factor, per decade of age from
#: 65, for male sex and per active phenotype at the first admission. The intercept is
#: solved per draw so that the mean risk is ``cohort_prevalence[cohort]``.
DISEASE_MODEL: dict[str, dict] = {
    "heart_failure": {"age": 0.4, "male": 0.2,
                      "factors": {"hypertension": 0.9, "diabetes": 0.7,
                                  "coronary_artery_disease": 1.6, "atrial_fibrillation": 1.6,
                                  "obesity": 0.6, "acute_kidney_injury": 0.5,
                                  "tobacco_use": 0.3},
                      "phenotype": {"cardio_metabolic": 1.0, "renal": 0.4}},
    "copd": {"age": 0.25, "male": 0.1,
             "factors": {"tobacco_use": 2.0, "obesity": 0.3, "coronary_artery_disease": 0.3},
             "phenotype": {"respiratory": 1.2}},
    "ckd": {"age": 0.25, "male": 0.2,
            "factors": {"hypertension": 0.9, "diabetes": 1.1, "acute_kidney_injury": 1.4,
                        "coronary_artery_disease": 0.3},
            "phenotype": {"renal": 1.3}},
    "dementia": {"age": 0.9, "male": -0.1,
                 "factors": {"stroke": 1.5, "parkinsonism": 1.8, "depression": 0.7,
                             "hypertension": 0.2, "diabetes": 0.3},
                 "phenotype": {"neuro_psych": 1.0}},
}


@dataclass
class PlantedCohorts:
    """Each patient's risk factors and, per cohort, the planted risk and its outcome."""

    factors: np.ndarray  # (n, F) bool, F in RISK_FACTOR_MODEL's order
    risk: np.ndarray  # (n, D) planted probability, D in COHORTS' order
    case: np.ndarray  # (n, D) bool
    onset_after_first: np.ndarray  # (n, D) bool: the disease starts at a later admission
    intercepts: dict[str, float]


def _solve_intercept(linear: np.ndarray, prevalence: float) -> float:
    """alpha with mean(sigmoid(alpha + linear)) = prevalence (bisection; monotone in alpha)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        if sigmoid(middle + linear).mean() < prevalence:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def sample_risk_factors(config: SyntheticConfig, patients: Patients, rng: np.random.Generator) -> np.ndarray:
    """(n, F) presence of the latent risk factors at the first admission (package doc 4)."""
    n = len(patients.male)
    decades = (patients.age - 65.0) / 10.0
    factors = np.zeros((n, len(RISK_FACTOR_MODEL)), dtype=bool)
    for j, spec in enumerate(RISK_FACTOR_MODEL.values()):
        logit = (spec["intercept"] + spec["age"] * decades + spec["male"] * patients.male
                 + _phenotype_effect(patients, spec["phenotype"]))
        factors[:, j] = rng.random(n) < sigmoid(logit)
    return factors


def _phenotype_effect(patients: Patients, effects: dict[str, float]) -> np.ndarray:
    total = np.zeros(len(patients.male))
    for name, beta in effects.items():
        if name in patients.phenotypes:
            total += beta * patients.phenotype_present[:, patients.phenotypes.index(name)]
    return total


def plant_diseases(config: SyntheticConfig, patients: Patients, factors: np.ndarray,
                   rng: np.random.Generator, extra_logit: np.ndarray | None = None) -> PlantedCohorts:
    """Planted disease risk, case status and onset timing (package doc 5); `extra_logit`
    (n, D) adds the precursor signal of the outpatient profile before the intercept is solved."""
    decades = (patients.age - 65.0) / 10.0
    factor_index = {name: j for j, name in enumerate(RISK_FACTOR_MODEL)}
    risk = np.zeros((len(factors), len(COHORTS)))
    intercepts = {}
    for d, cohort in enumerate(COHORTS):
        spec = DISEASE_MODEL[cohort]
        linear = spec["age"] * decades + spec["male"] * patients.male + _phenotype_effect(patients, spec["phenotype"])
        for name, beta in spec["factors"].items():
            linear = linear + beta * factors[:, factor_index[name]]
        if extra_logit is not None:
            linear = linear + extra_logit[:, d]
        intercepts[cohort] = _solve_intercept(linear, config.cohort_prevalence[cohort])
        risk[:, d] = sigmoid(intercepts[cohort] + linear)
    case = rng.random(risk.shape) < risk
    onset_after_first = case & (rng.random(risk.shape) < config.case_prior_visit_fraction)
    return PlantedCohorts(factors, risk, case, onset_after_first, intercepts)


@dataclass
class Precursors:
    """The outpatient profile's precursor pairs, per patient and cohort (package doc 5b)."""

    rank_a: np.ndarray  # (n, D) visit rank of code A, -1 = no pair
    rank_b: np.ndarray  # (n, D) visit rank of code B, -1 = no pair
    pattern: np.ndarray  # (n, D) bool: A before B, B within the window after A


def sample_precursors(config: SyntheticConfig, n_visits: np.ndarray, admit_days: np.ndarray,
                      rng: np.random.Generator) -> Precursors:
    """Precursor pairs at two of the last PRECURSOR_LOOKBACK visits before the last (the
    index visit), 1 to PRECURSOR_MAX_STEP visits apart, A first or B first with probability
    1/2 each (package doc 5b)."""
    shape = (len(n_visits), len(COHORTS))
    history = (n_visits - 1)[:, None]  # visits before the index visit
    step = 1 + np.floor(rng.random(shape) * PRECURSOR_MAX_STEP).astype(np.int64)
    has = (rng.random(shape) < config.precursor_rate) & (history > step)
    lowest = np.maximum(history - PRECURSOR_LOOKBACK, 0)
    earlier = lowest + np.floor(rng.random(shape) * np.maximum(history - step - lowest, 1)).astype(np.int64)
    later = earlier + step
    a_first = rng.random(shape) < 0.5
    first_visit = segment_starts(n_visits)[:, None]
    gap_days = admit_days[first_visit + np.where(has, later, 0)] - admit_days[first_visit + np.where(has, earlier, 0)]
    pattern = has & a_first & (gap_days <= config.precursor_window_days)
    return Precursors(rank_a=np.where(has, np.where(a_first, earlier, later), -1),
                      rank_b=np.where(has, np.where(a_first, later, earlier), -1), pattern=pattern)


def cohort_code_mask(codes: pd.Series, cohort: str) -> pd.Series:
    """Which undotted ICD-9 codes written by the generator are `cohort`'s disease codes.

    In the generator's output a cohort's disease is coded only with its
    ``COHORT_EMITTED_CODES`` (no other code of any cohort definition is ever drawn), so this
    is the same membership as the task's ``conf/task/<cohort>.yaml`` (a test checks it).
    It is not a cohort definition for other data: use the risk task there.
    """
    if cohort not in COHORTS:
        raise UserInputError(f"unknown cohort {cohort!r}: choose one of {list(COHORTS)}.")
    return pd.Series(codes.astype("str").isin(list(COHORT_EMITTED_CODES[cohort])).to_numpy(),
                     index=codes.index)
