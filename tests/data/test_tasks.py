"""Tasks: risk cohorts (seed 000 §4.2) and generation sequences, checked by hand on
tests/fixtures/mimic3-tiny (see its README), and at scale on the synthetic source."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from support import MIMIC3_TINY, MIMIC4_DEMO
from ehrlab.config import CONFIG_DIR
from ehrlab.data.datamodules import EHRDataModule, pad_batch
from ehrlab.data.meds_export import export_meds
from ehrlab.data.sequences import expand_ranges
from ehrlab.data.sources.meds import MEDSSource
from ehrlab.data.sources.mimic3 import MIMIC3Source
from ehrlab.data.sources.mimic4 import MIMIC4Source
from ehrlab.data.sources.synthetic import SyntheticSource
from ehrlab.data.tasks.base import Task
from ehrlab.data.tasks.generation import GenerationTask
from ehrlab.data.tasks.risk import RiskTask, TargetCodes
from ehrlab.errors import UserInputError

HF_CODES = yaml.safe_load((CONFIG_DIR / "task" / "heart_failure.yaml").read_text())["target_codes"]
# Every tiny patient lands in the training split (each stratum has at most 7 patients, and
# 5% of 7 rounds to 0), so the by-hand checks read real codes, never [UNK].
ALL_TRAIN = [0.9, 0.05, 0.05]


@pytest.fixture(scope="module")
def tiny():
    return MIMIC3Source(MIMIC3_TINY).read()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    source = SyntheticSource(cache_dir=tmp_path_factory.mktemp("synthetic"), n_patients=3000, seed=1)
    return source.read()


def visits_of(task_data, subject_id):
    """A patient's visits as lists of code strings, across the splits."""
    for sequences in task_data.splits.values():
        where = np.flatnonzero(sequences.subject_id == subject_id)
        if len(where):
            one = sequences.subset(where)
            return [[task_data.vocabulary[c] for c in one.codes[one.code_offsets[v]:one.code_offsets[v + 1]]]
                    for v in range(one.n_visits)], int(one.label[0]), float(one.age[0])
    return None


def test_target_codes_match_exact_and_wildcard_entries():
    targets = TargetCodes(icd9=["398.91", "428*"], icd10=["I50*"])
    codes = pd.Series(["DIAGNOSIS//ICD//9//428.22", "DIAGNOSIS//ICD//9//428", "DIAGNOSIS//ICD//9//398.91",
                       "DIAGNOSIS//ICD//9//398.9", "DIAGNOSIS//ICD//10//I50.23", "DIAGNOSIS//ICD//9//I50",
                       "PROCEDURE//ICD//9//428.0"])
    assert targets.matches(codes).tolist() == [True, True, True, False, True, False, False]


def test_heart_failure_cohort_by_hand(tiny):
    data = RiskTask("heart_failure", HF_CODES, controls_per_case=None, split=ALL_TRAIN).build(tiny, seed=0)
    visits, label, _ = visits_of(data, 4)  # 428.22 at its third admission
    assert label == 1 and visits == [["DIAGNOSIS//ICD//9//250.00"],
                                     ["DIAGNOSIS//ICD//9//414.01", "DIAGNOSIS//ICD//9//250.00"]]
    visits, label, _ = visits_of(data, 2)  # control: every admission but its last
    assert label == 0 and visits == [["DIAGNOSIS//ICD//9//E849.7", "DIAGNOSIS//ICD//9//V45.81",
                                      "DIAGNOSIS//ICD//9//401.9"]]
    visits, label, age = visits_of(data, 7)  # 398.91; MIMIC's >89 shift folds to 90
    assert label == 1 and age == 90.0 and visits == [["DIAGNOSIS//ICD//9//496", "DIAGNOSIS//ICD//9//401.9"]]
    assert visits_of(data, 3) is None and visits_of(data, 6) is None  # no history: dropped
    assert data.stats["n_positive"] == 3 and data.stats["n_negative"] == 2
    assert data.stats["dropped"]["cases_without_enough_history"] == 1
    assert data.stats["dropped"]["controls_without_enough_history"] == 1
    assert not any("428" in code or "398.91" in code for code in data.vocabulary)  # the label never leaks


def test_gap_days_and_max_visits(tiny):
    gapped = RiskTask("heart_failure", HF_CODES, controls_per_case=None, gap_days=200,
                      split=ALL_TRAIN).build(tiny, seed=0)
    # patient 4: onset 2151-01-01; the admission of 2150-09-09 is within 200 days, 2150-03-03 is not
    assert visits_of(gapped, 4)[0] == [["DIAGNOSIS//ICD//9//250.00"]]
    last_only = RiskTask("heart_failure", HF_CODES, controls_per_case=None, max_visits=1,
                         split=ALL_TRAIN).build(tiny, seed=0)
    assert visits_of(last_only, 4)[0] == [["DIAGNOSIS//ICD//9//414.01", "DIAGNOSIS//ICD//9//250.00"]]


def test_empty_cohort_is_an_error(tiny):
    with pytest.raises(UserInputError, match="empty cohort"):
        RiskTask("dementia", {"icd9": ["290*"]}).build(tiny, seed=0)


def test_matching_split_and_planted_ceiling_at_scale(synthetic):
    tables = synthetic
    task = RiskTask("heart_failure", HF_CODES)
    data = task.build(tables, seed=3)
    stats = data.stats
    assert stats["n_positive"] >= 150
    assert stats["n_negative"] <= 3 * stats["n_positive"]
    assert stats["n_negative"] + stats["dropped"]["matching_shortfall"] == 3 * stats["n_positive"]
    # within every gender × age-band stratum at most three controls per case
    everyone = [data.splits[s] for s in ("train", "val", "test")]
    gender = np.concatenate([s.gender for s in everyone])
    band = np.concatenate([s.age for s in everyone]).clip(0) // 10
    label = np.concatenate([s.label for s in everyone])
    strata = pd.DataFrame({"g": gender, "b": band, "y": label}).groupby(["g", "b"])["y"]
    assert ((strata.apply(lambda y: (y == 0).sum()) <= 3 * strata.sum())).all()
    # 75/10/15 by patient, stratified by label, disjoint, deterministic for a seed
    sizes = {name: part.n_patients for name, part in data.splits.items()}
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.75) < 0.01 and abs(sizes["test"] / total - 0.15) < 0.01
    for name, part in data.splits.items():
        assert abs(part.label.mean() - label.mean()) < 0.03, name
    ids = [set(part.subject_id) for part in data.splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = task.build(tables, seed=3)
    assert np.array_equal(again.splits["test"].subject_id, data.splits["test"].subject_id)
    other = task.build(tables, seed=4)
    assert not np.array_equal(other.splits["test"].subject_id, data.splits["test"].subject_id)
    ceiling = stats["planted_ceiling"]
    assert 100 * data.splits["test"].label.mean() < ceiling["average_precision"] <= 100
    # The vocabulary is the training split's codes: every one occurs there, [UNK] never does;
    # the held-out splits hold some codes the training split lacks.
    frequencies = data.code_frequencies()
    assert frequencies[:2].tolist() == [0, 0] and (frequencies[2:] > 0).all()
    for split in ("val", "test"):
        n_unknown = int((data.splits[split].codes == 1).sum())
        assert 0 < n_unknown <= stats["unknown_code_occurrences"][split]


def test_generation_task_filters_and_statistics(tiny):
    everyone = GenerationTask(split=[0.4, 0.2, 0.4]).build(tiny, seed=0)
    assert everyone.stats["n_patients"] == 7 and everyone.stats["n_visits"] == 14
    assert everyone.stats["n_codes"] == 12 and everyone.stats["codes_per_visit"] == pytest.approx(23 / 14)
    repeat = GenerationTask(min_visits=2, max_visits=1, max_codes_per_visit=1, split=ALL_TRAIN).build(tiny, 0)
    assert repeat.stats["n_patients"] == 5  # patients 3 and 6 have a single admission
    assert repeat.stats["dropped"]["patients_below_min_visits"] == 2
    assert visits_of(repeat, 4)[0] == [["DIAGNOSIS//ICD//9//250.00"]]  # first visit, first code


def test_generation_on_the_mimic4_demo_and_on_meds_with_its_splits(tmp_path):
    tables = MIMIC4Source(MIMIC4_DEMO).read()
    data = GenerationTask().build(tables, seed=0)
    assert data.stats["n_patients"] == 100 and data.stats["n_visits"] == 275
    assert data.vocabulary[:2] == ["[PAD]", "[UNK]"]
    versions = {code.split("//")[2] for code in data.vocabulary[2:]}
    assert versions == {"9", "10"}
    splits = pd.DataFrame({"subject_id": tables.static["subject_id"],
                           "split": np.resize(["train", "train", "tuning", "held_out"], len(tables.static))})
    export_meds(tables, tmp_path / "meds", splits, "mimic-iv-demo")
    meds = MEDSSource(tmp_path / "meds").read()
    from_meds = GenerationTask().build(meds, seed=0)
    assert from_meds.stats["n_visits"] == 275
    expected = set(splits.loc[splits["split"] == "held_out", "subject_id"])
    assert set(from_meds.splits["test"].subject_id) == expected


def test_expand_ranges_and_padded_batches(tiny):
    assert expand_ranges(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    data = RiskTask("heart_failure", HF_CODES, controls_per_case=None, split=ALL_TRAIN).build(tiny, seed=0)
    module = EHRDataModule(data, batch_size=2)
    sequences = data.splits["train"]
    batch = pad_batch(sequences, np.arange(sequences.n_patients))
    n = sequences.n_patients
    assert batch["codes"].shape[0] == n and batch["visit_mask"].sum() == sequences.n_visits
    assert (batch["codes"] > 0).sum() == len(sequences.codes)
    assert torch.equal(batch["n_visits"], batch["visit_mask"].sum(1))
    for row in range(n):
        visits = visits_of(data, int(batch["subject_id"][row]))[0]
        for v, codes in enumerate(visits):
            got = [data.vocabulary[c] for c in batch["codes"][row, v].tolist() if c]
            assert got == codes
        days = sequences.visit_days[sequences.visit_offsets[row]:sequences.visit_offsets[row + 1]]
        k = len(days)
        assert batch["time_delta"][row, :k].tolist() == pytest.approx([0, *np.diff(days)])
        assert batch["time_to_end"][row, :k].tolist() == pytest.approx(days[-1] - days)
        assert not batch["visit_mask"][row, k:].any() and (batch["codes"][row, k:] == 0).all()
    assert set(batch) >= {"codes", "visit_mask", "n_visits", "time_delta", "time_to_end", "age", "gender",
                          "subject_id", "label"}
    first = next(iter(module.train_dataloader()))
    assert first["codes"].dtype == torch.int64 and first["label"].dtype == torch.int64
    assert module.code_frequencies.shape == (len(data.vocabulary),) and module.code_frequencies[:2].tolist() == [0, 0]


def dx(code: str) -> str:
    return f"DIAGNOSIS//ICD//9//{code}"


def with_splits(tables, train, val, test):
    """The tables with a MEDS-style split of the given subjects."""
    named = [(s, "train") for s in train] + [(s, "tuning") for s in val] + [(s, "held_out") for s in test]
    return dataclasses.replace(tables, splits=pd.DataFrame(named, columns=["subject_id", "split"]))


def test_vocabulary_comes_from_the_training_split_and_held_out_codes_become_unknown(tiny):
    tables = with_splits(tiny, train=[1, 2, 5], val=[4, 6], test=[3, 7])
    data = GenerationTask().build(tables, seed=0)
    train_codes = ["250.00", "276.5", "401.9", "428.0", "486", "584.9", "E849.7", "V45.81"]
    assert data.vocabulary == ["[PAD]", "[UNK]", *map(dx, train_codes)]
    # Patient 4 (val): 250.00 | 414.01, 250.00 | 428.22, 414.01 -- 414.01 and 428.22 unseen in train.
    assert visits_of(data, 4)[0] == [[dx("250.00")], ["[UNK]", dx("250.00")], ["[UNK]"]]
    # Patient 7 (test): 496, 401.9 | 398.91, 496; patient 3 (test): 428.22.
    assert visits_of(data, 7)[0] == [["[UNK]", dx("401.9")], ["[UNK]"]]
    assert visits_of(data, 3)[0] == [["[UNK]"]]
    stats = data.stats
    assert stats["unknown_code_occurrences"] == {"val": 3, "test": 4}
    assert stats["unknown_codes_distinct"] == {"val": 2, "test": 3}
    assert stats["visits_with_only_unknown_codes"] == {"val": 1, "test": 2}
    assert stats["n_codes"] == 12 and stats["n_codes_train"] == 8  # all patients' codes; the vocabulary's
    assert stats["codes_per_visit"] == pytest.approx(23 / 14)  # real codes, not the merged [UNK]
    assert (data.splits["train"].codes > 1).all()
    assert data.code_frequencies()[:2].tolist() == [0, 0]
    assert data.code_frequencies()[data.vocabulary.index(dx("401.9"))] == 5  # train visits: 2 + 1 + 2 (7 in all)
    # A risk cohort builds its vocabulary the same way: 414.01 is patient 4's only, in val.
    risk = RiskTask("heart_failure", HF_CODES, controls_per_case=None).build(tables, seed=0)
    assert risk.vocabulary[:2] == ["[PAD]", "[UNK]"] and dx("414.01") not in risk.vocabulary
    assert visits_of(risk, 4)[0] == [[dx("250.00")], ["[UNK]", dx("250.00")]]


def test_long_table_for_the_evaluation_leaves_unknown_codes_out(tiny):
    data = GenerationTask().build(with_splits(tiny, train=[1, 2, 5], val=[4, 6], test=[3, 7]), seed=0)
    test = data.splits["test"]
    table = test.to_long_table(data.vocabulary)
    assert "[UNK]" not in set(table["code"])
    assert table.values.tolist() == [[7, 0, dx("401.9")]]  # patient 3 and 7's second visit were all [UNK]
    kept = test.to_long_table(data.vocabulary, keep_unknown=True)
    assert (kept["code"] == "[UNK]").sum() == 3 and len(kept) == len(test.codes)


@pytest.mark.parametrize("task_class, default", [(RiskTask, "last"), (GenerationTask, "first")])
def test_keep_visits_default_is_stated_in_the_yaml(task_class, default):
    code_default = inspect.signature(task_class.__init__).parameters["keep_visits"].default
    yaml_file = "heart_failure" if task_class is RiskTask else "generation"
    stated = yaml.safe_load((CONFIG_DIR / "task" / f"{yaml_file}.yaml").read_text())["keep_visits"]
    assert code_default == stated == default


def test_keep_visits_keeps_the_first_or_the_last_visits(tiny):
    # Patient 4's input visits before its heart-failure onset: 250.00 | 414.01, 250.00.
    def risk(keep):
        task = RiskTask("heart_failure", HF_CODES, controls_per_case=None, max_visits=1, split=ALL_TRAIN,
                        **({"keep_visits": keep} if keep else {}))
        return visits_of(task.build(tiny, seed=0), 4)[0]

    assert risk(None) == risk("last") == [[dx("414.01"), dx("250.00")]]
    assert risk("first") == [[dx("250.00")]]

    # Patient 5's visits: 401.9 | 584.9, 401.9 | 276.5.
    def generation(keep):
        task = GenerationTask(max_visits=2, split=ALL_TRAIN, **({"keep_visits": keep} if keep else {}))
        data = task.build(tiny, seed=0)
        assert data.stats["dropped"]["visits_beyond_max_visits"] == 2  # patients 4 and 5 lose one each
        return visits_of(data, 5)[0]

    assert generation(None) == generation("first") == [[dx("401.9")], [dx("584.9"), dx("401.9")]]
    assert generation("last") == [[dx("584.9"), dx("401.9")], [dx("276.5")]]
    with pytest.raises(UserInputError, match="task.keep_visits"):
        GenerationTask(keep_visits="latest")


def test_cache_key_follows_the_settings_and_the_format_version(monkeypatch):
    first = GenerationTask(max_visits=3).cache_key("source", seed=0)
    assert GenerationTask(max_visits=3).cache_key("source", seed=0) == first
    assert GenerationTask(max_visits=3, keep_visits="last").cache_key("source", seed=0) != first
    monkeypatch.setattr(Task, "FORMAT_VERSION", Task.FORMAT_VERSION + 1)
    assert GenerationTask(max_visits=3).cache_key("source", seed=0) != first  # old caches are never read
