"""Writing the phantom as MIMIC-CXR-JPG 2.0.0 + MIMIC-IV 2.2 folders, and its ground truth.

Layout of `out_dir`:
  mimic-cxr-jpg/files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg, mimic-cxr-2.0.0-metadata.csv.gz,
      mimic-cxr-2.0.0-chexpert.csv.gz, mimic-cxr-2.0.0-split.csv.gz, and
      chest-imagenome-labels.csv.gz (dicom_id + the attributes of `model.DERIVED_IMAGENOME`,
      0/1 per frontal image: a Chest ImaGenome-style label CSV as the reader's `label_csv`)
  mimic-iv/hosp/{patients,admissions,d_labitems,labevents,prescriptions,microbiologyevents}.csv.gz
  mimic-iv/icu/{d_items,icustays,chartevents,inputevents,outputevents,procedureevents}.csv.gz
  truth/studies.csv.gz (true states per study), truth/intervals.csv.gz (driver outcomes),
      truth/planted.csv.gz (`planted_pairs`), truth/config.json
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ehrlab.data.cxr.contract import race_group
from ehrlab.data.synthetic_cxr import catalogue, model, phantom
from ehrlab.data.synthetic_cxr.config import SyntheticCXRConfig

log = logging.getLogger(__name__)

CXR_DIR = "mimic-cxr-jpg"
MIMIC4_DIR = "mimic-iv"
TRUTH_DIR = "truth"
IMAGENOME_CSV = "chest-imagenome-labels.csv.gz"
CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                    "Pneumothorax", "Support Devices")
RENDER_CHUNK = 64  # images drawn at once: arrays of 64 x 128 x 128 stay in cache
EVENT_BLOCK = 500  # admissions per block of events (bounds memory at any size)

# independent random streams, so that a change to one part leaves the others' draws alone
_COHORT, _IMAGES, _LABELS, _EVENTS, _RENDER, _TEXTURE = range(6)


def _stream(config: SyntheticCXRConfig, part: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(config.seed), part, block])


def draw_cohort(config: SyntheticCXRConfig) -> model.Cohort:
    """The cohort `write_synthetic_cxr` writes for `config` (its own random stream)."""
    return model.draw_cohort(config, _stream(config, _COHORT))


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    """MIMIC-CXR-JPG's relative path of an image."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def image_table(cohort: model.Cohort, config: SyntheticCXRConfig) -> pd.DataFrame:
    """One row per image: ids, view, time, the study's states and everything `phantom`
    needs to draw it."""
    rng = _stream(config, _IMAGES)
    studies = cohort.studies
    n_frontal = 1 + (rng.random(len(studies)) < config.second_frontal_rate)
    lateral = rng.random(len(studies)) < np.where(studies.view == "PA", config.lateral_rate_pa, config.lateral_rate_ap)
    count = n_frontal + lateral
    rows = np.repeat(np.arange(len(studies)), count)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    images = studies.iloc[rows].reset_index(drop=True)
    images["view"] = np.where(rank < n_frontal[rows], images.view, "LATERAL")
    words = rng.integers(0, 2 ** 32, size=(len(images), 5), dtype=np.uint64)
    images.insert(0, "dicom_id", ["-".join(f"{w:08x}" for w in row) for row in words])

    admissions = cohort.admissions.set_index("hadm_id")
    inside = images.hadm_id.to_numpy() >= 0
    side = np.where(inside, admissions.effusion_side.reindex(images.hadm_id).fillna(0).to_numpy(),
                    rng.integers(0, 3, len(images))).astype(int)
    lobe = np.where(inside, admissions.lobe.reindex(images.hadm_id).fillna(0).to_numpy(),
                    rng.integers(0, len(phantom.LOBES), len(images))).astype(int)
    effusion = images["Pleural Effusion"].to_numpy() * images.effusion_level.to_numpy()
    images["effusion_right"] = np.where(side != 1, effusion, 0.0)
    images["effusion_left"] = np.where(side != 0, effusion, 0.0)
    images["consolidation"] = images["Consolidation"] * images.consolidation_extent
    images["lobe"] = lobe
    images["edema"] = images["Edema"] * images.edema_intensity
    images["cardiomegaly"] = images["Cardiomegaly"]
    images["ap"] = (images.view == "AP").astype(int)

    patients = cohort.patients
    first_age = cohort.admissions.groupby("subject_id").age.min().reindex(patients.subject_id).to_numpy()
    anatomy = phantom.draw_anatomy(rng, patients.gender.to_numpy(), first_age,
                                   np.array([race_group(r) for r in patients.race]), config.race_cue)
    # each patient's own texture stream (used when texture_change < 1), from a stream of its own
    anatomy["texture_seed"] = _stream(config, _TEXTURE).integers(0, 2 ** 63, len(patients))
    anatomy.index = patients.subject_id.to_numpy()
    images = images.join(anatomy, on="subject_id")
    return pd.concat([images, phantom.draw_acquisition(rng, len(images), config.acquisition_jitter)], axis=1)


def planted_pairs(cohort: model.Cohort, images: pd.DataFrame, config: SyntheticCXRConfig) -> pd.DataFrame:
    """The ceiling: one row per (earlier, later) frontal image pair of one admission from
    different studies (any gap; the task applies its own gap rule) with, per label column,
    P(the later image's recorded label = 1 | the earlier image's true state, the drivers of
    every interval between), CheXpert among rows recorded as 0/1 (`model.recorded_probabilities`)."""
    posterior = model.chain_posteriors(cohort)  # [stay, i, j, finding]
    frontal = images.loc[images.view.isin(("AP", "PA")) & (images.hadm_id >= 0), ["dicom_id", "hadm_id", "index"]]
    pairs = frontal.merge(frontal, on="hadm_id", suffixes=("_prev", "_target"))
    pairs = pairs[pairs.index_prev < pairs.index_target].reset_index(drop=True)
    stay = pd.Index(cohort.admissions.hadm_id).get_indexer(pairs.hadm_id)
    truth = posterior[stay, pairs.index_prev.to_numpy(), pairs.index_target.to_numpy()]
    columns = model.recorded_probabilities(truth, config)
    return pd.DataFrame({"prev_image_id": pairs.dicom_id_prev, "target_image_id": pairs.dicom_id_target,
                         **{name: values.astype(np.float64) for name, values in columns.items()}})


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression={"method": "gzip", "compresslevel": 4, "mtime": 0})


def _clock(values) -> np.ndarray:
    return catalogue._clock(np.asarray(values, dtype="datetime64[s]"))


def write_synthetic_cxr(out_dir: Path, config: SyntheticCXRConfig, progress: bool = True) -> dict:
    """Generate the phantom into `out_dir` (see the module docstring); returns counts."""
    out_dir = Path(out_dir)
    cohort = draw_cohort(config)
    images = image_table(cohort, config)
    cxr, mimic4, truth = out_dir / CXR_DIR, out_dir / MIMIC4_DIR, out_dir / TRUTH_DIR
    _write_cxr_tables(cxr, cohort, images, config)
    _write_mimic4(mimic4, cohort, config, progress)
    planted = planted_pairs(cohort, images, config)
    _write_csv(planted, truth / "planted.csv.gz")
    states = cohort.studies[["subject_id", "study_id", "hadm_id", "index", "time", "view", *model.FINDINGS]]
    _write_csv(states.assign(time=_clock(states.time)), truth / "studies.csv.gz")
    intervals = cohort.intervals.assign(start=_clock(cohort.intervals.start), end=_clock(cohort.intervals.end))
    _write_csv(intervals, truth / "intervals.csv.gz")
    (truth / "config.json").write_text(json.dumps(asdict(config), indent=2))
    _render(cxr, images, config, progress)
    return {"patients": len(cohort.patients), "admissions": len(cohort.admissions), "studies": len(cohort.studies),
            "images": len(images), "planted_pairs": len(planted)}


def _write_cxr_tables(cxr: Path, cohort: model.Cohort, images: pd.DataFrame, config: SyntheticCXRConfig) -> None:
    rng = _stream(config, _LABELS)
    time = images.time.to_numpy().astype("datetime64[s]")
    day = time.astype("datetime64[D]")
    seconds = (time - day).astype(np.int64)
    study_time = (seconds // 3600) * 10000 + (seconds // 60 % 60) * 100 + seconds % 60 + rng.integers(0, 1000, len(
        images)) / 1000
    view_words = {"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral"}
    description = np.where(images.view == "AP", "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)")
    size = int(config.image_size)
    _write_csv(pd.DataFrame({
        "dicom_id": images.dicom_id, "subject_id": images.subject_id, "study_id": images.study_id,
        "PerformedProcedureStepDescription": description, "ViewPosition": images.view, "Rows": size, "Columns": size,
        "StudyDate": np.char.replace(np.datetime_as_string(day, unit="D"), "-", "").astype(np.int64),
        "StudyTime": np.char.mod("%.3f", study_time), "ProcedureCodeSequence_CodeMeaning": description,
        "ViewCodeSequence_CodeMeaning": images.view.map(view_words),
        "PatientOrientationCodeSequence_CodeMeaning": np.where((images.view == "AP") & (rng.random(len(images)) < 0.5),
                                                               "Recumbent", "Erect")}),
        cxr / "mimic-cxr-2.0.0-metadata.csv.gz")

    studies = cohort.studies
    recorded = model.record_chexpert(rng, studies[list(model.FINDINGS)].to_numpy(), config)
    chexpert = pd.DataFrame({"subject_id": studies.subject_id, "study_id": studies.study_id,
                             **{name: np.nan for name in CHEXPERT_COLUMNS}})
    for f, name in enumerate(model.FINDINGS):
        chexpert[name] = recorded[:, f]
    chexpert["No Finding"] = np.where(studies[list(model.FINDINGS)].to_numpy().max(axis=1) == 0, 1.0, np.nan)
    _write_csv(chexpert, cxr / "mimic-cxr-2.0.0-chexpert.csv.gz")

    subjects = cohort.patients.subject_id.to_numpy()
    split = pd.Series(rng.choice(["train", "validate", "test"], size=len(subjects), p=[0.98, 0.01, 0.01]),
                      index=subjects)
    _write_csv(pd.DataFrame({"dicom_id": images.dicom_id, "study_id": images.study_id,
                             "subject_id": images.subject_id, "split": split.loc[images.subject_id].to_numpy()}),
               cxr / "mimic-cxr-2.0.0-split.csv.gz")

    frontal = images[images.view != "LATERAL"]
    labels = model.record_imagenome(rng, frontal[list(model.FINDINGS)].to_numpy(), config)
    _write_csv(pd.DataFrame({"dicom_id": frontal.dicom_id, **labels}), cxr / IMAGENOME_CSV)


def _write_mimic4(root: Path, cohort: model.Cohort, config: SyntheticCXRConfig, progress: bool) -> None:
    rng = _stream(config, _EVENTS)
    patients = cohort.patients
    _write_csv(patients[catalogue.HEADERS["hosp/patients"].split(",")], root / "hosp/patients.csv.gz")
    adm = cohort.admissions
    m = len(adm)
    admissions = catalogue._frame(
        "hosp/admissions", subject_id=adm.subject_id.to_numpy(), hadm_id=adm.hadm_id.to_numpy(),
        admittime=_clock(adm.admittime), dischtime=_clock(adm.dischtime),
        admission_type=np.asarray(["EW EMER.", "URGENT", "OBSERVATION ADMIT"])[rng.choice(3, m, p=[.6, .3, .1])],
        admit_provider_id="P" + pd.Series(rng.integers(10000, 99999, m)).astype(str).to_numpy(),
        admission_location=np.asarray(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL"])[
            rng.choice(3, m, p=[.7, .2, .1])],
        discharge_location=np.asarray(["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY"])[rng.integers(0, 3, m)],
        insurance=np.asarray(["Medicare", "Medicaid", "Other"])[rng.choice(3, m, p=[.5, .15, .35])],
        language="ENGLISH", marital_status=np.asarray(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"])[
            rng.integers(0, 4, m)], race=adm.race.to_numpy(), hospital_expire_flag=0)
    _write_csv(admissions, root / "hosp/admissions.csv.gz")
    intime = adm.admittime.to_numpy() + 30 * catalogue.MINUTE
    outtime = adm.dischtime.to_numpy() - 15 * catalogue.MINUTE
    unit = np.asarray(["Medical Intensive Care Unit (MICU)", "Cardiac Vascular Intensive Care Unit (CVICU)",
                       "Medical/Surgical Intensive Care Unit (MICU/SICU)"])[rng.integers(0, 3, m)]
    _write_csv(catalogue._frame(
        "icu/icustays", subject_id=adm.subject_id.to_numpy(), hadm_id=adm.hadm_id.to_numpy(),
        stay_id=adm.stay_id.to_numpy(), first_careunit=unit, last_careunit=unit, intime=_clock(intime),
        outtime=_clock(outtime), los=np.round((outtime - intime).astype("timedelta64[s]").astype(np.int64) / 86400, 4)),
        root / "icu/icustays.csv.gz")
    _write_csv(catalogue._frame("hosp/d_labitems", **{c: catalogue.D_LABITEMS[c].to_numpy()
                                                      for c in catalogue.D_LABITEMS}), root / "hosp/d_labitems.csv.gz")
    _write_csv(catalogue._frame("icu/d_items", **{c: catalogue.D_ITEMS[c].to_numpy() for c in catalogue.D_ITEMS}),
               root / "icu/d_items.csv.gz")

    writer = catalogue.EventWriter(cohort)
    studies = cohort.studies[cohort.studies.hadm_id >= 0]
    with contextlib.ExitStack() as stack:
        handles = {}
        for table in catalogue.EVENT_TABLES:
            path = root / f"{table}.csv.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            handles[table] = stack.enter_context(gzip.open(path, "wt", compresslevel=4, newline=""))
            handles[table].write(catalogue.HEADERS[table] + "\n")
        blocks = range(0, m, EVENT_BLOCK)
        for number, first in enumerate(tqdm(blocks, desc="phantom events", disable=not progress, leave=False)):
            block = adm.iloc[first:first + EVENT_BLOCK]
            hadm = block.hadm_id.to_numpy()
            frames = writer.events(_stream(config, _EVENTS, number + 1), block, studies[studies.hadm_id.isin(hadm)],
                                   cohort.intervals[cohort.intervals.hadm_id.isin(hadm)])
            for table, parts in frames.items():
                parts = [p for p in parts if len(p)]
                if parts:
                    pd.concat(parts, ignore_index=True).to_csv(handles[table], header=False, index=False)


def _render(cxr: Path, images: pd.DataFrame, config: SyntheticCXRConfig, progress: bool) -> None:
    size, quality = int(config.image_size), int(config.jpeg_quality)
    paths = [cxr / image_path(s, t, d) for s, t, d in zip(images.subject_id, images.study_id, images.dicom_id)]
    for folder in sorted({p.parent for p in paths}):
        folder.mkdir(parents=True, exist_ok=True)
    lateral = (images.view == "LATERAL").to_numpy()
    chunks = [(draw, np.flatnonzero(mask)[i:i + RENDER_CHUNK])
              for draw, mask in ((partial(phantom.render_frontal, texture_change=config.texture_change), ~lateral),
                                 (phantom.render_lateral, lateral))
              for i in range(0, int(mask.sum()), RENDER_CHUNK)]
    for number, (draw, rows) in enumerate(tqdm(chunks, desc="phantom images", disable=not progress, leave=False)):
        pixels = draw(images.iloc[rows], size, _stream(config, _RENDER, number))
        for row, array in zip(rows, pixels):  # one JPEG encode per image
            Image.fromarray(array).save(paths[row], format="JPEG", quality=quality)


def read_planted(out_dir: Path) -> pd.DataFrame:
    """The planted ceiling table written by `write_synthetic_cxr`."""
    return pd.read_csv(Path(out_dir) / TRUTH_DIR / "planted.csv.gz", dtype={"prev_image_id": str,
                                                                          "target_image_id": str})
