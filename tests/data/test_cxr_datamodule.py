"""CXRDataModule: the batch contract of the cxr_forecast family, checked value by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cxr_task import event_table, fake_encoder, image_table, standard_tables, use_fake_encoder

from ehrlab.data.cxr.contract import CXRTables
from ehrlab.data.cxr.datamodule import drop_events, event_donors
from ehrlab.data.tasks.cxr import CXRForecastTask, CXRTaskData
from ehrlab.errors import UserInputError
from ehrlab.families import FAMILIES


@pytest.fixture
def saved(tmp_path) -> CXRTaskData:
    data = use_fake_encoder(CXRForecastTask(image_size=8, max_events=4, split=[0.6, 0.2, 0.2])
                            .build(standard_tables(tmp_path), seed=0), tmp_path)
    data.save(tmp_path / "task")
    return CXRTaskData.load(tmp_path / "task")


def test_batch_contract(saved):
    module = saved.datamodule(batch_size=4)
    batch = next(iter(module.train_dataloader()))
    size, width = len(batch["pair_id"]), batch["events"].shape[1]
    assert batch["prev_image"].shape == batch["target_image"].shape == (size, 1, 8, 8)
    assert batch["prev_image"].dtype == torch.float32
    assert 0 <= batch["prev_image"].min() and batch["target_image"].max() <= 1
    assert batch["events"].shape == (size, width, 4) and batch["events"].dtype == torch.float32
    assert batch["event_mask"].dtype == torch.bool and batch["event_mask"].shape == (size, width)
    assert batch["prev_labels"].shape == batch["target_labels"].shape == (size, len(saved.findings))
    for key, dtype in (("age", torch.float32), ("sex", torch.int64), ("pair_id", torch.int64),
                       ("subject_id", torch.int64), ("prev_labels", torch.float32)):
        assert batch[key].dtype == dtype and batch[key].shape[0] == size
    assert module.model_arguments() == {"findings": saved.findings, "event_dim": 4, "image_size": 8,
                                        "max_events": 4}


def test_batch_values_follow_the_pairs(saved):
    module = saved.datamodule(batch_size=3)
    position = {int(p): i for i, p in enumerate(saved.pairs["pair_id"])}
    embeddings = fake_encoder()(saved.texts)
    previous, target = saved.previous_labels(), saved.target_labels()
    seen = 0
    for batch in module.train_dataloader():
        for b, pair_id in enumerate(batch["pair_id"].tolist()):
            row = position[pair_id]
            pair = saved.pairs.iloc[row]
            np.testing.assert_allclose(batch["prev_image"][b, 0].numpy(), saved.pixels[pair["prev_index"]] / 255.0,
                                       rtol=1e-6)
            np.testing.assert_allclose(batch["target_image"][b, 0].numpy(),
                                       saved.pixels[pair["target_index"]] / 255.0, rtol=1e-6)
            ids = saved.event_text_ids[saved.event_offsets[row]:saved.event_offsets[row + 1]]
            n = len(ids)
            assert batch["event_mask"][b].tolist() == [True] * n + [False] * (batch["events"].shape[1] - n)
            np.testing.assert_array_equal(batch["events"][b, :n].numpy(), embeddings[ids])  # time order
            assert not batch["events"][b, n:].any()
            np.testing.assert_array_equal(batch["prev_labels"][b].numpy(), previous[row])
            np.testing.assert_array_equal(batch["target_labels"][b].numpy(), target[row])
            target_image = saved.images.iloc[pair["target_index"]]
            assert batch["subject_id"][b] == pair["subject_id"]
            assert batch["age"][b] == pytest.approx(target_image["age"])
            assert batch["sex"][b] == {"F": 0, "M": 1}[target_image["sex"]]
            seen += 1
    assert seen == saved.n_pairs("train")


def test_predict_order_is_the_reference_order(saved):
    module = saved.datamodule(batch_size=2)
    predicted = torch.cat([b["pair_id"] for b in module.predict_dataloader()]).numpy()
    np.testing.assert_array_equal(predicted, saved.reference("test").pair_id)
    validated = torch.cat([b["pair_id"] for b in module.val_dataloader()]).numpy()
    np.testing.assert_array_equal(validated, saved.reference("val").pair_id)


def test_pairs_without_events_get_one_masked_column(tmp_path):
    images = image_table(tmp_path, [(s, 1, 10 * s + k, 5.0 * k) for s in (1, 2, 3) for k in (0, 1)])
    tables = CXRTables(images=images, events=event_table([(3, 40.0, "outside every window")]), counts={})
    data = use_fake_encoder(CXRForecastTask(image_size=8, min_events=0).build(tables, seed=0), tmp_path)
    data.save(tmp_path / "task")
    batch = next(iter(data.datamodule(batch_size=8).train_dataloader()))
    assert batch["events"].shape[1] == 1 and not batch["event_mask"].any()


def event_batch(n_pairs: int = 40, width: int = 30, dim: int = 3) -> dict[str, torch.Tensor]:
    """Events numbered by position (event j of a pair holds the value j + 1) so that a
    dropped or reordered event shows in the values."""
    lengths = torch.arange(n_pairs) % width + 1
    mask = torch.arange(width) < lengths.unsqueeze(1)
    events = (torch.arange(width, dtype=torch.float32) + 1).view(1, width, 1).expand(n_pairs, width, dim) * mask.unsqueeze(-1)
    return {"events": events.clone(), "event_mask": mask, "pair_id": torch.arange(n_pairs) + 1000}


def test_dropping_events_keeps_a_left_aligned_ordered_subset():
    batch = event_batch()
    dropped = drop_events(batch, 0.2, seed=3)
    assert drop_events(batch, 0.0, seed=3) is batch
    kept = dropped["event_mask"]
    assert (kept.sum(1) <= batch["event_mask"].sum(1)).all()
    for row in range(len(kept)):
        n = int(kept[row].sum())
        assert kept[row, :n].all() and not kept[row, n:].any()  # left-aligned
        values = dropped["events"][row, :n, 0]
        assert (values[1:] > values[:-1]).all()  # time order kept, each event at most once
        assert set(values.tolist()) <= set(batch["events"][row, : int(batch["event_mask"][row].sum()), 0].tolist())
        assert (dropped["events"][row, n:] == 0).all()
    share = 1 - kept.sum() / batch["event_mask"].sum()
    assert 0.12 < share < 0.28  # about the fraction asked for (620 events)


def test_dropped_events_depend_on_the_pair_not_the_batch():
    batch = event_batch()
    whole = drop_events(batch, 0.3, seed=1)
    half = drop_events({k: v[20:] for k, v in batch.items()}, 0.3, seed=1)
    width = half["events"].shape[1]
    assert torch.equal(whole["events"][20:, :width], half["events"])
    assert not torch.equal(drop_events(batch, 0.3, seed=2)["event_mask"], whole["event_mask"])
    with pytest.raises(ValueError):
        drop_events(batch, 1.0, seed=0)


# --- swapped events -----------------------------------------------------------------------

@pytest.mark.parametrize("subjects", [[1, 1, 1, 2, 2, 3, 4, 4, 4, 5, 6, 6], [7, 8], [3, 3, 9, 9, 9, 4]])
def test_event_donors_give_each_pair_another_patients_events_once(subjects):
    subject_id = np.asarray(subjects)
    donors = event_donors(subject_id, seed=0)
    assert sorted(donors.tolist()) == list(range(len(subjects)))  # every pair's events given exactly once
    assert (subject_id[donors] != subject_id).all()
    np.testing.assert_array_equal(event_donors(subject_id, seed=0), donors)


def test_event_donors_depend_on_the_seed_and_refuse_an_impossible_swap():
    subject_id = np.arange(40) // 2
    assert not np.array_equal(event_donors(subject_id, seed=0), event_donors(subject_id, seed=1))
    with pytest.raises(ValueError, match="patient 1 has 3 of the 5 pairs"):
        event_donors(np.asarray([1, 1, 1, 2, 3]), seed=0)


def test_swapped_events_replace_only_the_events(tmp_path):
    data = use_fake_encoder(CXRForecastTask(image_size=8, max_events=4, split=[0.3, 0.2, 0.5])
                            .build(standard_tables(tmp_path), seed=0), tmp_path)
    data.save(tmp_path / "task")
    saved = CXRTaskData.load(tmp_path / "task")
    module = saved.datamodule(batch_size=2)
    own = list(module.predict_dataloader())
    swapped = list(module.predict_dataloader(swap_events_seed=4))
    test_rows = module.datasets["test"].rows
    donors = event_donors(saved.pairs["subject_id"].to_numpy()[test_rows], seed=4)
    own_events = [b["events"][i, : int(b["event_mask"][i].sum())] for b in own for i in range(len(b["pair_id"]))]
    position = 0
    for mine, theirs in zip(own, swapped, strict=True):
        for key in mine.keys() - {"events", "event_mask"}:
            assert torch.equal(mine[key].nan_to_num(-7), theirs[key].nan_to_num(-7)), key
        for i in range(len(theirs["pair_id"])):
            n = int(theirs["event_mask"][i].sum())
            assert torch.equal(theirs["events"][i, :n], own_events[donors[position]])
            assert not theirs["event_mask"][i, n:].any() and not theirs["events"][i, n:].any()
            position += 1
    assert position == len(test_rows)


def test_a_test_split_of_one_patient_cannot_swap_events(saved):
    module = saved.datamodule(batch_size=2)
    assert len(np.unique(saved.pairs["subject_id"].to_numpy()[module.datasets["test"].rows])) == 1
    with pytest.raises(UserInputError, match="swapped events on the test split: cannot give every pair"):
        module.predict_dataloader(swap_events_seed=0)


@pytest.mark.parametrize("stage", ["all", "evaluate"])
def test_the_family_refuses_a_swap_the_test_split_cannot_make_before_training(saved, make_config, stage):
    model_class = type("SomeForecaster", (), {"family": "cxr_forecast"})
    family = FAMILIES["cxr_forecast"]
    family.check(make_config(f"stage={stage}"), model_class, saved)  # own events: nothing to refuse
    with pytest.raises(UserInputError, match="swapped events on the test split: cannot give every pair"):
        family.check(make_config(f"stage={stage}", "cxr_evaluation.swap_events=true"), model_class, saved)
