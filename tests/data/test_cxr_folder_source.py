"""The cxr_folder reader: DIR/images.csv + DIR/events.csv (module docstring of cxr_folder.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ehrlab.data.cxr.contract import IMAGE_COLUMNS
from ehrlab.data.sources.cxr_folder import CXRFolderSource
from ehrlab.errors import UserInputError

IMAGES = """subject_id,image_id,path,time,view,sex,age,race,stay_id,study_id,label:Edema,label:Pleural Effusion
1,a,img/a.png,2150-01-01T08:00:00,PA,M,70,WHITE,10,100,1,0
1,b,img/b.png,2150-01-02T08:00:00,ap,F,70,,10,101,,1
2,c,img/c.png,2150-01-01T08:00:00+02:00,LATERAL,F,50,ASIAN,20,200,0,0
2,d,img/d.jpg,2150-01-01T10:00:00,PA,female,50,ASIAN,20,201,0,
"""
EVENTS = """subject_id,time,table,item,value,unit
1,2150-01-01T09:00:00,labs,pO2,85.0000,mmHg
1,2150-01-01T10:00:00,meds,Furosemide,40,mg
1,2150-01-01T11:00:00,meds,Aspirin,,
2,2150-01-01T09:00:00,Labs,pH,7.412345,
3,2150-01-01T09:00:00,labs,pH,7.4,
"""


def make_folder(root: Path, images: str = IMAGES, events: str = EVENTS) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png", "d.jpg"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "img" / name)
    (root / "images.csv").write_text(images)
    (root / "events.csv").write_text(events)
    return root


def test_images_and_events_are_read_into_the_contract(tmp_path):
    tables = CXRFolderSource(make_folder(tmp_path)).read()
    images = tables.images.set_index("image_id")
    assert list(tables.images.columns[:len(IMAGE_COLUMNS)]) == IMAGE_COLUMNS
    assert set(images.index) == {"a", "b", "d"}  # c is lateral
    assert images.loc["b", "view"] == "AP" and images.loc["d", "sex"] == "F" and images.loc["b", "race"] == "UNKNOWN"
    assert images.loc["a", "path"] == str(tmp_path.resolve() / "img" / "a.png")
    assert images.loc["a", "label:Edema"] == 1.0 and np.isnan(images.loc["b", "label:Edema"])
    assert images.loc["d", "stay_id"] == 20 and images.loc["d", "study_id"] == 201
    events = tables.events
    assert events["text"].tolist() == ["labs pO2 85 mmHg", "meds Furosemide 40 mg", "meds Aspirin", "Labs pH 7.4123"]
    assert events["time"].iloc[0] == pd.Timestamp("2150-01-01 09:00:00")
    assert tables.counts["events_unknown_subject"] == 1 and tables.counts["images_other_view"] == 1


def test_offsets_are_converted_to_utc(tmp_path):
    tables = CXRFolderSource(make_folder(tmp_path), views=None).read()
    assert tables.images.set_index("image_id").loc["c", "time"] == pd.Timestamp("2150-01-01 06:00:00")


def test_missing_optional_columns_switch_metrics_off_in_one_line(tmp_path, caplog):
    images = ("subject_id,image_id,path,time,view\n"
              "1,a,img/a.png,2150-01-01T08:00:00,PA\n1,b,img/b.png,2150-01-01T08:00:00,PA\n")
    with caplog.at_level(logging.WARNING):
        tables = CXRFolderSource(make_folder(tmp_path, images=images)).read()
    lines = [r.getMessage() for r in caplog.records if "images.csv:" in r.getMessage()]
    assert len(lines) == 1 and "age" in lines[0] and "diagnosis" in lines[0]
    images = tables.images
    assert (images["sex"] == "U").all() and images["age"].isna().all() and (images["race"] == "UNKNOWN").all()
    # no stay_id: one stay per subject; no study_id: every image its own study, even at one time
    assert images["stay_id"].tolist() == [1, 1] and images["study_id"].nunique() == 2


def test_selection_keeps_named_tables_and_items_without_case(tmp_path):
    tables = CXRFolderSource(make_folder(tmp_path), event_selection={"Meds": {"items": ["FUROSEMIDE"]},
                                                                     "labs": "all"}).read()
    assert tables.events["text"].tolist() == ["labs pO2 85 mmHg", "meds Furosemide 40 mg", "Labs pH 7.4123"]
    assert tables.counts["events_not_selected"] == 1


@pytest.mark.parametrize("images, events, message", [
    (IMAGES.replace("2150-01-02T08:00:00", "yesterday"), EVENTS, "line 3 has time 'yesterday'"),
    (IMAGES.replace("img/b.png", "img/missing.png"), EVENTS, "missing.png"),
    (IMAGES.replace(",view,", ",position,"), EVENTS, "missing column.*view"),
    (IMAGES, EVENTS.replace("table,", "kind,"), "missing column.*table"),
    (IMAGES, EVENTS.replace("2150-01-01T10:00:00", "soon"), "line 3 has time 'soon'"),
    (IMAGES.replace("1,b,", "1,a,"), EVENTS, "image_id 'a' appears more than once"),
])
def test_bad_input_is_a_user_error_naming_the_problem(tmp_path, images, events, message):
    with pytest.raises(UserInputError, match=message):
        CXRFolderSource(make_folder(tmp_path, images=images, events=events)).read()


def test_missing_files_and_bad_selection_are_user_errors(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(UserInputError, match="unknown rule 'categories'"):
        CXRFolderSource(root, event_selection={"labs": {"categories": ["Blood Gas"]}})
    (root / "events.csv").unlink()
    with pytest.raises(UserInputError, match="events.csv is missing"):
        CXRFolderSource(root)


def test_cache_key_changes_with_the_files(tmp_path):
    root = make_folder(tmp_path)
    key = CXRFolderSource(root).cache_key()
    (root / "events.csv").write_text(EVENTS + "1,2150-01-01T12:00:00,labs,pH,7.3,\n")
    assert CXRFolderSource(root).cache_key() != key
