"""One seeded draw: runs the generator's steps in order and assembles MIMIC-III's PATIENTS,
ADMISSIONS and DIAGNOSES_ICD tables plus the planted risk, in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ehrlab.data.synthetic.catalogue import build_universe
from ehrlab.data.synthetic.cohorts import (
    COHORTS,
    RISK_FACTOR_MODEL,
    plant_diseases,
    sample_precursors,
    sample_risk_factors,
)
from ehrlab.data.synthetic.config import SyntheticConfig
from ehrlab.data.synthetic.diagnoses import sample_diagnoses
from ehrlab.data.synthetic.patients import (
    DAYS_PER_YEAR,
    SECONDS_PER_DAY,
    sample_patients,
    sample_times,
    sample_visit_counts,
    sample_visit_counts_before_outcome,
)
from ehrlab.data.synthetic.sampling import draw_labels, segment_starts, sigmoid

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


@dataclass
class SyntheticTables:
    """One draw of the generator, as the frames it writes."""

    patients: pd.DataFrame
    admissions: pd.DataFrame
    diagnoses: pd.DataFrame
    planted_risk: pd.DataFrame
    #: fitted intercepts, realised prevalences and the like, for the README
    model_summary: dict


def _timestamps(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, dtype=np.int64).astype("datetime64[s]")


def generate_synthetic_mimic3(config: SyntheticConfig) -> SyntheticTables:
    """One seeded draw of the generator as in-memory frames (what `write_synthetic_mimic3` writes).

    Columns are MIMIC-III's UPPERCASE ones; timestamps are ``datetime64[s]``.
    """
    config.validate()
    rng = np.random.default_rng(config.seed)
    universe = build_universe(config, np.random.default_rng([config.seed, 1]))
    patients = sample_patients(config, rng)
    factors = sample_risk_factors(config, patients, rng)
    n = config.n_patients
    precursors = None
    if config.case_onset == "last":
        # Outpatient profile: visits and their times first, then the outcome, which may depend
        # on them (the precursor pattern); every case's disease is coded at its last visit.
        n_visits = sample_visit_counts_before_outcome(config, factors, rng)
        visit_patient, visit_rank = _visit_index(n_visits)
        admit, discharge = sample_times(config, n_visits, visit_patient, visit_rank, rng)
        extra_logit = None
        if config.precursor_rate > 0:
            precursors = sample_precursors(config, n_visits, admit / SECONDS_PER_DAY, rng)
            extra_logit = config.precursor_log_odds * precursors.pattern
        cohorts = plant_diseases(config, patients, factors, rng, extra_logit)
        cohorts.onset_after_first = cohorts.case & (n_visits[:, None] > 1)
        onset_rank = np.where(cohorts.case, (n_visits - 1)[:, None], -1)
    else:
        cohorts = plant_diseases(config, patients, factors, rng)
        n_visits = sample_visit_counts(config, cohorts, rng)
        visit_patient, visit_rank = _visit_index(n_visits)
        # Onset rank per (patient, cohort): a later admission chosen uniformly, or the first.
        later = np.floor(1 + rng.random(cohorts.case.shape) * (n_visits[:, None] - 1)).astype(np.int64)
        onset_rank = np.where(cohorts.onset_after_first & (n_visits[:, None] > 1), later, 0)
        onset_rank = np.where(cohorts.case, onset_rank, -1)
        admit, discharge = sample_times(config, n_visits, visit_patient, visit_rank, rng)
    diagnoses = sample_diagnoses(config, universe, patients, cohorts, n_visits, visit_patient,
                                 visit_rank, onset_rank, rng, _precursor_rows(universe, precursors, n_visits))

    # Identifiers: MIMIC-like ranges, not in time order (readers must sort by ADMITTIME).
    subject_id = np.sort(rng.choice(np.arange(1, max(99_999, 2 * n)), size=n, replace=False))
    n_adm = len(visit_patient)
    hadm_id = rng.choice(np.arange(100_001, 100_001 + max(99_999, 2 * n_adm)), size=n_adm, replace=False)

    # Deaths: in hospital at the last admission, or later (social security records).
    last_visit = segment_starts(n_visits) + n_visits - 1
    sickness = cohorts.case.sum(axis=1) + (patients.age - 65) / 10
    death_logit = np.log(config.hospital_mortality / (1 - config.hospital_mortality)) + 0.5 * (
        sickness - sickness.mean())
    dies_in_hospital = rng.random(n) < sigmoid(death_logit)
    dies_later = ~dies_in_hospital & (rng.random(n) < config.post_discharge_mortality)
    hospital_death = np.zeros(n_adm, dtype=bool)
    hospital_death[last_visit[dies_in_hospital]] = True

    admissions = _admissions_frame(config, patients.age, visit_patient, subject_id, hadm_id, admit,
                                   discharge, hospital_death, diagnoses, universe.descriptions, rng)
    day = SECONDS_PER_DAY
    death_day = np.where(
        dies_in_hospital, discharge[last_visit] // day * day,
        (discharge[last_visit] + rng.exponential(2 * DAYS_PER_YEAR, n) * day) // day * day)
    dod_hosp = np.where(dies_in_hospital, death_day, np.iinfo(np.int64).min)
    dod_ssn = np.where(dies_later | (dies_in_hospital & (rng.random(n) < 0.7)), death_day,
                       np.iinfo(np.int64).min)
    dod = np.where(dies_in_hospital | dies_later, death_day, np.iinfo(np.int64).min)
    first_admit = admit[segment_starts(n_visits)]
    years_before = np.where(patients.elderly, 300 + rng.random(n), patients.age)
    dob = (first_admit - years_before * DAYS_PER_YEAR * day) // day * day
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
    onset_visit = segment_starts(n_visits)[:, None] + onset_rank
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
        "risk": cohorts.risk.reshape(-1),
    })
    planted_risk["cohort"] = planted_risk["cohort"].astype("str")
    summary = {
        "intercepts": cohorts.intercepts,
        "mean_risk": dict(zip(COHORTS, cohorts.risk.mean(axis=0).round(4).tolist())),
        "realised_prevalence": dict(zip(COHORTS, cohorts.case.mean(axis=0).round(4).tolist())),
        "risk_factor_prevalence": dict(zip(RISK_FACTOR_MODEL, cohorts.factors.mean(axis=0).round(4).tolist())),
        "free_codes": int(len(universe.free_ids)),
    }
    if precursors is not None:
        summary["precursor_pair_prevalence"] = dict(zip(COHORTS, (precursors.rank_a >= 0).mean(axis=0).round(4).tolist()))
        summary["precursor_pattern_prevalence"] = dict(zip(COHORTS, precursors.pattern.mean(axis=0).round(4).tolist()))
    return SyntheticTables(patients_frame, admissions, diagnoses_frame, planted_risk, summary)


def _visit_index(n_visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient and within-patient rank of every visit of the flat visit arrays."""
    visit_patient = np.repeat(np.arange(len(n_visits)), n_visits)
    return visit_patient, np.arange(len(visit_patient)) - segment_starts(n_visits)[visit_patient]


def _precursor_rows(universe, precursors, n_visits: np.ndarray):
    """(visit, code id) rows of the precursor codes A and B, or None when they are off."""
    if precursors is None:
        return None
    first = segment_starts(n_visits)[:, None]
    visits, codes = [], []
    for ranks, column in ((precursors.rank_a, 0), (precursors.rank_b, 1)):
        patient, cohort = np.nonzero(ranks >= 0)
        visits.append(first[patient, 0] + ranks[patient, cohort])
        codes.append(universe.precursor_ids[cohort, column])
    return np.concatenate(visits), np.concatenate(codes)


def _admissions_frame(config: SyntheticConfig, age: np.ndarray, visit_patient: np.ndarray,
                      subject_id: np.ndarray, hadm_id: np.ndarray, admit: np.ndarray,
                      discharge: np.ndarray, hospital_death: np.ndarray, diagnoses: pd.DataFrame,
                      descriptions: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """ADMISSIONS: one row per visit, with MIMIC-like admission and patient attributes."""
    n_adm = len(visit_patient)
    age_at_admit = age[visit_patient]
    admission_type = draw_labels(rng, _ADMISSION_TYPE, n_adm)
    elective = admission_type == "ELECTIVE"
    location = np.where(elective, draw_labels(rng, _ELECTIVE_LOCATION, n_adm),
                        draw_labels(rng, _EMERGENCY_LOCATION, n_adm))
    insurance_young = draw_labels(rng, {k: v[0] for k, v in _INSURANCE_BY_AGE.items()}, n_adm)
    insurance_old = draw_labels(rng, {k: v[1] for k, v in _INSURANCE_BY_AGE.items()}, n_adm)
    # Per-patient attributes stay the same across a patient's admissions.
    n = config.n_patients
    ethnicity = draw_labels(rng, _ETHNICITY, n)[visit_patient]
    religion = draw_labels(rng, _RELIGION, n)[visit_patient]
    marital = draw_labels(rng, _MARITAL, n)[visit_patient]
    language = draw_labels(rng, _LANGUAGE, n)[visit_patient]
    # Emergency-room admissions have ED registration a few hours before admission.
    through_ed = location == "EMERGENCY ROOM ADMIT"
    ed_in = admit - (rng.gamma(2.0, 2.5, n_adm) * 3600).astype(np.int64) // 60 * 60
    ed_out = admit + (rng.random(n_adm) * 2 * 3600).astype(np.int64) // 60 * 60
    nat = np.datetime64("NaT", "s")
    # Admitting diagnosis: free text; MIMIC's reads like the primary code's description.
    primary = diagnoses.loc[diagnoses["seq_num"] == 1]
    primary_text = np.full(n_adm, "", dtype=object)
    text = pd.Series(descriptions[primary["code"].to_numpy()]).str.split(",").str[0].str.upper()
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
                                       draw_labels(rng, _DISCHARGE_LOCATION, n_adm)),
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
