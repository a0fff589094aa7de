"""The patients, stays and studies of the phantom, and the hidden state behind their labels.

Each study carries a hidden true state per CheXpert finding of seed 004 Table 8 (0/1). Within
an admission the state moves between consecutive studies as a Markov chain whose 2x2
transition matrix depends on what happened in the interval: five *drivers*, each a
categorical variable drawn from the state of one parent finding at the earlier study
(clinicians treat what they see) and each visible in the events (`catalogue`):

==============  ================  ===================================  ================================
driver          parent finding    P(driver | parent absent / present)  events that show it
==============  ================  ===================================  ================================
diuretic        Edema             0.12 / 0.70                          prescriptions Furosemide, inputevents Furosemide (Lasix)
fluid_load      (none)            0.25 / 0.25                          inputevents NaCl 0.9% / LR totalling > 1,500 mL
thoracentesis   Pleural Effusion  0.02 / 0.35                          procedureevents Thoracentesis, outputevents L/R Pleural #1
antibiotics     Consolidation     0.10 / 0.60                          prescriptions Vancomycin / Piperacillin-Tazobactam / CefTRIAXone
sputum_culture  Consolidation     none .88 .55, negative .10 .13,      microbiologyevents SPUTUM RESPIRATORY CULTURE
                                  positive .02 .32                     (an organism named = positive)
==============  ================  ===================================  ================================

Per finding, logit P(onset) = logit(BASE_ONSET) + sum of the drivers' onset shifts and logit
P(resolution) = logit(BASE_RESOLVE) + sum of their resolution shifts (EFFECTS). Spontaneous
changes (no driver acts on the finding) are rare (onset 1-4 %, resolution 2-6 % per
interval, times `spontaneous_change`, default 1; 0 makes every change event-driven); the
events move the states: a
diuretic makes edema resolve (0.06 -> 0.78), a fluid load makes it appear (0.04 -> 0.51),
thoracentesis drains an effusion (0.05 -> 0.83), an antibiotic course clears a consolidation
(0.06 -> 0.61) and a positive sputum culture keeps it (resolution 0.01, onset 0.19);
cardiomegaly barely moves. Everything else the events show (vital signs, blood gases, urine,
other drugs) is drawn independently of the states: it is noise.

At the default size (1,000 patients, seed 0, the paper's selection, pairs < 48 h) this gives
about 5,500 pairs; the planted posterior scores a weighted AUROC of about 0.85 on All, 0.97
on Same and 0.49 on Diff (Diff rows include recording flips, which no posterior can foresee,
and the onsets of effusion and consolidation mostly happen without a driver); edema, whose
changes are mostly event-driven, reaches about 0.7 on Diff.

Because every driver hangs on one finding, the chains of the four findings are independent
given the drivers, and the posterior of a later study's state given an earlier study's true
state and the drivers of every interval between them is an exact forward pass per finding:
alpha_k(s) = sum_s' alpha_{k-1}(s') P(drivers_k | s') T_k(s', s) (`posterior`). That is the
ceiling the planted table reports (seed 004 reports no ceiling; this is the phantom's).

Recording (`record_chexpert`, `record_imagenome`): CheXpert labels are per study; among
recorded 0/1 values a share `chexpert_flip` has the wrong class; uncertain (-1) and blank
rates depend on the true state (blank mostly for absent findings, as "not mentioned" is in
the reports). ImaGenome-style labels are per frontal image, derived from the state
(DERIVED_IMAGENOME) and flipped at `imagenome_flip`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ehrlab.data.cxr.contract import CHEXPERT_FINDINGS
from ehrlab.data.synthetic_cxr.config import SyntheticCXRConfig

FINDINGS = CHEXPERT_FINDINGS  # ("Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CARDIOMEGALY, CONSOLIDATION, EDEMA, EFFUSION = range(4)

BASE_ONSET = np.array([0.01, 0.03, 0.04, 0.03])
BASE_RESOLVE = np.array([0.02, 0.06, 0.06, 0.05])


@dataclass(frozen=True)
class Driver:
    name: str
    parent: int | None  # index into FINDINGS; None: drawn independently of the states
    #: P(outcome | parent absent), P(outcome | parent present); outcome 0 = nothing happened
    probabilities: tuple[tuple[float, ...], tuple[float, ...]]


DRIVERS = (
    Driver("diuretic", EDEMA, ((0.88, 0.12), (0.30, 0.70))),
    Driver("fluid_load", None, ((0.75, 0.25), (0.75, 0.25))),
    Driver("thoracentesis", EFFUSION, ((0.98, 0.02), (0.65, 0.35))),
    Driver("antibiotics", CONSOLIDATION, ((0.90, 0.10), (0.40, 0.60))),
    # outcomes: no culture, a culture without pathogen, a culture that grows one
    Driver("sputum_culture", CONSOLIDATION, ((0.88, 0.10, 0.02), (0.55, 0.13, 0.32))),
)
DRIVER_INDEX = {driver.name: i for i, driver in enumerate(DRIVERS)}
MAX_OUTCOMES = 3

#: (driver, outcome, finding, onset logit shift, resolution logit shift)
EFFECTS = (
    ("diuretic", 1, EDEMA, -1.0, 4.0),
    ("diuretic", 1, EFFUSION, 0.0, 1.5),
    ("fluid_load", 1, EDEMA, 3.2, -1.0),
    ("fluid_load", 1, EFFUSION, 1.5, -0.5),
    ("thoracentesis", 1, EFFUSION, 0.0, 4.5),
    ("antibiotics", 1, CONSOLIDATION, -0.5, 3.2),
    ("sputum_culture", 2, CONSOLIDATION, 2.0, -1.5),
)

#: Chest ImaGenome attributes (seed 004 Table 7 spelling) derivable from the state: each is
#: (finding indices OR-ed, probability that the attribute is called when they are present)
DERIVED_IMAGENOME = {
    "enlarged cardiac silhouette": ((CARDIOMEGALY,), 1.0),
    "consolidation": ((CONSOLIDATION,), 1.0),
    "lung opacity": ((CONSOLIDATION, EDEMA), 1.0),
    "pleural effusion": ((EFFUSION,), 1.0),
    "pneumonia": ((CONSOLIDATION,), 0.7),
    "pulmonary edema/hazy opacity": ((EDEMA,), 1.0),
    "vascular congestion": ((EDEMA,), 0.6),
}

RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN - CHINESE", "ASIAN", "HISPANIC/LATINO - PUERTO RICAN",
         "HISPANIC/LATINO - DOMINICAN", "WHITE - OTHER EUROPEAN", "OTHER", "UNKNOWN")
RACE_SHARES = (0.55, 0.17, 0.04, 0.03, 0.04, 0.02, 0.03, 0.05, 0.07)
ANCHOR_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")

HOUR = np.timedelta64(3600, "s")


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ids(rng: np.random.Generator, n: int, start: int) -> np.ndarray:
    """Unique increasing 8-digit ids from `start` with random gaps. The synthetic ranges
    (subjects 90M, studies 70M, admissions 80M, ICU stays 60M) lie outside MIMIC-IV's and
    MIMIC-CXR's real ranges (subjects 10M-20M, studies 50M-60M, hadm 20M-30M, stays 30M-40M),
    so no file of the phantom ever names a real patient's id."""
    return start + np.cumsum(rng.integers(1, 40, size=n))


def transition_probabilities(outcomes: np.ndarray, spontaneous_change: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Onset and resolution probabilities [..., finding] for driver outcomes [..., driver].

    Where a driver acts on a finding, logit P = logit(base) + its shifts (EFFECTS). Where
    none does, the change is spontaneous: P = base × `spontaneous_change` (1: the documented
    rates; 0: a finding changes only when an event acts on it)."""
    shape = outcomes.shape[:-1] + (len(FINDINGS),)
    onset = np.broadcast_to(_logit(BASE_ONSET), shape).copy()
    resolve = np.broadcast_to(_logit(BASE_RESOLVE), shape).copy()
    driven = np.zeros(shape, dtype=bool)
    for name, outcome, finding, onset_shift, resolve_shift in EFFECTS:
        hit = outcomes[..., DRIVER_INDEX[name]] == outcome
        onset[..., finding] += onset_shift * hit
        resolve[..., finding] += resolve_shift * hit
        driven[..., finding] |= hit
    return (np.where(driven, _sigmoid(onset), BASE_ONSET * spontaneous_change),
            np.where(driven, _sigmoid(resolve), BASE_RESOLVE * spontaneous_change))


def transition_matrices(outcomes: np.ndarray, spontaneous_change: float = 1.0) -> np.ndarray:
    """T[..., finding, from, to] for driver outcomes [..., driver]."""
    onset, resolve = transition_probabilities(outcomes, spontaneous_change)
    return np.stack([np.stack([1 - onset, onset], -1), np.stack([resolve, 1 - resolve], -1)], -2)


def driver_likelihood(outcomes: np.ndarray) -> np.ndarray:
    """P(the drivers seen | earlier state) [..., finding, state]: the product over the drivers
    that hang on each finding (drivers without a parent do not depend on any state)."""
    likelihood = np.ones(outcomes.shape[:-1] + (len(FINDINGS), 2))
    for i, driver in enumerate(DRIVERS):
        if driver.parent is None:
            continue
        table = np.array(driver.probabilities)  # [state, outcome]
        likelihood[..., driver.parent, :] *= np.moveaxis(table[:, outcomes[..., i]], 0, -1)
    return likelihood


def draw_outcomes(rng: np.random.Generator, states: np.ndarray) -> np.ndarray:
    """Driver outcomes [n, driver] given the earlier study's states [n, finding]."""
    outcomes = np.zeros((len(states), len(DRIVERS)), dtype=np.int64)
    for i, driver in enumerate(DRIVERS):
        parent = states[:, driver.parent] if driver.parent is not None else np.zeros(len(states), dtype=np.int64)
        cumulative = np.cumsum(np.array(driver.probabilities), axis=1)[parent]  # [n, outcome]
        outcomes[:, i] = (rng.random((len(states), 1)) > cumulative[:, :-1]).sum(axis=1)
    return outcomes


@dataclass
class Cohort:
    """Everything the generator decides before drawing images and events.

    patients: subject_id, gender, anchor_age, anchor_year, anchor_year_group, dod, race, weight
    admissions: subject_id, hadm_id, stay_id, admittime, dischtime, race, n_studies,
        effusion_side (0 right, 1 left, 2 both), lobe (consolidation site, phantom.LOBES)
    studies: subject_id, study_id, hadm_id (-1 outside any admission), index (within its
        admission), time, view (AP / PA), one int column per finding (true state) and the
        severities effusion_level, edema_intensity, consolidation_extent
    intervals: one row per pair of consecutive studies of an admission: hadm_id, index (of
        the later study), start, end and one column per driver outcome
    """

    patients: pd.DataFrame
    admissions: pd.DataFrame
    studies: pd.DataFrame
    intervals: pd.DataFrame
    #: the same chains as arrays per admission (row = admissions row, position = index):
    #: states [stay, 6, finding] and driver outcomes [stay, 6, driver] (position k: the
    #: interval before study k; position 0 unused); positions >= n_studies are unused
    chain_states: np.ndarray
    chain_outcomes: np.ndarray
    #: the config's scale of spontaneous changes (`transition_probabilities`)
    spontaneous_change: float = 1.0


def draw_cohort(config: SyntheticCXRConfig, rng: np.random.Generator) -> Cohort:
    n = int(config.n_patients)
    male = rng.random(n) < 0.55
    minor = rng.random(n) < config.minor_fraction
    age = np.where(minor, rng.integers(16, 18, n), np.clip(np.round(rng.normal(64, 16, n)), 18, 91)).astype(int)
    anchor_year = rng.integers(2110, 2186, n)
    # MIMIC-IV's anchor_age is >= 18; a minor is an 18-year-old anchor admitted 1-2 years
    # before the anchor year, as happens in the real data.
    first_year = np.where(minor, anchor_year - (18 - age), anchor_year + rng.integers(0, 3, n))
    anchor_age = np.where(minor, 18, age - (first_year - anchor_year))
    race = np.asarray(RACES)[rng.choice(len(RACES), size=n, p=RACE_SHARES)]
    weight = np.clip(np.round(rng.normal(np.where(male, 82, 70), 15)), 40, 160).astype(int)
    patients = pd.DataFrame({
        "subject_id": _ids(rng, n, 90_000_000), "gender": np.where(male, "M", "F"), "anchor_age": anchor_age,
        "anchor_year": anchor_year, "anchor_year_group": np.asarray(ANCHOR_YEAR_GROUPS)[rng.integers(0, 5, n)],
        "dod": "", "race": race, "weight": weight})

    # admissions: 1-3 per patient, 20-400 days apart; 2-6 studies each, 4-40 h apart
    n_adm = rng.choice([1, 2, 3], size=n, p=[0.6, 0.3, 0.1])
    patient_of = np.repeat(np.arange(n), n_adm)
    m = len(patient_of)
    first = np.r_[0, np.cumsum(n_adm)[:-1]]
    order = np.arange(m) - np.repeat(first, n_adm)
    n_studies = rng.choice(np.arange(2, 7), size=m, p=[0.3, 0.28, 0.2, 0.13, 0.09])
    gaps = rng.uniform(4, 40, size=(m, 6))
    gaps[:, 0] = rng.uniform(0.5, 20, m)  # admission to the first study
    gaps[np.arange(6)[None, :] >= n_studies[:, None]] = 0
    study_hours = np.cumsum(gaps, axis=1)
    los = np.round((study_hours[np.arange(m), n_studies - 1] + rng.uniform(3, 72, m)) * 60) * 60  # seconds
    pre = np.where(order == 0, np.round(rng.uniform(0, 300, m) * 1440), np.round(rng.uniform(20, 400, m) * 1440)) * 60
    total = pre + los
    cum = np.cumsum(total)
    offset = cum - np.repeat(cum[first] - total[first], n_adm) - los  # earlier stays and gaps of the patient
    year_start = (first_year[patient_of] - 1970).astype("datetime64[Y]").astype("datetime64[s]")
    admit = year_start + offset.astype(np.int64).astype("timedelta64[s]")
    disch = admit + los.astype(np.int64).astype("timedelta64[s]")
    admit_year = admit.astype("datetime64[Y]").astype(int) + 1970
    admissions = pd.DataFrame({
        "subject_id": patients.subject_id.to_numpy()[patient_of], "hadm_id": _ids(rng, m, 80_000_000),
        "stay_id": _ids(rng, m, 60_000_000), "admittime": admit, "dischtime": disch, "race": race[patient_of],
        "n_studies": n_studies, "age": age[patient_of] + admit_year - first_year[patient_of],
        "effusion_side": rng.choice(3, size=m, p=[0.35, 0.25, 0.4]), "lobe": rng.integers(0, 5, m)})

    # the hidden states along each admission's studies, and the drivers between them
    trait = (rng.random(n) < _sigmoid(-1.6 + 0.035 * (age - 60))).astype(int)  # cardiomegaly
    states = np.zeros((m, 6, len(FINDINGS)), dtype=np.int64)
    outcomes = np.zeros((m, 6, len(DRIVERS)), dtype=np.int64)  # [:, k]: interval before study k
    states[:, 0] = _initial_states(rng, trait[patient_of])
    for k in range(1, 6):  # a loop over the (at most 6) study positions, vectorised over stays
        outcomes[:, k] = draw_outcomes(rng, states[:, k - 1])
        move = transition_matrices(outcomes[:, k], config.spontaneous_change)  # [m, finding, from, to]
        p_one = np.take_along_axis(move[..., 1], states[:, k - 1, :, None], axis=-1)[..., 0]
        states[:, k] = (rng.random(p_one.shape) < p_one).astype(np.int64)

    adm_of = np.repeat(np.arange(m), n_studies)
    index = np.arange(len(adm_of)) - np.repeat(np.r_[0, np.cumsum(n_studies)[:-1]], n_studies)
    times = admit[adm_of] + np.round(study_hours[adm_of, index] * 3600).astype(np.int64).astype("timedelta64[s]")
    inside = pd.DataFrame({"subject_id": admissions.subject_id.to_numpy()[adm_of],
                           "hadm_id": admissions.hadm_id.to_numpy()[adm_of], "index": index, "time": times,
                           **{f: states[adm_of, index, i] for i, f in enumerate(FINDINGS)}})
    later = index > 0
    intervals = pd.DataFrame({"hadm_id": inside.hadm_id.to_numpy()[later], "index": index[later],
                              "start": times[np.flatnonzero(later) - 1], "end": times[later],
                              **{d.name: outcomes[adm_of[later], index[later], i] for i, d in enumerate(DRIVERS)}})
    # one study outside any admission for some patients (the reader drops it)
    outside_of = np.flatnonzero(rng.random(n) < config.outside_study_fraction)
    last_disch = admissions.groupby("subject_id", sort=True).dischtime.max().to_numpy()[outside_of]
    outside_states = _initial_states(rng, trait[outside_of])
    outside = pd.DataFrame({
        "subject_id": patients.subject_id.to_numpy()[outside_of], "hadm_id": -1, "index": 0,
        "time": last_disch + np.round(rng.uniform(15, 200, len(outside_of)) * 86400).astype(np.int64)
        .astype("timedelta64[s]"),
        **{f: outside_states[:, i] for i, f in enumerate(FINDINGS)}})
    studies = pd.concat([inside, outside], ignore_index=True).sort_values(["subject_id", "time"], kind="stable")
    studies = studies.reset_index(drop=True)
    studies.insert(1, "study_id", _ids(rng, len(studies), 70_000_000))
    studies["view"] = np.where(rng.random(len(studies)) < config.ap_fraction, "AP", "PA")
    studies["effusion_level"] = rng.uniform(0.12, 0.32, len(studies))
    studies["edema_intensity"] = rng.uniform(0.35, 0.6, len(studies))
    studies["consolidation_extent"] = rng.uniform(0.6, 1.0, len(studies))
    return Cohort(patients=patients, admissions=admissions, studies=studies, intervals=intervals,
                  chain_states=states, chain_outcomes=outcomes, spontaneous_change=config.spontaneous_change)


def _initial_states(rng: np.random.Generator, cardiomegaly: np.ndarray) -> np.ndarray:
    """States [n, finding] at an admission's first study: cardiomegaly is the patient's trait
    (older patients have it more often), edema is likelier with it, effusion with edema."""
    n = len(cardiomegaly)
    edema = (rng.random(n) < 0.12 + 0.25 * cardiomegaly).astype(np.int64)
    effusion = (rng.random(n) < 0.15 + 0.25 * edema).astype(np.int64)
    consolidation = (rng.random(n) < 0.18).astype(np.int64)
    return np.stack([cardiomegaly.astype(np.int64), consolidation, edema, effusion], axis=1)


def record_chexpert(rng: np.random.Generator, states: np.ndarray, config: SyntheticCXRConfig) -> np.ndarray:
    """Recorded CheXpert values [n, finding] (1, 0, -1 or NaN) for true states [n, finding]."""
    u = rng.random(states.shape)
    uncertain = np.where(states == 1, config.chexpert_uncertain_present, config.chexpert_uncertain_absent)
    blank = np.where(states == 1, config.chexpert_blank_present, config.chexpert_blank_absent)
    flipped = rng.random(states.shape) < config.chexpert_flip
    recorded = np.where(flipped, 1 - states, states).astype(np.float64)
    recorded[u < uncertain] = -1.0
    recorded[(u >= uncertain) & (u < uncertain + blank)] = np.nan
    return recorded


def derived_imagenome(rng: np.random.Generator, states: np.ndarray) -> dict[str, np.ndarray]:
    """True ImaGenome attributes (0/1) per image for true states [n, finding]."""
    derived = {}
    for name, (parents, rate) in DERIVED_IMAGENOME.items():
        present = states[:, list(parents)].max(axis=1)
        derived[name] = (present * (rng.random(len(states)) < rate)).astype(np.int64) if rate < 1 else present
    return derived


def record_imagenome(rng: np.random.Generator, states: np.ndarray, config: SyntheticCXRConfig) -> dict[str, np.ndarray]:
    """Recorded ImaGenome-style labels (0/1) per image: the derived truth with flips."""
    return {name: np.where(rng.random(len(truth)) < config.imagenome_flip, 1 - truth, truth)
            for name, truth in derived_imagenome(rng, states).items()}


def chain_posteriors(cohort: Cohort) -> np.ndarray:
    """P(true state of study j = 1 | true state of study i, drivers of the intervals i+1..j)
    as [stay, i, j, finding] (NaN where j <= i or j is past the stay's last study), by the
    exact forward pass of the module docstring."""
    states, outcomes = cohort.chain_states, cohort.chain_outcomes
    m = len(states)
    step = (driver_likelihood(outcomes)[..., :, None]
            * transition_matrices(outcomes, cohort.spontaneous_change))  # [m, 6, F, from, to]
    posterior = np.full((m, 6, 6, len(FINDINGS)), np.nan)
    n_studies = cohort.admissions.n_studies.to_numpy()
    for i in range(5):
        alpha = np.eye(2)[states[:, i]]  # [m, F, 2]
        for j in range(i + 1, 6):
            alpha = np.einsum("mfs,mfst->mft", alpha, step[:, j])
            alpha = alpha / alpha.sum(axis=-1, keepdims=True)
            posterior[:, i, j] = np.where((j < n_studies)[:, None], alpha[..., 1], np.nan)
    return posterior


def recorded_probabilities(truth: np.ndarray, config: SyntheticCXRConfig) -> dict[str, np.ndarray]:
    """From P(true state = 1) [n, finding] to the probability of each recorded label column
    being 1: for CheXpert among the rows where it is recorded as 0 or 1 (the only rows a task
    evaluates: -1 and blank are not evaluable), for ImaGenome through the derivation and flip."""
    flip = config.chexpert_flip
    mentioned_1 = 1 - config.chexpert_uncertain_present - config.chexpert_blank_present
    mentioned_0 = 1 - config.chexpert_uncertain_absent - config.chexpert_blank_absent
    columns = {}
    for f, name in enumerate(FINDINGS):
        p = truth[:, f]
        columns[f"chexpert:{name}"] = ((p * mentioned_1 * (1 - flip) + (1 - p) * mentioned_0 * flip)
                                       / (p * mentioned_1 + (1 - p) * mentioned_0))
    for name, (parents, rate) in DERIVED_IMAGENOME.items():
        # the parents' chains are independent given the drivers, so an OR is 1 - prod(1 - p)
        present = 1 - np.prod(1 - truth[:, list(parents)], axis=1)
        p = present * rate
        columns[f"imagenome:{name}"] = config.imagenome_flip + (1 - 2 * config.imagenome_flip) * p
    return columns
