"""Anyone's chest X-rays and events as one folder: `data=cxr_folder data.root=DIR`.

`DIR/images.csv`, one row per image:

| column       | required | meaning                                                                   |
|--------------|----------|---------------------------------------------------------------------------|
| subject_id   | yes      | integer patient id                                                        |
| image_id     | yes      | unique text id of the image                                               |
| path         | yes      | image file relative to DIR (PNG or JPEG, 8 or 16 bit, grey or RGB)        |
| time         | yes      | ISO 8601 (2150-01-31T08:30:00; an offset is converted to UTC)            |
| view         | yes      | PA, AP, LATERAL, ... (only `views` are kept; case ignored)                |
| sex          | no       | M / F (anything else: unknown)                                            |
| age          | no       | years                                                                     |
| race         | no       | free text (ASIAN..., BLACK..., WHITE... are scored, see contract.race_group) |
| stay_id      | no       | integer hospital stay; without it, all of a subject's images are one stay |
| study_id     | no       | integer study; without it, each image is its own study                    |
| label:<finding> | no    | 1 / 0 / blank (not stated), any number of such columns                    |

`DIR/events.csv`, one row per event: `subject_id, time, table, item, value` and optional
`unit`; its text is ``"<table> <item> <value> <unit>"`` (numbers rounded as in
`ehrlab.data.cxr.event_text`). Events of subjects without a kept image are dropped, counted.
Events are not windowed by stay (there are no admission times here): the task takes the
events between the two images of a pair.

Missing optional columns switch off what needs them (sex, age, race: the demographic
metrics; label columns: the diagnosis metrics), said once in the log; never an error. With
no study_id two images of one time are still never a pair (the task needs a strictly later
time). A missing file, a missing required column, an unparsable time (its line named), a
duplicate image_id or a missing image file (the first few named) is a `UserInputError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ehrlab.data.cxr.contract import (
    EVENT_DTYPES,
    FOLDER_LABELS,
    LABEL_SEPARATOR,
    CXRTables,
    conform_events,
    conform_images,
)
from ehrlab.data.cxr.event_selection import EventSelection, normalise_text
from ehrlab.data.cxr.event_text import join_fields
from ehrlab.data.sources.base import Source, file_fingerprints
from ehrlab.data.sources.tables import check_on_bad_lines, check_root, csv_header, read_csv
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

INT, FLOAT, STR = pa.int64(), pa.float64(), pa.string()
IMAGE_REQUIRED = ("subject_id", "image_id", "path", "time", "view")
EVENT_REQUIRED = ("subject_id", "time", "table", "item", "value")
# How many missing image paths an error names.
MISSING_SHOWN = 5


class CXRFolderSource(Source):
    """Reads `DIR/images.csv` and `DIR/events.csv` (see the module docstring) into `CXRTables`.

    Args:
        root: the folder DIR.
        event_selection: None (every event), or table -> all / none / {items: [...]}
            (`ehrlab.data.cxr.event_selection`, folder rules).
        views: view values kept (case-insensitive); None keeps every image.
        on_bad_lines: "error" or "skip" rows with a wrong number of fields.
    """

    name = "cxr_folder"
    tables_type = CXRTables

    def __init__(self, root: str | Path | None, event_selection=None, views: Sequence[str] | None = ("PA", "AP"),
                 on_bad_lines: str = "error"):
        self.root = check_root(root, self.name)
        self.selection = EventSelection(event_selection, tables=None)
        if views is not None:
            views = [views] if isinstance(views, str) else list(views)
            views = tuple(str(v).strip().upper() for v in views)
        self.views = views
        self.on_bad_lines = check_on_bad_lines(on_bad_lines)
        self.paths = {name: self.root / f"{name}.csv" for name in ("images", "events")}
        for path in self.paths.values():
            if not path.is_file():
                raise UserInputError(f"data=cxr_folder: {path} is missing: data.root must hold images.csv and "
                                     f"events.csv (README: your own chest X-ray data).")

    def cache_identity(self) -> dict:
        return {"files": file_fingerprints(list(self.paths.values())), "event_selection": self.selection.identity(),
                "views": None if self.views is None else list(self.views), "on_bad_lines": self.on_bad_lines}

    def read(self) -> CXRTables:
        counts: dict[str, int] = {}
        images = self._read_images(counts)
        events = self._read_events(images, counts)
        counts["images"] = len(images)
        counts["subjects"] = int(images["subject_id"].nunique())
        counts["events"] = len(events)
        return CXRTables(images=conform_images(images), events=conform_events(events), counts=counts)

    def _read_images(self, counts: dict) -> pd.DataFrame:
        path = self.paths["images"]
        header = [name.strip() for name in csv_header(path)]
        lowered = [name.lower() for name in header]
        labels = {low: name for low, name in zip(lowered, header, strict=True)
                  if low.startswith(FOLDER_LABELS + LABEL_SEPARATOR)}
        optional = {"sex": STR, "age": FLOAT, "race": STR, "stay_id": INT, "study_id": INT}
        columns = {"subject_id": INT, "image_id": STR, "path": STR, "time": STR, "view": STR, **optional,
                   **{c: FLOAT for c in labels}}
        frame = read_csv(path, columns, required=list(IMAGE_REQUIRED), on_bad_lines=self.on_bad_lines,
                         counts=counts).to_pandas()
        _no_nulls(frame, ["subject_id", "image_id", "path", "time"], path)
        frame["time"] = _iso_times(frame["time"], path)
        duplicated = frame["image_id"].duplicated()
        if duplicated.any():
            raise UserInputError(f"{path}: image_id {frame.loc[duplicated, 'image_id'].iloc[0]!r} appears more than "
                                 f"once (line {int(np.flatnonzero(duplicated)[0]) + 2}); image ids must be unique.")
        self._announce_missing(set(optional) - set(frame.columns), bool(labels))

        counts["images_listed"] = len(frame)
        view = frame["view"].fillna("").str.strip().str.upper()
        if self.views is not None:
            keep = view.isin(self.views)
            counts["images_other_view"] = int((~keep).sum())
            frame, view = frame.loc[keep], view[keep]
        if frame.empty:
            raise UserInputError(f"{path}: no image has a view in {list(self.views)}: set data.source.views to the "
                                 f"views your images.csv uses (or null for all).")
        files = [str(self.root / p) for p in frame["path"]]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise UserInputError(f"{path}: {len(missing)} image file(s) are missing, e.g. "
                                 f"{', '.join(missing[:MISSING_SHOWN])} (paths are relative to {self.root}).")
        n = len(frame)
        sex = frame["sex"].fillna("").str.strip().str.upper() if "sex" in frame else pd.Series("", index=frame.index)
        # No study_id: each image is its own study (numbered by row).
        study = frame["study_id"] if "study_id" in frame else pd.Series(np.arange(1, n + 1), index=frame.index)
        # No stay_id: one stay per subject.
        stay = frame["stay_id"] if "stay_id" in frame else frame["subject_id"]
        for name, values in (("stay_id", stay), ("study_id", study)):
            if values.isna().any():
                raise UserInputError(f"{path}: column {name} is blank on line {int(np.flatnonzero(values.isna())[0]) + 2}"
                                     f": fill it in every row, or drop the column.")
        images = pd.DataFrame({
            "subject_id": frame["subject_id"],
            "stay_id": stay,
            "study_id": study,
            "image_id": frame["image_id"].str.strip(),
            "path": files,
            "time": frame["time"],
            "view": view,
            "sex": sex.str[:1].where(sex.isin(["F", "M", "FEMALE", "MALE"]), "U"),
            "age": frame.get("age", np.nan),
            "race": frame["race"].fillna("UNKNOWN") if "race" in frame else "UNKNOWN",
        })
        for low, name in labels.items():
            images[f"{FOLDER_LABELS}{LABEL_SEPARATOR}{name.split(LABEL_SEPARATOR, 1)[1].strip()}"] = frame[low]
        return images.sort_values(["subject_id", "time", "image_id"], ignore_index=True)

    def _announce_missing(self, missing: set[str], has_labels: bool) -> None:
        off = []
        demographic = sorted(missing & {"sex", "age", "race"})
        if demographic:
            off.append(f"no {', '.join(demographic)} column(s): the {', '.join(demographic)} metric(s) are off")
        if not has_labels:
            off.append("no label:<finding> columns: the diagnosis (AUROC) metrics are off")
        if "stay_id" in missing:
            off.append("no stay_id: each subject's images form one stay")
        if "study_id" in missing:
            off.append("no study_id: each image is its own study")
        if off:
            log.warning("cxr_folder: %s: %s", self.paths["images"], "; ".join(off))

    def _read_events(self, images: pd.DataFrame, counts: dict) -> pd.DataFrame:
        path = self.paths["events"]
        columns = {"subject_id": INT, "time": STR, "table": STR, "item": STR, "value": STR, "unit": STR}
        frame = read_csv(path, columns, required=list(EVENT_REQUIRED), on_bad_lines=self.on_bad_lines,
                         counts=counts)
        counts["events_listed"] = frame.num_rows
        _no_nulls(frame.select(["subject_id", "time", "table", "item"]).to_pandas(), ["subject_id", "time", "table",
                                                                                     "item"], path)
        if not self.selection.read_everything:
            # Table names are compared without case or surrounding spaces, like item names.
            table_names = normalise_text(frame["table"])
            keep = pc.is_in(table_names, value_set=pa.array([t.strip().lower() for t in self.selection.rules], STR))
            for table in self.selection.rules:
                row_filter = self.selection.row_filter(table)
                if row_filter is not None:
                    other_table = pc.not_equal(table_names, table.strip().lower())
                    keep = pc.and_(keep, pc.or_(other_table, row_filter.mask(frame)))
            counts["events_not_selected"] = frame.num_rows - int(pc.sum(keep).as_py() or 0)
            frame = frame.filter(keep)
        known = pc.is_in(frame["subject_id"], value_set=pa.array(images["subject_id"].unique(), INT))
        counts["events_unknown_subject"] = frame.num_rows - int(pc.sum(known).as_py() or 0)
        if counts["events_unknown_subject"]:
            log.warning("cxr_folder: %d event(s) of %s belong to no subject of images.csv (with a kept view); dropped",
                        counts["events_unknown_subject"], path)
        frame = frame.filter(known)
        table = pc.utf8_trim_whitespace(frame["table"])
        fields = [(None, frame[c]) for c in ("item", "value", "unit") if c in frame.column_names]
        events = pd.DataFrame({
            "subject_id": frame["subject_id"].to_numpy(),
            "time": _iso_times(frame["time"].to_pandas(), path),
            "table": table.to_pandas(),
            "text": join_fields(table, fields).to_pandas(),
        })
        return events.astype({"subject_id": EVENT_DTYPES["subject_id"]}).sort_values(
            ["subject_id", "time"], kind="stable", ignore_index=True)


def _no_nulls(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    for column in columns:
        blank = frame[column].isna()
        if blank.any():
            raise UserInputError(f"{path}: column {column} is blank on line {int(np.flatnonzero(blank)[0]) + 2}.")


def _iso_times(values: pd.Series, path: Path) -> pd.Series:
    """ISO 8601 text as naive timestamps (an offset is converted to UTC); the first bad line is named."""
    text = values.astype(str).str.strip()
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserInputError(f"{path}: line {row + 2} has time {text.iloc[row]!r}, which is not ISO 8601 "
                             f"(e.g. 2150-01-31T08:30:00).")
    return parsed.dt.tz_localize(None).astype("datetime64[us]").set_axis(values.index)
