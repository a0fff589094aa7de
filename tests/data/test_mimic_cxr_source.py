"""The mimic_cxr reader on a tiny MIMIC-CXR-JPG fixture linked to the real MIMIC-IV demo.

tests/fixtures/mimic-cxr-tiny/make_fixture.py documents each made-up image row: which
admission it falls in, and which edge it tests.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ehrlab.data.cxr.contract import CHEXPERT, IMAGE_COLUMNS, IMAGE_DTYPES, IMAGENOME_FINDINGS
from ehrlab.data.sources.mimic_cxr import MIMICCXRSource
from ehrlab.errors import UserInputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CXR = FIXTURES / "mimic-cxr-tiny"
DEMO = FIXTURES / "mimic-iv-demo-2.2"
PAPER_SELECTION = Path(__file__).resolve().parents[2] / "conf" / "data" / "event_selection" / "paper.yaml"
PAPER = yaml.safe_load(PAPER_SELECTION.read_text())
A1, A2, A3, A4, A5 = (f"a100000{i}-0b5c3a21-7e4f9d10-3c2b1a09-0000000{i}" for i in range(1, 6))
B1, B2, B3 = (f"b200000{i}-4d2e6f80-91a3b7c5-d6e8f0a2-0000000{i}" for i in range(1, 4))
C1 = "c3000001-8f1a2b3c-4d5e6f70-8192a3b4-00000001"
D1, D2 = (f"d400000{i}-5a6b7c8d-9e0f1a2b-3c4d5e6f-0000000{i}" for i in range(1, 3))


def link_mimic4(folder: Path, replace: dict[str, Path] | None = None) -> Path:
    """A MIMIC-IV folder of links to the demo fixture plus the made-up chartevents;
    `replace` maps "hosp/patients.csv.gz" to another file (or to None: left out)."""
    replace = replace or {}
    files = {f"{p.parent.name}/{p.name}": p for p in DEMO.glob("*/*.csv.gz")}
    files["icu/chartevents.csv.gz"] = CXR / "mimic4-chartevents" / "icu" / "chartevents.csv.gz"
    files.update(replace)
    for name, target in files.items():
        if target is not None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).symlink_to(target.resolve())
    return folder


@pytest.fixture(scope="module")
def mimic4(tmp_path_factory) -> Path:
    return link_mimic4(tmp_path_factory.mktemp("mimic4"))


@pytest.fixture(scope="module")
def paper(mimic4):
    return MIMICCXRSource(CXR, mimic4, PAPER).read()


@pytest.fixture(scope="module")
def everything(mimic4):
    return MIMICCXRSource(CXR, mimic4, None).read()


def copy_cxr(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CXR, tmp_path / "cxr", ignore=shutil.ignore_patterns("mimic4-chartevents")))


def _write_gz(path: Path, frame: pd.DataFrame) -> None:
    with gzip.open(path, "wt") as out:
        frame.to_csv(out, index=False)


def test_frontal_adult_images_inside_admissions_are_kept(paper):
    images = paper.images.set_index("image_id")
    # A3 is lateral; A5 is taken exactly at an admittime (excluded: admittime < t); D2 is in no
    # admission; A4 exactly at a dischtime is included (t <= dischtime).
    assert set(images.index) == {A1, A2, A4, B1, B2, B3, C1, D1}
    assert paper.counts["images_other_view"] == 1
    assert paper.counts["images_outside_stays"] == 2
    assert images.loc[A4, "time"] == pd.Timestamp("2156-05-22 14:16:00")
    assert images.loc[A4, "stay_id"] == 23473524


def test_study_time_fraction_is_dropped_and_zero_padded(paper):
    times = paper.images.set_index("image_id")["time"]
    assert times[B3] == pd.Timestamp("2132-12-13 00:00:09")  # StudyTime 9.5
    assert times[C1] == pd.Timestamp("2125-02-28 23:59:59")  # StudyTime 235959.123
    assert times[B2] == pd.Timestamp("2132-12-16 09:00:00")  # StudyTime 90000.123


def test_image_rows_follow_the_contract(paper):
    images = paper.images
    assert list(images.columns[:len(IMAGE_COLUMNS)]) == IMAGE_COLUMNS
    assert all(images[c].dtype == pd.Series([], dtype=t).dtype for c, t in IMAGE_DTYPES.items())
    row = images.set_index("image_id").loc[A1]
    assert row["path"] == str(CXR.resolve() / "files/p10/p10002428/s50000001" / f"{A1}.jpg")
    assert Path(row["path"]).is_file()
    assert (row["sex"], row["age"], row["race"], row["view"]) == ("F", 81.0, "WHITE", "AP")  # 2156 - 2155 + 80
    assert images["path"].map(lambda p: Path(p).is_file()).all()


def test_chexpert_labels_are_copied_from_the_study_to_each_image(paper):
    images = paper.images.set_index("image_id")
    assert [c for c in images.columns if c.startswith(CHEXPERT)][:4] == [
        "chexpert:Atelectasis", "chexpert:Cardiomegaly", "chexpert:Consolidation", "chexpert:Edema"]
    assert images.loc[A1, "chexpert:Edema"] == -1.0 and images.loc[A1, "chexpert:Cardiomegaly"] == 1.0
    assert np.isnan(images.loc[A1, "chexpert:Atelectasis"])
    assert np.isnan(images.loc[A4, "chexpert:Edema"])  # study 50000003 has no CheXpert row
    assert images.loc[B3, "chexpert:Consolidation"] == 1.0


def test_official_split_is_counted_not_applied(paper):
    assert paper.counts["official_split_train_images"] == 7 and paper.counts["official_split_test_images"] == 1


def test_paper_selection_keeps_selected_items_of_linked_stays_only(paper, everything):
    chart = paper.events.loc[paper.events["table"] == "chartevents", "text"]
    assert chart.str.contains("itemid Heart Rate").any()
    assert not chart.str.contains("GCS - Verbal Response").any()  # category Neurological: not selected
    assert everything.events["text"].str.contains("GCS - Verbal Response").any()
    assert paper.counts["chartevents_not_selected"] == 1
    assert paper.counts["chartevents_other_subjects"] == 1  # 10019003 has no image
    assert paper.counts["chartevents_outside_stays"] == 1  # admission 28662225 has no linked image
    drugs = paper.events.loc[paper.events["table"] == "prescriptions", "text"]
    assert drugs.str.contains("drug Furosemide ").any() and drugs.str.contains("drug Vancomycin ").any()
    assert not drugs.str.contains("drug Acetaminophen ").any()
    assert everything.events["text"].str.contains("drug Acetaminophen ").any()
    micro = paper.events.loc[paper.events["table"] == "microbiologyevents", "text"]
    assert micro.str.contains("spec_type_desc SPUTUM").all() and len(micro) > 0
    assert everything.events["text"].str.contains("spec_type_desc MRSA SCREEN").any()
    labs = paper.events.loc[paper.events["table"] == "labevents", "text"]
    assert labs.str.contains("itemid pO2 ").any() and not labs.str.contains("itemid Sodium ").any()


def test_events_lie_inside_stays_of_linked_images(everything):
    images, events = everything.images, everything.events
    assert set(events["subject_id"]) <= set(images["subject_id"])
    admissions = pd.read_csv(DEMO / "hosp" / "admissions.csv.gz", parse_dates=["admittime", "dischtime"])
    stays = admissions[admissions["hadm_id"].isin(images["stay_id"])]
    pairs = events.merge(stays, on="subject_id")
    inside = (pairs["time"] >= pairs["admittime"]) & (pairs["time"] <= pairs["dischtime"])
    assert inside.groupby([pairs["subject_id"], pairs["time"], pairs["text"]]).any().all()
    assert events["subject_id"].is_monotonic_increasing
    assert events.groupby("subject_id")["time"].apply(lambda t: t.is_monotonic_increasing).all()


@pytest.mark.parametrize("table, text", [
    ("chartevents", "chartevents itemid Heart Rate value 85 valuenum 85 valueuom bpm warning 0"),
    ("chartevents", "chartevents itemid Respiratory Rate value 18.3333 valuenum 18.3333 valueuom insp/min warning 0"),
    ("labevents", "labevents itemid Specimen Type value ART. comments ___"),
    ("inputevents", ("inputevents itemid NaCl 0.9% amount 48.5775 amountuom ml rate 9.0799 rateuom mL/hour "
                    "ordercategoryname 01-Drips secondaryordercategoryname 02-Fluids (Crystalloids) "
                    "ordercomponenttypedescription Mixed solution ordercategorydescription Continuous Med "
                    "patientweight 48.4 totalamount 250 totalamountuom ml isopenbag 0 originalamount 250 "
                    "originalrate 9.0744")),
    ("outputevents", "outputevents itemid Foley value 350 valueuom ml"),
    ("procedureevents", ("procedureevents itemid Invasive Ventilation value 12640 valueuom min ordercategoryname "
                        "Ventilation ordercategorydescription ContinuousProcess patientweight 48.4 isopenbag 1 "
                        "originalamount 12640 originalrate 1")),
    ("prescriptions", ("prescriptions drug_type MAIN drug Insulin prod_strength Dummy Package for Sliding Scale "
                      "dose_val_rx 0 dose_unit_rx UNIT form_val_disp 0 form_unit_disp VIAL route SC")),
    ("microbiologyevents", ("microbiologyevents spec_type_desc MRSA SCREEN test_seq 1 test_name MRSA SCREEN "
                           "comments No MRSA isolated.")),
])
def test_event_text_of_one_row_per_table(everything, table, text):
    events = everything.events
    assert text in set(events.loc[events["table"] == table, "text"])


def test_missing_event_table_is_one_warning_and_a_count(tmp_path, caplog):
    mimic4 = link_mimic4(tmp_path / "m4", {"icu/chartevents.csv.gz": None})
    with caplog.at_level(logging.WARNING):
        tables = MIMICCXRSource(CXR, mimic4, {"chartevents": "all", "outputevents": "all"}).read()
    warnings = [r.getMessage() for r in caplog.records if "chartevents" in r.getMessage()]
    assert len(warnings) == 1
    assert tables.counts["chartevents_table_missing"] == 1
    assert set(tables.events["table"]) == {"outputevents"}


def test_missing_required_files_name_them(tmp_path, mimic4):
    cxr = copy_cxr(tmp_path)
    (cxr / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(UserInputError, match="mimic-cxr-2.0.0-metadata"):
        MIMICCXRSource(cxr, mimic4)
    no_admissions = link_mimic4(tmp_path / "m4", {"hosp/admissions.csv.gz": None})
    with pytest.raises(UserInputError, match="hosp/admissions"):
        MIMICCXRSource(CXR, no_admissions)


def test_missing_images_are_detected_before_events_are_read(tmp_path, mimic4):
    cxr = copy_cxr(tmp_path)
    missing = cxr / "files/p10/p10005817/s51000001" / f"{B1}.jpg"
    missing.unlink()
    with pytest.raises(UserInputError, match=B1):
        MIMICCXRSource(cxr, mimic4, {"chartevents": "all"}).read()
    shutil.rmtree(cxr / "files")
    with pytest.raises(UserInputError, match="files"):
        MIMICCXRSource(cxr, mimic4)


def test_missing_chexpert_file_leaves_out_its_labels(tmp_path, mimic4, caplog):
    cxr = copy_cxr(tmp_path)
    (cxr / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with caplog.at_level(logging.WARNING):
        tables = MIMICCXRSource(cxr, mimic4, {"outputevents": "all"}).read()
    assert not any(c.startswith(CHEXPERT) for c in tables.images.columns)
    assert tables.counts["chexpert_file_missing"] == 1
    assert any("chexpert" in r.getMessage() for r in caplog.records)


def test_uncompressed_metadata_with_uppercase_header_reads_the_same(tmp_path, mimic4, paper):
    cxr = copy_cxr(tmp_path)
    metadata = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    (cxr / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    metadata.rename(columns=str.upper).to_csv(cxr / "MIMIC-CXR-2.0.0-METADATA.csv", index=False)
    tables = MIMICCXRSource(cxr, mimic4, {"outputevents": "all"}).read()
    pd.testing.assert_frame_equal(tables.images.drop(columns="path"), paper.images.drop(columns="path"))


@pytest.mark.parametrize("anchor_age, kept", [(18, True), (17, False)])
def test_min_age_is_inclusive(tmp_path, anchor_age, kept):
    patients = pd.read_csv(DEMO / "hosp" / "patients.csv.gz")
    # 10014729: anchor_year 2125, admitted 2125, so the age at the image is anchor_age.
    patients.loc[patients["subject_id"] == 10014729, "anchor_age"] = anchor_age
    _write_gz(tmp_path / "patients.csv.gz", patients)
    mimic4 = link_mimic4(tmp_path / "m4", {"hosp/patients.csv.gz": tmp_path / "patients.csv.gz"})
    tables = MIMICCXRSource(CXR, mimic4, {"outputevents": "all"}).read()
    assert (C1 in set(tables.images["image_id"])) is kept
    assert tables.counts["images_under_min_age"] == (0 if kept else 1)


def test_impossible_study_time_names_the_line(tmp_path, mimic4):
    cxr = copy_cxr(tmp_path)
    metadata = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    metadata.loc[1, "StudyTime"] = "250000.0"  # hour 25
    _write_gz(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", metadata)
    with pytest.raises(UserInputError, match="line 3"):
        MIMICCXRSource(cxr, mimic4).read()


def test_imagenome_scene_graphs_give_image_labels(tmp_path, mimic4):
    folder = tmp_path / "imagenome" / "silver_dataset" / "scene_graph"
    folder.mkdir(parents=True)
    graph = {"image_id": A1, "attributes": [
        {"bbox_name": "right lung", "attributes": [["anatomicalfinding|yes|lung opacity"],
                                                   ["anatomicalfinding|no|pneumothorax"]]},
        # the last phrase of a region decides it; any positive region makes the image positive
        {"bbox_name": "left lung", "attributes": [["anatomicalfinding|yes|pneumothorax"],
                                                  ["anatomicalfinding|no|pneumothorax",
                                                   "disease|no|pneumonia"]]},
        {"bbox_name": "cardiac silhouette", "attributes": [["anatomicalfinding|no|lung opacity"]]},
    ]}
    (folder / f"{A1}_SceneGraph.json").write_text(json.dumps(graph))
    tables = MIMICCXRSource(CXR, mimic4, {"outputevents": "all"}, imagenome_root=tmp_path / "imagenome").read()
    images = tables.images.set_index("image_id")
    assert [c for c in images.columns if c.startswith("imagenome:")] == [f"imagenome:{f}" for f in IMAGENOME_FINDINGS]
    assert images.loc[A1, "imagenome:lung opacity"] == 1.0
    assert images.loc[A1, "imagenome:pneumothorax"] == 0.0
    assert images.loc[A1, "imagenome:pneumonia"] == 0.0
    assert np.isnan(images.loc[A1, "imagenome:pleural effusion"])  # not mentioned
    assert images.drop(index=A1).filter(like="imagenome:").isna().all().all()
    assert tables.counts["images_without_scene_graph"] == 7


def test_label_csv_gives_imagenome_columns(tmp_path, mimic4):
    (tmp_path / "labels.csv").write_text(f"dicom_id,pleural effusion,imagenome:lung opacity\n{A1},1,\n{B1},0,1\n")
    tables = MIMICCXRSource(CXR, mimic4, {"outputevents": "all"}, label_csv=tmp_path / "labels.csv").read()
    images = tables.images.set_index("image_id")
    assert images.loc[A1, "imagenome:pleural effusion"] == 1.0 and np.isnan(images.loc[A1, "imagenome:lung opacity"])
    assert images.loc[B1, "imagenome:lung opacity"] == 1.0
    assert tables.counts["images_without_label_csv_row"] == 6


def test_cache_key_follows_selection_and_options(mimic4):
    base = MIMICCXRSource(CXR, mimic4, PAPER)
    assert base.cache_key() == MIMICCXRSource(CXR, mimic4, PAPER).cache_key()
    assert base.cache_key() != MIMICCXRSource(CXR, mimic4, None).cache_key()
    assert base.cache_key() != MIMICCXRSource(CXR, mimic4, PAPER, min_age=19).cache_key()
    files = [f[0] for f in base.cache_identity()["files"]]
    assert any(f.endswith("mimic-cxr-2.0.0-metadata.csv.gz") for f in files)
    assert not any(f.endswith(".jpg") for f in files)


def test_bad_options_are_user_errors(mimic4):
    with pytest.raises(UserInputError, match="data.cxr_root"):
        MIMICCXRSource(None, mimic4)
    with pytest.raises(UserInputError, match="unknown table"):
        MIMICCXRSource(CXR, mimic4, {"notes": "all"})
    with pytest.raises(UserInputError, match="min_age"):
        MIMICCXRSource(CXR, mimic4, min_age="adult")
