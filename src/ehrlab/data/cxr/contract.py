"""What the chest X-ray forecasting family (seed 004) passes between its rooms.

A CXR source (`data/sources/mimic_cxr.py`, `cxr_folder.py`, `synthetic_cxr.py`) reads raw
files into `CXRTables`; the `cxr_forecast` task (`data/tasks/cxr.py`) turns them into
(previous image, events, target image) triples; the evaluation (`evaluation/cxr/`) reads
`ImageSet` (to train its evaluators) and `ForecastReference` (to judge predictions). Nothing
here knows about models.

Label columns are named ``<label set>:<finding>``: ``chexpert:Edema`` (study-level CheXpert
labels of MIMIC-CXR-JPG), ``imagenome:lung opacity`` (Chest ImaGenome attributes, image
level), ``label:<finding>`` (a `cxr_folder` user's own). Raw values are 1 (present), 0
(absent), -1 (uncertain: CheXpert only) and NaN (not mentioned); how a task turns them into
targets is the task's documented policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ehrlab.data.schema import check_subject_ids

LABEL_SEPARATOR = ":"
CHEXPERT = "chexpert"
IMAGENOME = "imagenome"
FOLDER_LABELS = "label"
# The label sets in the order a report prefers its headline set (seed 004 §4.3.1: "we
# mainly focus on" Chest ImaGenome).
LABEL_SETS = (IMAGENOME, CHEXPERT, FOLDER_LABELS)

# Seed 004 Table 8 / Appendix C.1.2: the four CheXpert findings evaluated.
CHEXPERT_FINDINGS = ("Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# Seed 004 Table 7: the ten Chest ImaGenome attributes (spelled as in its scene graphs).
IMAGENOME_FINDINGS = ("consolidation", "enlarged cardiac silhouette", "enlarged hilum", "lung opacity",
                      "mediastinal widening", "pleural effusion", "pneumonia", "pneumothorax",
                      "pulmonary edema/hazy opacity", "vascular congestion")

# Frontal views (seed 004 Appendix A.2).
FRONTAL_VIEWS = ("PA", "AP")

SEX_IDS = {"F": 0, "M": 1}  # 2 = unknown
UNKNOWN_SEX = 2
# Seed 004 Table 3 scores race as Asian / Black / White (the TorchXRayVision race model's
# classes); everything else is "other" and left out of the race AUROC.
RACE_GROUPS = ("ASIAN", "BLACK", "WHITE")

IMAGE_COLUMNS = ["subject_id", "stay_id", "study_id", "image_id", "path", "time", "view", "sex", "age", "race"]
IMAGE_DTYPES = {
    "subject_id": "int64",
    "stay_id": "int64",  # hadm_id for MIMIC; a `cxr_folder` user's stay_id, else one stay per subject
    "study_id": "int64",
    "image_id": "str",  # dicom_id for MIMIC-CXR
    "path": "str",  # absolute path of the image file
    "time": "datetime64[us]",
    "view": "str",
    "sex": "str",  # "F", "M" or "U"
    "age": "float64",  # years at the image's stay; NaN unknown
    "race": "str",  # free text as in the source; "UNKNOWN" where absent
}
EVENT_COLUMNS = ["subject_id", "time", "table", "text"]
EVENT_DTYPES = {"subject_id": "int64", "time": "datetime64[us]", "table": "str", "text": "str"}


def label_columns(frame: pd.DataFrame) -> list[str]:
    """The ``<set>:<finding>`` columns of an image table, in table order."""
    return [c for c in frame.columns if LABEL_SEPARATOR in c and c.split(LABEL_SEPARATOR, 1)[0] in LABEL_SETS]


def conform_images(images: pd.DataFrame) -> pd.DataFrame:
    """A reader's image table as the contract has it: IMAGE_COLUMNS with IMAGE_DTYPES, then
    the label columns as float64 (sorted by set, then finding); subject ids below the
    synthetic range (`ehrlab.data.schema.check_subject_ids`)."""
    labels = sorted(label_columns(images), key=lambda c: tuple(c.split(LABEL_SEPARATOR, 1)))
    out = images.loc[:, IMAGE_COLUMNS].astype(IMAGE_DTYPES)
    for column in labels:
        out[column] = pd.to_numeric(images[column], errors="coerce").astype("float64")
    check_subject_ids(out["subject_id"], "images")
    return out.reset_index(drop=True)


def conform_events(events: pd.DataFrame) -> pd.DataFrame:
    """A reader's event table as the contract has it (EVENT_COLUMNS with EVENT_DTYPES)."""
    return events.loc[:, EVENT_COLUMNS].astype(EVENT_DTYPES).reset_index(drop=True)


def race_group(race: str | None) -> str:
    """MIMIC's free-text race ("BLACK/AFRICAN AMERICAN", "WHITE - RUSSIAN", "ASIAN - CHINESE")
    as one of RACE_GROUPS, or "OTHER"."""
    text = str(race or "").upper()
    for group in RACE_GROUPS:
        if text.startswith(group):
            return group
    return "OTHER"


@dataclass
class CXRTables:
    """The output of every CXR reader.

    images: one row per image of a view in `views`, taken inside a stay of an eligible
        patient (IMAGE_COLUMNS with IMAGE_DTYPES, then label columns ``<set>:<finding>``
        as float64 with 1 / 0 / -1 / NaN).
    events: one row per selected event of those patients inside their stays
        (EVENT_COLUMNS): `table` is the source table ("labevents"), `text` the event as
        seed 004 Appendix A.4 writes it ("labevents itemid pO2 valuenum 85 ...").
    counts: everything dropped and why (data_stats.json), as in `CanonicalTables`.
    planted: a synthetic source's ground truth, else None: one row per (earlier image,
        later image) of a stay with `prev_image_id`, `target_image_id` and, per label
        column, the true probability that the later image's label is 1 given the earlier
        image's state and the events between (the ceiling of seed 004's task).
    """

    images: pd.DataFrame
    events: pd.DataFrame
    counts: dict[str, int]
    planted: pd.DataFrame | None = None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.images.to_parquet(folder / "images.parquet", index=False)
        self.events.to_parquet(folder / "events.parquet", index=False)
        if self.planted is not None:
            self.planted.to_parquet(folder / "planted.parquet", index=False)
        (folder / "counts.json").write_text(json.dumps(self.counts, indent=2))

    @classmethod
    def load(cls, folder: Path) -> CXRTables:
        planted = folder / "planted.parquet"
        return cls(images=pd.read_parquet(folder / "images.parquet"),
                   events=pd.read_parquet(folder / "events.parquet"),
                   counts=json.loads((folder / "counts.json").read_text()),
                   planted=pd.read_parquet(planted) if planted.exists() else None)


@dataclass
class ImageSet:
    """The images of one split, each once, with what evaluators learn from them.

    images uint8 [N, S, S] (grey, resized); labels float32 [N, F] in {0, 1, NaN} (NaN: not
    evaluable, per the task's policy) for `findings` (label column names); age float32 [N]
    (NaN unknown); sex int64 [N] (SEX_IDS, 2 unknown); race: RACE_GROUPS or "OTHER" per image.
    """

    images: np.ndarray
    labels: np.ndarray
    findings: list[str]
    age: np.ndarray
    sex: np.ndarray
    race: np.ndarray


@dataclass
class ForecastReference:
    """The pairs of one split in a fixed order, which predictions follow row by row.

    prev_labels / target_labels float32 [N, F] in {0, 1, NaN}; prev_images / target_images
    uint8 [N, S, S]; age, sex, race of the target image as in ImageSet; planted float32
    [N, F] (the synthetic source's true posterior) or None; pair_id, subject_id int64 [N].
    """

    pair_id: np.ndarray
    subject_id: np.ndarray
    findings: list[str]
    prev_labels: np.ndarray
    target_labels: np.ndarray
    prev_images: np.ndarray
    target_images: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    race: np.ndarray
    planted: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
