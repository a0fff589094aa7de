"""The cxr_forecast task: pair, window, truncation, split and label rules at their edges, and
the saved folder (image array, event embeddings) read back."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ehrlab.data.cxr.contract import CXRTables
from ehrlab.data.tasks.cxr import (
    CXRForecastTask,
    CXRTaskData,
    event_windows,
    make_pairs,
    previous_label_values,
    same_diff_masks,
    split_by_patient,
    target_label_values,
)
from ehrlab.errors import UserInputError

T0 = pd.Timestamp("2150-03-01 08:00:00")
EDEMA, EFFUSION = "chexpert:Edema", "imagenome:pleural effusion"


def hours(h: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=h)


def write_image(path, kind: str = "grey", value: int = 100):
    """A tiny image file: 8-bit grey PNG, 16-bit grey PNG (a gradient) or RGB JPEG."""
    if kind == "grey":
        Image.new("L", (12, 10), value).save(path)
    elif kind == "grey16":
        Image.fromarray(np.linspace(1000, 4000, 14 * 9).reshape(9, 14).astype(np.uint16)).save(path)
    else:
        Image.new("RGB", (16, 12), (200, 30, 30)).save(path, quality=95)
    return str(path)


def image_table(tmp_path, rows: list[tuple], labels: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """rows: (subject_id, stay_id, study_id, hours after T0[, image kind]) per image."""
    records = []
    for i, row in enumerate(rows):
        subject, stay, study, at = row[:4]
        kind = row[4] if len(row) > 4 else "grey"
        suffix = "jpg" if kind == "rgb" else "png"
        records.append({"subject_id": subject, "stay_id": stay, "study_id": study, "image_id": f"img{i}",
                        "path": write_image(tmp_path / f"img{i}.{suffix}", kind, value=10 * (i % 20)),
                        "time": hours(at), "view": "AP", "sex": "F" if subject % 2 else "M",
                        "age": 40.0 + subject, "race": "WHITE - RUSSIAN" if subject % 2 else "BLACK"})
    frame = pd.DataFrame(records).astype({"subject_id": "int64", "stay_id": "int64", "study_id": "int64",
                                          "time": "datetime64[us]"})
    for column, values in (labels or {}).items():
        frame[column] = np.asarray(values, dtype=np.float64)
    return frame


def event_table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (subject_id, hours after T0, text)."""
    return pd.DataFrame({"subject_id": [r[0] for r in rows], "time": [hours(r[1]) for r in rows],
                         "table": "labevents", "text": [r[2] for r in rows]}).astype(
        {"subject_id": "int64", "time": "datetime64[us]"})


def fake_encoder(width: int = 4):
    """A deterministic stand-in for the sentence model: vector = text length and char sums."""
    def encode(strings: list[str]) -> np.ndarray:
        return np.array([[len(s), sum(map(ord, s)) % 97, s.count(" "), 1.0][:width] for s in strings],
                        dtype=np.float32)
    return encode


def fake_model(tmp_path):
    folder = tmp_path / "fake-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def use_fake_encoder(data: CXRTaskData, tmp_path) -> CXRTaskData:
    data.embedder_settings.update(model=str(fake_model(tmp_path)), cache_dir=str(tmp_path / "cache"),
                                  encoder=fake_encoder(), progress=False)
    return data


def standard_tables(tmp_path) -> CXRTables:
    """Six patients, one stay each, three studies at 0 / 10 / 20 h (3 pairs each); patient 6
    has no events; patient 1 has five events in its 0 -> 20 h window."""
    rows, edema, effusion = [], [], []
    for subject in range(1, 7):
        for study, at in enumerate((0, 10, 20)):
            kind = "grey16" if (subject, study) == (1, 0) else "rgb" if (subject, study) == (1, 1) else "grey"
            rows.append((subject, 100 + subject, 10 * subject + study, at, kind))
    # Edema: 0 / 1 / -1 / NaN spread over patients; effusion blank on the first images.
    for subject in range(1, 7):
        edema += [0.0, 1.0, -1.0] if subject == 1 else [1.0, np.nan, 0.0] if subject == 2 else [0.0, 1.0, 0.0]
        effusion += [np.nan, 1.0, 0.0]
    images = image_table(tmp_path, rows, {EDEMA: edema, EFFUSION: effusion})
    events = event_table([(1, h, f"labevents itemid pO2 valuenum {h}") for h in (1, 2, 3, 4, 5)]
                         + [(s, 12, f"prescriptions drug Furosemide dose {s}") for s in range(2, 6)]
                         + [(s, 5, "chartevents itemid Heart Rate valuenum 90") for s in range(2, 6)])
    return CXRTables(images=images, events=events, counts={"images_read": len(images)})


# --- pairs --------------------------------------------------------------------------------

def test_pair_rules_at_their_edges(tmp_path):
    rows = [(1, 10, 1, 0.0), (1, 10, 1, 0.0), (1, 10, 2, 0.0), (1, 10, 5, 0.01), (1, 10, 4, 10.0),
            (1, 10, 3, 48.0),  # A, A2 (same study), B (same time), E, D, C
            (1, 11, 6, 1.0),  # another stay of patient 1: alone
            (2, 10, 7, 0.0), (2, 10, 8, 5.0)]  # patient 2 reuses stay id 10: never paired with patient 1
    images = image_table(tmp_path, rows)
    dropped = {}
    pairs = make_pairs(images, 48, dropped)
    got = {(int(p), int(t)) for p, t in zip(pairs["prev_row"], pairs["target_row"], strict=True)}
    a, a2, b, e, d, c = range(6)
    expected = {(x, e) for x in (a, a2, b)} | {(x, d) for x in (a, a2, b, e)} | {(e, c), (d, c), (7, 8)}
    assert got == expected  # every earlier x later pair, not only consecutive ones (a -> d skips e)
    assert dropped == {"image_pairs_in_one_study": 1, "image_pairs_at_equal_times": 2,
                       "image_pairs_too_far_apart": 3}  # exactly 48 h: a, a2, b -> c
    gap = pairs.set_index(["prev_row", "target_row"])["gap_hours"]
    assert gap[(e, c)] == pytest.approx(47.99)
    assert (pairs["target_time"] > pairs["prev_time"]).all()


def test_no_pair_names_the_rule(tmp_path):
    tables = CXRTables(images=image_table(tmp_path, [(1, 10, 1, 0.0), (1, 10, 2, 48.0), (1, 10, 2, 49.0)]),
                       events=event_table([(1, 1.0, "x")]), counts={})
    with pytest.raises(UserInputError, match="less than 48 h apart"):
        CXRForecastTask().build(tables, seed=0)
    alone = CXRTables(images=image_table(tmp_path, [(1, 10, 1, 0.0), (1, 11, 2, 5.0)]),
                      events=event_table([(1, 1.0, "x")]), counts={})
    with pytest.raises(UserInputError, match="no stay has two frontal images"):
        CXRForecastTask().build(alone, seed=0)
    silent = CXRTables(images=image_table(tmp_path, [(1, 10, 1, 0.0), (1, 10, 2, 5.0)]),
                       events=event_table([(1, 6.0, "after the target")]), counts={})
    with pytest.raises(UserInputError, match="min_events=1"):
        CXRForecastTask().build(silent, seed=0)


# --- events -------------------------------------------------------------------------------

def test_event_window_includes_both_ends_only():
    prev, target = hours(0), hours(10)
    tick = pd.Timedelta(microseconds=1)
    events = pd.DataFrame({"subject_id": [1, 1, 1, 1, 1, 2, 3],
                           "time": [prev - tick, prev, hours(5), target, target + tick, hours(5), hours(5)]})
    events["time_us"] = events["time"].to_numpy().astype("datetime64[us]").view("int64")
    lo, hi = event_windows(events, np.array([1, 2, 4]), np.array([prev, prev, prev], dtype="datetime64[us]"),
                           np.array([target, target, target], dtype="datetime64[us]"))
    assert (lo[0], hi[0]) == (1, 4)  # prev, 5 h, target; not a microsecond outside
    assert (lo[1], hi[1]) == (5, 6)  # patient 2's own event only
    assert lo[2] == hi[2]  # a patient without events


def test_build_drops_pairs_without_events_and_keeps_the_latest(tmp_path):
    tables = standard_tables(tmp_path)
    data = CXRForecastTask(max_events=3).build(tables, seed=0)
    assert data.stats["dropped"]["pairs_fewer_than_min_events"] == 4  # patient 6's three, patient 1's 10 -> 20 h
    assert 6 not in set(data.pairs["subject_id"])
    patient1 = data.pairs.index[(data.pairs["subject_id"] == 1).to_numpy()]
    by_window = data.pairs.loc[patient1].set_index(["prev_time", "target_time"])
    # 0 -> 20 h holds the events at 1..5 h; the 3 latest are kept, in time order
    row = int(by_window.loc[(hours(0), hours(20)), "pair_id"])
    position = int(np.flatnonzero(data.pairs["pair_id"].to_numpy() == row)[0])
    start, stop = data.event_offsets[position], data.event_offsets[position + 1]
    texts = [data.texts[i] for i in data.event_text_ids[start:stop]]
    assert texts == [f"labevents itemid pO2 valuenum {h}" for h in (3, 4, 5)]
    np.testing.assert_allclose(data.event_hours[start:stop], [17, 16, 15])
    assert by_window.loc[(hours(0), hours(20)), "n_events_in_window"] == 5
    assert data.stats["dropped"]["events_beyond_max_events"] == 4  # 0 -> 10 h too
    # 10 -> 20 h of patient 1 has no event: dropped too
    assert (hours(10), hours(20)) not in by_window.index
    assert data.stats["events_per_pair"]["max"] == 3
    # each distinct text once
    assert len(data.texts) == len(set(data.texts))


# --- split --------------------------------------------------------------------------------

def test_split_is_patient_disjoint_seeded_and_near_the_fractions():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(200), rng.integers(1, 6, 200))
    split = split_by_patient(subjects, (0.8, 0.1, 0.1), seed=3)
    per_subject = pd.Series(split).groupby(subjects).nunique()
    assert (per_subject == 1).all()
    shares = pd.Series(split).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.02) and shares["test"] == pytest.approx(0.1, abs=0.02)
    assert (split_by_patient(subjects, (0.8, 0.1, 0.1), seed=3) == split).all()
    assert (split_by_patient(subjects, (0.8, 0.1, 0.1), seed=4) != split).any()
    three = split_by_patient(np.array([5, 5, 5, 5, 6, 7]), (0.9, 0.05, 0.05), seed=0)
    assert set(three) == {"train", "val", "test"}


# --- labels -------------------------------------------------------------------------------

def test_label_policy():
    raw = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(target_label_values(raw), [[1, 1], [0, 0], [np.nan, np.nan], [np.nan, np.nan]])
    previous = previous_label_values(raw, [EDEMA, EFFUSION])
    # CheXpert: -1 and blank not evaluable; ImaGenome: a blank previous label is 0
    np.testing.assert_array_equal(previous, [[1, 1], [0, 0], [np.nan, np.nan], [np.nan, 0]])
    same, diff = same_diff_masks(np.array([[1, 0, np.nan, 1]], dtype=np.float32),
                                 np.array([[1, 1, 0, np.nan]], dtype=np.float32))
    assert same.tolist() == [[True, False, False, False]] and diff.tolist() == [[False, True, False, False]]


def test_findings_need_both_classes_in_training_targets(tmp_path):
    tables = standard_tables(tmp_path)
    tables.images["chexpert:Cardiomegaly"] = 1.0
    data = CXRForecastTask(split=[0.6, 0.2, 0.2]).build(tables, seed=0)
    assert data.findings == [EDEMA, EFFUSION]
    assert "chexpert:Cardiomegaly" in data.stats["findings_dropped"]
    previous, target = data.previous_labels(), data.target_labels()
    for row, pair in data.pairs.reset_index(drop=True).iterrows():
        prev_raw = data.images.loc[pair["prev_index"], [EDEMA, EFFUSION]].to_numpy(float)
        target_raw = data.images.loc[pair["target_index"], [EDEMA, EFFUSION]].to_numpy(float)
        assert previous[row, 1] == (0.0 if np.isnan(prev_raw[1]) else prev_raw[1])
        assert np.isnan(target[row, 0]) == (target_raw[0] not in (0.0, 1.0))


def test_planted_posterior_joins_per_pair(tmp_path):
    tables = standard_tables(tmp_path)
    image_ids = tables.images["image_id"].tolist()
    tables.planted = pd.DataFrame({"prev_image_id": image_ids[:-1], "target_image_id": image_ids[1:],
                                   EDEMA: np.linspace(0.1, 0.9, len(image_ids) - 1)})
    data = CXRForecastTask().build(tables, seed=0)
    lookup = tables.planted.set_index(["prev_image_id", "target_image_id"])[EDEMA]
    for row, pair in data.pairs.reset_index(drop=True).iterrows():
        key = (pair["prev_image_id"], pair["target_image_id"])
        expected = lookup.get(key, np.nan)
        np.testing.assert_equal(data.planted[row, 0], np.float32(expected))
    assert np.isnan(data.planted[:, 1]).all()  # no planted effusion column


# --- saving -------------------------------------------------------------------------------

def test_save_load_round_trip_with_images_and_embeddings(tmp_path):
    tables = standard_tables(tmp_path)
    data = use_fake_encoder(CXRForecastTask(image_size=8, split=[0.6, 0.2, 0.2]).build(tables, seed=0), tmp_path)
    data.save(tmp_path / "task")
    loaded = CXRTaskData.load(tmp_path / "task")
    assert loaded.pixels.shape == (len(loaded.images), 8, 8) and loaded.pixels.dtype == np.uint8
    assert loaded.event_embeddings.shape == (len(loaded.texts), 4)
    np.testing.assert_array_equal(loaded.event_embeddings, fake_encoder()(loaded.texts))
    pd.testing.assert_frame_equal(loaded.pairs, data.pairs)
    assert loaded.findings == data.findings and loaded.texts == data.texts
    np.testing.assert_array_equal(loaded.event_text_ids, data.event_text_ids)
    np.testing.assert_array_equal(loaded.pixels, data.pixels)

    by_id = loaded.images.set_index("image_id")
    position = {image_id: i for i, image_id in enumerate(loaded.images["image_id"])}
    sixteen = loaded.pixels[position[by_id.index[by_id["path"].str.endswith("img0.png")][0]]]
    assert sixteen.min() < 40 and sixteen.max() > 215  # 16-bit rescaled to its own range
    assert (np.diff(sixteen.astype(int), axis=1) >= 0).all()  # the gradient survives the resize
    rgb = loaded.pixels[position["img1"]]
    assert abs(int(rgb.mean()) - 81) <= 4  # luma of (200, 30, 30)
    grey = loaded.pixels[position["img4"]]
    assert (grey == 40).all()  # a flat 8-bit image stays its value

    for split in ("train", "val", "test"):
        reference = loaded.reference(split)
        pairs = loaded.pairs[loaded.pairs["split"] == split]
        assert len(reference.pair_id) == loaded.n_pairs(split) == len(pairs) > 0
        np.testing.assert_array_equal(reference.prev_images, loaded.pixels[pairs["prev_index"].to_numpy()])
        np.testing.assert_array_equal(reference.target_images, loaded.pixels[pairs["target_index"].to_numpy()])
        assert reference.extra["same"].shape == reference.prev_labels.shape == (len(pairs), 2)
        image_set = loaded.image_set(split)
        used = np.unique(pairs[["prev_index", "target_index"]].to_numpy())
        np.testing.assert_array_equal(image_set.images, loaded.pixels[used])  # each image once, contiguous
        assert image_set.sex.dtype == np.int64 and set(image_set.race) <= {"WHITE", "BLACK"}
    subjects = [set(loaded.pairs.loc[loaded.pairs["split"] == s, "subject_id"]) for s in ("train", "val", "test")]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])


def test_corrupt_or_missing_image_names_the_file(tmp_path):
    tables = standard_tables(tmp_path)
    data = use_fake_encoder(CXRForecastTask(image_size=8).build(tables, seed=0), tmp_path)
    broken = data.images["path"].iloc[2]
    content = Path(broken).read_bytes()
    Path(broken).write_bytes(content[: len(content) // 2])  # a truncated PNG
    with pytest.raises(UserInputError, match=re.escape(broken)):
        data.save(tmp_path / "task")
    data.images.loc[2, "path"] = str(tmp_path / "gone.png")
    with pytest.raises(UserInputError, match="gone.png does not exist"):
        data.save(tmp_path / "task2")


def test_cache_key_follows_the_settings_that_change_the_data(tmp_path):
    model = str(fake_model(tmp_path))
    base = CXRForecastTask(text_encoder=model)
    assert base.cache_key("src", 0) == CXRForecastTask(text_encoder=model, cache_dir="/elsewhere",
                                                       embedding_batch_size=7).cache_key("src", 0)
    assert base.cache_key("src", 0) != base.cache_key("src", 1)
    assert base.cache_key("src", 0) != CXRForecastTask(text_encoder=model, max_gap_hours=24).cache_key("src", 0)
    with pytest.raises(UserInputError, match="not a sentence-transformers model folder"):
        CXRForecastTask(text_encoder=str(tmp_path / "nowhere")).cache_key("src", 0)
