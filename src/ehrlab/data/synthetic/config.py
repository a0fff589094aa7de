"""`SyntheticConfig`: every knob of the generator, with its defaults and validation.

Under Hydra these are the options of `data=synthetic`'s source (`data.source.n_patients`,
`data.source.seed`, ...), which is how error messages name them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ehrlab.data.synthetic.catalogue import PHENOTYPES
from ehrlab.data.synthetic.cohorts import COHORTS
from ehrlab.errors import UserInputError

#: the outpatient profile's options (off at their defaults)
OUTPATIENT_FIELDS = ("case_onset", "precursor_rate", "precursor_log_odds", "precursor_window_days")


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
    # The outpatient-like, long-history profile (data=synthetic_outpatient; package doc,
    # "Outpatient profile"). The defaults leave it off and the output byte-identical.
    #: where a case's disease is first coded: "random" (an admission after the first with
    #: probability case_prior_visit_fraction, else the first) or "last" (the case's last
    #: visit, as a control's index visit is its last, so visit counts are drawn before the
    #: outcome and carry no label)
    case_onset: str = "random"
    #: share of patients with a precursor pair per cohort (codes A and B of
    #: PRECURSOR_CODES at two visits before the last, 1-3 visits apart, in either order with
    #: probability 1/2); 0 writes no precursor code. Needs case_onset="last".
    precursor_rate: float = 0.0
    #: log-odds added to a cohort's planted risk when A comes before B and B's admission is
    #: at most precursor_window_days after A's (the order and timing signal)
    precursor_log_odds: float = 0.0
    precursor_window_days: float = 90.0

    def __post_init__(self):
        # Hydra passes a mapping option as a DictConfig, which the folder's JSON cannot hold.
        self.cohort_prevalence = dict(self.cohort_prevalence)

    def record(self) -> dict:
        """The options as written into a folder (SYNTHETIC_CONFIG.json, README): every field,
        except the outpatient profile's while they keep their defaults, so that a default
        folder is byte for byte what it was before the profile existed."""
        record = asdict(self)
        for option in fields(self):
            if option.name in OUTPATIENT_FIELDS and record[option.name] == option.default:
                del record[option.name]
        return record

    def validate(self) -> None:
        if self.n_patients < 1:
            raise UserInputError(
                f"data.source.n_patients={self.n_patients}: generate at least 1 patient.")
        if self.mean_visits_per_patient < 1:
            raise UserInputError(
                f"data.source.mean_visits_per_patient={self.mean_visits_per_patient}: every patient "
                "has at least one admission, so the mean must be ≥ 1.")
        if self.mean_codes_per_visit < 1:
            raise UserInputError(
                f"data.source.mean_codes_per_visit={self.mean_codes_per_visit}: must be ≥ 1.")
        if not 1 <= self.n_phenotypes <= len(PHENOTYPES):
            raise UserInputError(
                f"data.source.n_phenotypes={self.n_phenotypes}: choose 1 to {len(PHENOTYPES)}.")
        if set(self.cohort_prevalence) != set(COHORTS):
            raise UserInputError(
                f"data.source.cohort_prevalence needs exactly the cohorts {list(COHORTS)}, "
                f"got {sorted(self.cohort_prevalence)}.")
        if self.case_onset not in ("random", "last"):
            raise UserInputError(
                f"data.source.case_onset={self.case_onset!r}: choose random or last.")
        if not 0 <= self.precursor_rate <= 1:
            raise UserInputError(
                f"data.source.precursor_rate={self.precursor_rate}: must lie in [0, 1].")
        if self.precursor_rate > 0 and self.case_onset != "last":
            raise UserInputError(
                f"data.source.precursor_rate={self.precursor_rate} needs data.source.case_onset=last: "
                "the precursor signal is planted from the visits, so visits must be drawn before the outcome.")
        if self.precursor_window_days <= 0:
            raise UserInputError(
                f"data.source.precursor_window_days={self.precursor_window_days}: must be > 0.")
        for cohort, prevalence in self.cohort_prevalence.items():
            if not 0 < prevalence < 1:
                raise UserInputError(
                    f"data.source.cohort_prevalence.{cohort}={prevalence}: must lie in (0, 1).")
