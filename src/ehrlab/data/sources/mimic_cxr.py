"""MIMIC-CXR-JPG 2.0.0 linked to MIMIC-IV (v2.x): the images and events of seed 004.

Seed 004 Appendix A (EHRXDiff) links the two databases by `subject_id` and time:

- Images (`mimic-cxr-2.0.0-metadata.csv[.gz]`): the views in `views` (PA and AP: the frontal
  ones, A.2). The image time is `StudyDate` (YYYYMMDD) joined with `StudyTime` (HHMMSS.fff, a
  float: the fraction is dropped and the rest zero-padded to six digits, as the authors do:
  9.5 is 00:00:09, 235959.123 is 23:59:59).
- An image belongs to the admission with admittime < t <= dischtime (A.1/A.2; the authors'
  code: strictly after admission, up to discharge included). An image inside two overlapping
  admissions goes to the earlier one (counted `images_in_several_stays`).
- Adults (A.3): age = year(admittime) - anchor_year + anchor_age, kept if age >= `min_age`
  (18). The paper's text says "age > 18"; the authors' code, which built the paper's cohort,
  keeps age >= 18, and so does this reader (MIMIC-IV itself holds only patients aged 18 or
  more at their anchor year).
- Labels: the study-level CheXpert file (`mimic-cxr-2.0.0-chexpert.csv[.gz]`, optional)
  becomes `chexpert:<Finding>` columns on every image of the study (all 14 findings, raw
  values 1 / 0 / -1 / NaN); Chest ImaGenome (`imagenome_root`: its silver scene graphs) or a
  per-image CSV (`label_csv`) becomes `imagenome:<finding>` columns (1 / 0 / NaN) for the ten
  findings of Table 7 (see `read_scene_graph_labels`).
- The official split file (`mimic-cxr-2.0.0-split.csv[.gz]`) is not used to split: seed 004
  splits its pairs by patient itself (the `cxr_forecast` task does, by seed); the number of
  linked images in each official split is recorded in `counts` for reference.
- Events: the seven tables of `ehrlab.data.cxr.event_text.MIMIC_EVENT_TABLES`, each as the
  selection (`data.source.event_selection`, see `event_selection.py`) says, of the linked
  subjects only, with an event time inside [admittime, dischtime] of a stay that has a linked
  image, already as text (Appendix A.4). hadm_id is not used to match events (labs drawn in
  the emergency department before admission have none); the time window is. A missing event
  table is one warning line and a count, not an error.

Large tables (chartevents ~30 GB, labevents ~18 GB uncompressed) are streamed in blocks
through `tables.read_csv`, reading only the text, time and filter columns, and reduced block
by block: subject set, then item selection, then the stay windows, then the text is built
(column-wise) so only (subject_id, time, text) of the kept rows is ever held.

The image files are not opened here (the task decodes them); that the `files/` folder and a
sample of the linked images exist is checked before the event tables are streamed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ehrlab.data.cxr.contract import (
    CHEXPERT,
    EVENT_DTYPES,
    FRONTAL_VIEWS,
    IMAGENOME,
    IMAGENOME_FINDINGS,
    LABEL_SEPARATOR,
    CXRTables,
    conform_events,
    conform_images,
)
from ehrlab.data.cxr.event_selection import EventSelection
from ehrlab.data.cxr.event_text import MIMIC_EVENT_TABLES, event_text, relabel
from ehrlab.data.sources.base import Source, file_fingerprints
from ehrlab.data.sources.tables import (
    check_on_bad_lines,
    check_root,
    csv_header,
    find_table,
    read_csv,
    read_table,
    require_table,
)
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

INT, FLOAT, STR = pa.int64(), pa.float64(), pa.string()
METADATA = "mimic-cxr-2.0.0-metadata"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert"
SPLIT_FILE = "mimic-cxr-2.0.0-split"
# The 14 CheXpert labeler findings of mimic-cxr-2.0.0-chexpert.csv.
CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                    "Pneumothorax", "Support Devices")
SCENE_GRAPHS = "silver_dataset/scene_graph"
# Linked images whose files are checked to exist before the (long) event reading starts.
IMAGE_SAMPLE = 16
_EVENT_SCHEMA = pa.schema([("subject_id", INT), ("time", pa.timestamp("us")), ("text", STR)])


class MIMICCXRSource(Source):
    """Reads MIMIC-CXR-JPG 2.0.0 + MIMIC-IV into `CXRTables` (seed 004 Appendix A).

    Args:
        cxr_root: the MIMIC-CXR-JPG 2.0.0 folder (metadata / chexpert / split CSVs and `files/`).
        mimic4_root: the MIMIC-IV folder holding `hosp/` and `icu/`.
        event_selection: table -> rule (`conf/data/event_selection/*.yaml`); None reads all
            seven tables unfiltered.
        views: ViewPosition values kept (default PA, AP).
        min_age: youngest age kept, inclusive (see the module docstring).
        imagenome_root: Chest ImaGenome 1.0.0 folder (or its `silver_dataset/scene_graph`
            folder, unzipped) for `imagenome:` labels; None: none.
        label_csv: a per-image CSV instead: `dicom_id` and one column per finding (1 / 0 /
            blank), read into `imagenome:<column>` columns.
        on_bad_lines: "error" or "skip" rows with a wrong number of fields (`tables.read_csv`).
    """

    name = "mimic_cxr"
    tables_type = CXRTables

    def __init__(
        self,
        cxr_root: str | Path | None,
        mimic4_root: str | Path | None,
        event_selection=None,
        views: Sequence[str] = FRONTAL_VIEWS,
        min_age: float = 18,
        imagenome_root: str | Path | None = None,
        label_csv: str | Path | None = None,
        on_bad_lines: str = "error",
    ):
        self.cxr_root = _directory(cxr_root, "data.cxr_root", "the MIMIC-CXR-JPG 2.0.0 folder (holding "
                                   "mimic-cxr-2.0.0-metadata.csv.gz and files/)")
        self.mimic4_root = check_root(mimic4_root, "mimic4")
        self.selection = EventSelection(event_selection)
        views = [views] if isinstance(views, str) else list(views)
        self.views = tuple(str(v).strip().upper() for v in views)
        if not self.views:
            raise UserInputError("data.source.views is empty: give the ViewPosition values to keep, e.g. [PA, AP].")
        try:
            self.min_age = float(min_age)
        except (TypeError, ValueError):
            raise UserInputError(f"data.source.min_age must be a number of years, got {min_age!r}.") from None
        if imagenome_root is not None and label_csv is not None:
            raise UserInputError("data.source.imagenome_root and data.source.label_csv both give imagenome: labels; "
                                 "set one of them.")
        self.scene_graphs = None if imagenome_root is None else _scene_graph_folder(imagenome_root)
        self.label_csv = None if label_csv is None else _file(label_csv, "data.source.label_csv")
        self.on_bad_lines = check_on_bad_lines(on_bad_lines)

        self.paths = {
            "metadata": require_table(self.cxr_root, METADATA, "data.cxr_root (MIMIC-CXR-JPG)"),
            "chexpert": find_table(self.cxr_root, CHEXPERT_FILE),
            "split": find_table(self.cxr_root, SPLIT_FILE),
            "patients": require_table(self.mimic4_root, "hosp/patients", "data.root (MIMIC-IV)"),
            "admissions": require_table(self.mimic4_root, "hosp/admissions", "data.root (MIMIC-IV)"),
        }
        self.event_paths = {table: find_table(self.mimic4_root, spec.file)
                            for table, spec in MIMIC_EVENT_TABLES.items() if self.selection.reads(table)}
        self.dictionaries = {}
        for table, path in self.event_paths.items():
            spec = MIMIC_EVENT_TABLES[table]
            if path is None or spec.dictionary is None or spec.dictionary in self.dictionaries:
                continue
            self.dictionaries[spec.dictionary] = find_table(self.mimic4_root, spec.dictionary)
        for table, path in self.event_paths.items():
            dictionary = MIMIC_EVENT_TABLES[table].dictionary
            if path is not None and self.selection.needs_dictionary(table) and self.dictionaries[dictionary] is None:
                raise UserInputError(f"data.source.event_selection.{table} selects items by category or label, "
                                     f"which needs {dictionary}.csv(.gz) under {self.mimic4_root}; it is missing.")
        self.images_folder = self.cxr_root / "files"
        if not self.images_folder.is_dir():
            raise UserInputError(f"MIMIC-CXR-JPG images folder {self.images_folder} is missing: data.cxr_root must "
                                 f"hold files/p10/... as published (the reader checks the paths, the task decodes "
                                 f"the JPEGs).")

    def cache_identity(self) -> dict:
        inputs = [*self.paths.values(), *self.event_paths.values(), *self.dictionaries.values(), self.label_csv]
        identity = {
            "files": file_fingerprints(inputs),
            "event_selection": self.selection.identity(),
            "views": list(self.views),
            "min_age": self.min_age,
            "on_bad_lines": self.on_bad_lines,
        }
        if self.scene_graphs is not None:
            # Hashing ~240k scene graph files per run would cost minutes: the folder's path, file
            # count and modification time stand for them (a re-extracted folder changes its mtime).
            stat = self.scene_graphs.stat()
            identity["scene_graphs"] = (str(self.scene_graphs), sum(1 for _ in self.scene_graphs.iterdir()),
                                        stat.st_mtime_ns)
        return identity

    def read(self) -> CXRTables:
        counts: dict[str, int] = {}
        images = self._link_images(counts)
        images = self._add_labels(images, counts)
        self._check_image_files(images)
        events = self._read_events(images, counts)
        counts["images"] = len(images)
        counts["subjects"] = int(images["subject_id"].nunique())
        counts["stays"] = int(images["stay_id"].nunique())
        counts["events"] = len(events)
        return CXRTables(images=conform_images(images), events=conform_events(events), counts=counts)

    # -- images ----------------------------------------------------------------------------

    def _read(self, path: Path, columns: dict, counts: dict, **options) -> pd.DataFrame:
        return read_table(path, columns, on_bad_lines=self.on_bad_lines, counts=counts, **options)

    def _link_images(self, counts: dict) -> pd.DataFrame:
        """Frontal images of adults inside an admission, one row per image (IMAGE_COLUMNS)."""
        metadata = self._read(self.paths["metadata"], {"dicom_id": STR, "subject_id": INT, "study_id": INT,
                                                       "viewposition": STR, "studydate": INT, "studytime": FLOAT},
                              counts)
        counts["metadata_images"] = len(metadata)
        view = metadata["viewposition"].fillna("").str.strip().str.upper()
        frontal = view.isin(self.views)
        counts["images_other_view"] = int((~frontal).sum())
        metadata = metadata.loc[frontal].assign(view=view[frontal])
        metadata["time"] = study_times(metadata["studydate"], metadata["studytime"], self.paths["metadata"])

        patients = self._read(self.paths["patients"], {"subject_id": INT, "gender": STR, "anchor_age": INT,
                                                       "anchor_year": INT}, counts)
        admissions = self._read(self.paths["admissions"],
                                {"subject_id": INT, "hadm_id": INT, "admittime": STR, "dischtime": STR, "race": STR,
                                 "ethnicity": STR},
                                counts, dates=["admittime", "dischtime"],
                                required=["subject_id", "hadm_id", "admittime", "dischtime"])
        # MIMIC-IV v1 called the race column `ethnicity`.
        admissions["race"] = admissions["race"].fillna(admissions.pop("ethnicity"))
        admissions = admissions.dropna(subset=["admittime", "dischtime"])

        candidates = metadata.merge(admissions, on="subject_id", how="inner")
        inside = (candidates["admittime"] < candidates["time"]) & (candidates["time"] <= candidates["dischtime"])
        candidates = candidates.loc[inside].sort_values(["dicom_id", "admittime"], kind="stable")
        several = candidates["dicom_id"].duplicated()
        counts["images_in_several_stays"] = int(candidates.loc[several, "dicom_id"].nunique())
        linked = candidates.loc[~several]
        counts["images_outside_stays"] = len(metadata) - len(linked)

        linked = linked.merge(patients, on="subject_id", how="left")
        known = linked["anchor_age"].notna() & linked["anchor_year"].notna()
        counts["images_unknown_patient"] = int((~known).sum())
        linked = linked.loc[known]
        age = linked["admittime"].dt.year - linked["anchor_year"] + linked["anchor_age"]
        adult = age >= self.min_age
        counts["images_under_min_age"] = int((~adult).sum())
        linked = linked.loc[adult].assign(age=age[adult].astype("float64"))
        if linked.empty:
            raise UserInputError(
                f"mimic_cxr: no image of {self.paths['metadata']} is a {'/'.join(self.views)} view of a patient aged "
                f"{self.min_age:g}+ taken inside an admission of {self.paths['admissions']} ({json.dumps(counts)}): "
                f"check that data.cxr_root and data.root are MIMIC-CXR-JPG and MIMIC-IV of matching releases."
            )

        subject = linked["subject_id"].astype("int64").astype(str)
        study = linked["study_id"].astype("int64").astype(str)
        paths = (str(self.images_folder) + "/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/"
                 + linked["dicom_id"] + ".jpg")
        gender = linked["gender"].fillna("").str.strip().str.upper()
        return pd.DataFrame({
            "subject_id": linked["subject_id"],
            "stay_id": linked["hadm_id"],
            "study_id": linked["study_id"],
            "image_id": linked["dicom_id"],
            "path": paths,
            "time": linked["time"],
            "view": linked["view"],
            "sex": gender.where(gender.isin(["F", "M"]), "U"),
            "age": linked["age"],
            "race": linked["race"].fillna("UNKNOWN"),
            # kept for the event windows, dropped by conform_images
            "admittime": linked["admittime"],
            "dischtime": linked["dischtime"],
        }).sort_values(["subject_id", "time", "image_id"], ignore_index=True)

    def _add_labels(self, images: pd.DataFrame, counts: dict) -> pd.DataFrame:
        if self.paths["chexpert"] is None:
            log.warning("mimic_cxr: %s.csv(.gz) not found in %s: no chexpert: labels (the CheXpert metrics are off)",
                        CHEXPERT_FILE, self.cxr_root)
            counts["chexpert_file_missing"] = 1
        else:
            images = images.merge(self._read_chexpert(counts), on=["subject_id", "study_id"], how="left")
        if self.paths["split"] is not None:
            split = self._read(self.paths["split"], {"dicom_id": STR, "split": STR}, counts)
            official = images[["image_id"]].merge(split, left_on="image_id", right_on="dicom_id", how="left")
            for name, n in official["split"].fillna("none").value_counts().items():
                counts[f"official_split_{name}_images"] = int(n)
        if self.scene_graphs is not None:
            labels = read_scene_graph_labels(self.scene_graphs, images["image_id"], counts)
            images = images.merge(labels, left_on="image_id", right_index=True, how="left")
        elif self.label_csv is not None:
            labels = read_label_csv(self.label_csv, self.on_bad_lines, counts)
            known = images["image_id"].isin(labels.index)
            counts["images_without_label_csv_row"] = int((~known).sum())
            images = images.merge(labels, left_on="image_id", right_index=True, how="left")
        return images

    def _read_chexpert(self, counts: dict) -> pd.DataFrame:
        """Study-level CheXpert labels as `chexpert:<Finding>` columns (its own header spelling)."""
        path = self.paths["chexpert"]
        header = {name.lower(): name.strip() for name in csv_header(path)}
        findings = {c.lower(): c for c in CHEXPERT_COLUMNS if c.lower() in header}
        if not findings:
            raise UserInputError(f"{path}: none of the CheXpert columns ({', '.join(CHEXPERT_COLUMNS)}) is in its "
                                 f"header ({', '.join(header.values())}).")
        table = read_csv(path, {"subject_id": INT, "study_id": INT, **{c: FLOAT for c in findings}},
                         on_bad_lines=self.on_bad_lines, counts=counts).to_pandas()
        table = table.drop_duplicates(["subject_id", "study_id"], keep="last")
        return table.rename(columns={c: f"{CHEXPERT}{LABEL_SEPARATOR}{name}" for c, name in findings.items()})

    def _check_image_files(self, images: pd.DataFrame) -> None:
        """Evenly spaced linked images must exist: a missing download fails now, not hours later."""
        positions = np.unique(np.linspace(0, len(images) - 1, min(IMAGE_SAMPLE, len(images))).astype(int))
        sample = images["path"].to_numpy()[positions]
        missing = [p for p in sample if not Path(p).is_file()]
        if missing:
            raise UserInputError(
                f"mimic_cxr: {len(missing)} of {len(sample)} sampled image files are missing, e.g. "
                f"{', '.join(missing[:3])}: data.cxr_root must hold MIMIC-CXR-JPG's files/ folder as published "
                f"(files/pNN/pSUBJECT/sSTUDY/DICOM.jpg), fully downloaded."
            )

    # -- events ----------------------------------------------------------------------------

    def _read_events(self, images: pd.DataFrame, counts: dict) -> pd.DataFrame:
        stays = images[["subject_id", "admittime", "dischtime"]].drop_duplicates(ignore_index=True)
        subjects = pa.array(np.unique(stays["subject_id"].to_numpy()), INT)
        missing = [MIMIC_EVENT_TABLES[t].file for t, p in self.event_paths.items() if p is None]
        if missing:
            log.warning("mimic_cxr: event table(s) %s not found under %s: read without them", ", ".join(missing),
                        self.mimic4_root)
        frames = []
        for table, path in self.event_paths.items():
            if path is None:
                counts[f"{table}_table_missing"] = 1
                continue
            rows = self._read_table_events(table, path, subjects, stays, counts)
            counts[f"{table}_events"] = rows.num_rows
            frames.append(rows.to_pandas().assign(table=table))
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_DTYPES.items()})
        events = pd.concat(frames, ignore_index=True)
        return events.sort_values(["subject_id", "time"], kind="stable", ignore_index=True)

    def _dictionary(self, name: str | None) -> pd.DataFrame | None:
        """itemid, label, category of d_items / d_labitems (read once per run)."""
        if name is None or self.dictionaries.get(name) is None:
            return None
        cache = self.__dict__.setdefault("_dictionary_cache", {})
        if name not in cache:
            cache[name] = read_table(self.dictionaries[name], {"itemid": INT, "label": STR, "category": STR},
                                     on_bad_lines=self.on_bad_lines, required=["itemid", "label"])
        return cache[name]

    def _read_table_events(self, table: str, path: Path, subjects: pa.Array, stays: pd.DataFrame,
                           counts: dict) -> pa.Table:
        spec = MIMIC_EVENT_TABLES[table]
        dictionary = self._dictionary(spec.dictionary)
        row_filter = self.selection.row_filter(table, dictionary)
        header = [name.lower() for name in csv_header(path)]
        text_columns = spec.text_columns(header)
        filter_columns = row_filter.columns if row_filter is not None else []
        columns = {"subject_id": INT, spec.time: STR,
                   **{c: (INT if c == "itemid" else STR) for c in [*text_columns, *filter_columns]}}
        required = ["subject_id", spec.time, spec.key, *filter_columns]
        if dictionary is not None:
            ids = pa.array(dictionary["itemid"].to_numpy(), INT)
            labels = pa.array(dictionary["label"].str.strip(), STR)
        for reason in ("rows_read", "other_subjects", "not_selected", "missing_time", "outside_stays"):
            counts[f"{table}_{reason}"] = 0

        def select(batch: pa.RecordBatch) -> pa.RecordBatch:
            counts[f"{table}_rows_read"] += len(batch)
            batch = _keep(batch, pc.fill_null(pc.is_in(batch["subject_id"], value_set=subjects), False),
                          counts, f"{table}_other_subjects")
            if row_filter is not None:
                batch = _keep(batch, row_filter.mask(batch), counts, f"{table}_not_selected")
            batch = _keep(batch, pc.is_valid(batch[spec.time]), counts, f"{table}_missing_time")
            times = _timestamps(batch[spec.time], path, spec.time)
            inside = _inside_stays(batch["subject_id"], times, stays)
            counts[f"{table}_outside_stays"] += len(batch) - int(inside.sum())
            batch, times = batch.filter(pa.array(inside)), times.filter(pa.array(inside))
            values = {c: (relabel(batch[c], ids, labels) if c == "itemid" and dictionary is not None else batch[c])
                      for c in text_columns if c in batch.schema.names}
            return pa.RecordBatch.from_arrays([batch["subject_id"], times, event_text(table, values)],
                                              schema=_EVENT_SCHEMA)

        return read_csv(path, columns, required=required, select=select, on_bad_lines=self.on_bad_lines,
                        counts=counts)


# -- helpers shared with the cxr_folder reader -----------------------------------------------


def study_times(study_date: pd.Series, study_time: pd.Series, path: Path) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.fff, fraction dropped) as timestamps.

    Vectorised: the digits are split arithmetically; an impossible date or clock time is an
    error naming the file's line.
    """
    clock = np.floor(study_time.to_numpy(dtype="float64"))
    hours, minutes, seconds = clock // 10000, (clock // 100) % 100, clock % 100
    bad_clock = ~np.isfinite(clock) | (clock < 0) | (hours > 23) | (minutes > 59) | (seconds > 59)
    dates = pd.to_datetime(study_date.astype("Int64").astype(str), format="%Y%m%d", errors="coerce")
    bad = bad_clock | dates.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserInputError(
            f"{path}: line {study_date.index[row] + 2} has StudyDate {study_date.iloc[row]!r} / StudyTime "
            f"{study_time.iloc[row]!r}, which is not a date (YYYYMMDD) and time (HHMMSS.fff)."
        )
    offset = pd.to_timedelta(hours * 3600 + minutes * 60 + seconds, unit="s")
    return (dates + pd.TimedeltaIndex(offset)).astype("datetime64[us]").set_axis(study_date.index)


def read_scene_graph_labels(folder: Path, image_ids: pd.Series, counts: dict) -> pd.DataFrame:
    """`imagenome:<finding>` (1 / 0 / NaN) per image from Chest ImaGenome silver scene graphs.

    Each `<dicom_id>_SceneGraph.json` lists regions under "attributes"; a region's own
    "attributes" is one list per report phrase of ``"<category>|yes|<finding>"`` /
    ``"...|no|..."`` strings. As in the authors' code (which reads the same relations from the
    tabular export), the last phrase that mentions a finding decides it for that region, and the
    image is positive if any region is, 0 if the finding is mentioned only negatively, NaN if not
    mentioned. Images without a scene graph get NaN (counted `images_without_scene_graph`). A loop
    over images: each is a separate JSON file.
    """
    wanted = set(IMAGENOME_FINDINGS)
    rows, missing = {}, 0
    for image_id in pd.unique(image_ids):
        path = folder / f"{image_id}_SceneGraph.json"
        if not path.is_file():
            missing += 1
            continue
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserInputError(f"{path}: not a readable scene graph JSON ({error}): re-extract Chest ImaGenome's "
                                 f"silver_dataset/scene_graph.") from None
        image = {}
        for region in graph.get("attributes", []) if isinstance(graph, dict) else []:
            state = {}
            for phrase in region.get("attributes", []) if isinstance(region, dict) else []:
                for relation in phrase if isinstance(phrase, list) else []:
                    parts = str(relation).split("|")
                    if len(parts) == 3 and parts[2] in wanted and parts[1] in ("yes", "no"):
                        state[parts[2]] = 1.0 if parts[1] == "yes" else 0.0
            for finding, value in state.items():
                image[finding] = max(image.get(finding, 0.0), value)
        rows[image_id] = image
    counts["images_without_scene_graph"] = missing
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(IMAGENOME_FINDINGS))
    return frame.astype("float64").add_prefix(f"{IMAGENOME}{LABEL_SEPARATOR}")


def read_label_csv(path: Path, on_bad_lines: str, counts: dict) -> pd.DataFrame:
    """A per-image label CSV (`dicom_id` or `image_id`, then one column per finding, 1 / 0 / blank)
    as `imagenome:<finding>` columns indexed by image id."""
    header = [name.strip() for name in csv_header(path)]
    lowered = [name.lower() for name in header]
    key = next((k for k in ("dicom_id", "image_id") if k in lowered), None)
    if key is None:
        raise UserInputError(f"{path}: needs a dicom_id (or image_id) column; found {', '.join(header)}.")
    prefix = f"{IMAGENOME}{LABEL_SEPARATOR}"
    findings = {low: name.removeprefix(prefix).lower() for low, name in zip(lowered, header, strict=True)
                if low != key}
    if not findings:
        raise UserInputError(f"{path}: has no finding columns besides {key}.")
    table = read_csv(path, {key: STR, **{c: FLOAT for c in findings}}, on_bad_lines=on_bad_lines,
                     counts=counts).to_pandas()
    table = table.drop_duplicates(key, keep="last").set_index(key)
    return table.rename(columns={c: prefix + name for c, name in findings.items()})


def _keep(batch: pa.RecordBatch, mask: pa.Array, counts: dict, key: str) -> pa.RecordBatch:
    kept = batch.filter(mask)
    counts[key] += len(batch) - len(kept)
    return kept


def _timestamps(values: pa.Array, path: Path, column: str) -> pa.Array:
    try:
        return pc.cast(values, pa.timestamp("us"))
    except pa.ArrowInvalid as error:
        raise UserInputError(f"{path}: column {column} has an unparsable date ({error}); expected dates like "
                             f"2150-01-31 12:00:00.") from None


def _inside_stays(subject_ids: pa.Array, times: pa.Array, stays: pd.DataFrame) -> np.ndarray:
    """Whether each event lies in [admittime, dischtime] of one of its subject's stays."""
    events = pd.DataFrame({"subject_id": subject_ids.to_numpy(zero_copy_only=False),
                           "time": times.to_numpy(zero_copy_only=False), "row": np.arange(len(subject_ids))})
    pairs = events.merge(stays, on="subject_id", how="inner")
    hit = pairs.loc[(pairs["time"] >= pairs["admittime"]) & (pairs["time"] <= pairs["dischtime"]), "row"]
    inside = np.zeros(len(subject_ids), dtype=bool)
    inside[hit.to_numpy()] = True
    return inside


def _directory(value, option: str, what: str) -> Path:
    if value is None or str(value) in ("", "???"):
        raise UserInputError(f"{option} is not set: give {what}, e.g. {option}=/path/to/folder.")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserInputError(f"{option}={value} is not a directory: give {what}.")
    return path.resolve()


def _file(value, option: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserInputError(f"{option}={value} is not a file.")
    return path.resolve()


def _scene_graph_folder(root) -> Path:
    """The folder of `<dicom_id>_SceneGraph.json` files under a Chest ImaGenome root (or the folder itself)."""
    path = _directory(root, "data.source.imagenome_root", "the Chest ImaGenome 1.0.0 folder")
    for candidate in (path / SCENE_GRAPHS, path / "scene_graph", path):
        if candidate.is_dir() and next(candidate.glob("*_SceneGraph.json"), None) is not None:
            return candidate
    zipped = path / (SCENE_GRAPHS + ".zip")
    hint = f" ({zipped} must be unzipped first)" if zipped.exists() else ""
    raise UserInputError(f"data.source.imagenome_root={root}: no *_SceneGraph.json files in {path / SCENE_GRAPHS} "
                         f"or {path}{hint}.")

