"""Batches of seed 004 triples for the `cxr_forecast` model family.

The batch contract (B pairs, E events, F findings, S pixels, D embedding width):
- `prev_image`, `target_image` float32 [B, 1, S, S] in [0, 1] (the cached grey uint8 / 255).
- `events` float32 [B, E, D]: each pair's event-text embeddings in time order, left-aligned,
  zeros after its last event; `event_mask` bool [B, E] marks the real ones. E is the batch's
  longest list (at most the task's max_events) and at least 1, so a batch whose pairs have no
  event still has one all-False column.
- `prev_labels`, `target_labels` float32 [B, F] in {0, 1, NaN} (the task's label policy).
- `age` float32 [B] (NaN unknown), `sex` int64 [B] (0 F, 1 M, 2 unknown), `pair_id`,
  `subject_id` int64 [B]; demographics are the target image's.
Collation is vectorised: one sorted read of the memory-mapped image array per batch and one
fancy-index assignment that scatters every event of the batch into its padded slot.

Two test-time changes of the events serve the studies of whether a model uses them:
`drop_events` (seed 004 Appendix D.7) and `predict_dataloader(swap_events_seed=...)`, which
gives every test pair another patient's events (`event_donors`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ehrlab.data.datamodules import SplitDataModule
from ehrlab.data.sequences import expand_ranges
from ehrlab.data.tasks.cxr import CXRTaskData, demographics, gather_rows
from ehrlab.errors import UserInputError


class PairIndex(Dataset):
    """One split as a dataset of pair positions; `collate` builds the batch. With `event_rows`
    (aligned with `rows`) the pair at rows[i] carries the events of pair event_rows[i]."""

    def __init__(self, batcher: PairBatcher, rows: np.ndarray, event_rows: np.ndarray | None = None):
        self.batcher = batcher
        self.rows = rows
        self.event_source = None if event_rows is None else dict(zip(rows.tolist(), event_rows.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return int(self.rows[index])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        event_rows = None if self.event_source is None else np.asarray([self.event_source[r] for r in rows])
        return self.batcher.batch(np.asarray(rows, dtype=np.int64), event_rows)


class PairBatcher:
    """Per-pair arrays of a CXRTaskData, gathered once, and the batch built from them."""

    def __init__(self, task_data: CXRTaskData):
        if task_data.pixels is None or task_data.event_embeddings is None:
            raise RuntimeError("CXRTaskData has no image array yet: save(folder) or load(folder) it first")
        pairs = task_data.pairs
        images = task_data.images
        self.pixels = task_data.pixels
        self.embeddings = task_data.event_embeddings
        self.text_ids = task_data.event_text_ids
        self.offsets = task_data.event_offsets
        self.prev_index = pairs["prev_index"].to_numpy(np.int64)
        self.target_index = pairs["target_index"].to_numpy(np.int64)
        self.n_events = pairs["n_events"].to_numpy(np.int64)
        self.prev_labels = task_data.previous_labels()
        self.target_labels = task_data.target_labels()
        target = demographics(images.iloc[self.target_index])
        self.age, self.sex = target["age"], target["sex"]
        self.pair_id = pairs["pair_id"].to_numpy(np.int64)
        self.subject_id = pairs["subject_id"].to_numpy(np.int64)

    def batch(self, rows: np.ndarray, event_rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The pairs at `rows`, each with its own events or, given `event_rows`, with those of
        the pair at the same position of `event_rows`."""
        size = len(rows)
        both = gather_rows(self.pixels, np.concatenate([self.prev_index[rows], self.target_index[rows]]))
        both = torch.from_numpy(both).unsqueeze(1).to(torch.float32).div_(255.0)

        event_rows = rows if event_rows is None else event_rows
        n_events = self.n_events[event_rows]
        width = max(int(n_events.max()), 1)
        flat = expand_ranges(self.offsets[event_rows], n_events)
        row = np.repeat(np.arange(size), n_events)
        position = np.arange(len(flat)) - (np.cumsum(n_events) - n_events)[row]
        events = np.zeros((size, width, self.embeddings.shape[1]), dtype=np.float32)
        events[row, position] = gather_rows(self.embeddings, self.text_ids[flat])
        event_mask = np.zeros((size, width), dtype=bool)
        event_mask[row, position] = True

        return {
            "prev_image": both[:size], "target_image": both[size:],
            "events": torch.from_numpy(events), "event_mask": torch.from_numpy(event_mask),
            "prev_labels": torch.from_numpy(self.prev_labels[rows]),
            "target_labels": torch.from_numpy(self.target_labels[rows]),
            "age": torch.from_numpy(self.age[rows]), "sex": torch.from_numpy(self.sex[rows]),
            "pair_id": torch.from_numpy(self.pair_id[rows]), "subject_id": torch.from_numpy(self.subject_id[rows]),
        }


class CXRDataModule(SplitDataModule):
    """Batches of one prepared cxr_forecast task (see the module docstring).

    Args:
        task_data: saved or loaded CXRTaskData (its image array is memory-mapped).
        batch_size, num_workers, pin_memory: as for torch DataLoaders. Workers share the
            memory maps (fork), so more workers cost no copies of the image array.
    """

    def __init__(self, task_data: CXRTaskData, batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False):
        super().__init__(batch_size, num_workers, pin_memory)
        self.task_data = task_data
        batcher = PairBatcher(task_data)
        self.datasets = {name: PairIndex(batcher, task_data.pair_rows(name)) for name in ("train", "val", "test")}

    def predict_dataloader(self, swap_events_seed: int | None = None) -> DataLoader:
        """The test split in its stored order. With `swap_events_seed`, each pair carries the
        events of another patient's test pair instead of its own (`event_donors`): the images,
        labels and ids stay the pair's own, so the forecasts line up with the reference."""
        if swap_events_seed is None:
            return super().predict_dataloader()
        test = self.datasets["test"]
        event_rows = swapped_event_rows(test.batcher.subject_id, test.rows, swap_events_seed)
        return self._loader(PairIndex(test.batcher, test.rows, event_rows=event_rows), shuffle=False)

    def model_arguments(self) -> dict:
        """What the data tell a model's constructor."""
        return {"findings": list(self.task_data.findings), "event_dim": int(self.task_data.event_embeddings.shape[1]),
                "image_size": int(self.task_data.image_size), "max_events": int(self.task_data.max_events)}


def event_donors(subject_id: np.ndarray, seed: int) -> np.ndarray:
    """For each pair (a position in `subject_id`), the position of the pair whose events it
    gets: always another patient's, and every pair's events given to exactly one pair (a
    permutation, so the swapped test split holds the same events as the real one).

    The pairs are laid out patient by patient (patients and their pairs in an order drawn from
    `seed`) and each takes the events of the pair k places further round the circle, k = the
    largest patient's number of pairs: k places always leave a patient's block, and never
    return to it when n >= 2k. With n < 2k no such assignment exists (that patient's pairs
    outnumber everyone else's), and a ValueError says so.
    """
    n = len(subject_id)
    patients, patient_of, counts = np.unique(subject_id, return_inverse=True, return_counts=True)
    shift = int(counts.max()) if n else 0
    if n < 2 * shift:
        raise ValueError(f"cannot give every pair another patient's events: patient {patients[counts.argmax()]} "
                         f"has {shift} of the {n} pairs")
    rng = np.random.default_rng(seed)
    patient_rank = rng.permutation(len(patients))
    layout = np.lexsort((rng.random(n), patient_rank[patient_of]))  # layout[slot] = pair
    donors = np.empty(n, dtype=np.int64)
    donors[layout] = layout[(np.arange(n) + shift) % n]
    return donors


def swapped_event_rows(subject_id: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """For each pair of `rows` (positions in the task's pairs, `subject_id` per position), the
    position of the pair among `rows` whose events it gets (`event_donors`); a UserInputError
    when the split cannot give every pair another patient's events."""
    try:
        donors = event_donors(subject_id[rows], seed)
    except ValueError as error:
        raise UserInputError(f"swapped events on the test split: {error}") from error
    return rows[donors]


def drop_events(batch: dict[str, torch.Tensor], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """The batch with each event dropped with probability `fraction` (seed 004 Appendix D.7:
    "randomly dropping 5%, 10%, and 20% of medical events for each sample" at test time).

    The survivors keep their time order and are left-aligned again, as if the data had never
    had the dropped ones (a model that reads event slots by position sees the same layout).
    The draw depends only on (`seed`, pair_id), so a pair loses the same events whatever
    batch it is in; a pair may lose all of them.
    """
    if fraction <= 0:
        return batch
    if fraction >= 1:
        raise ValueError(f"drop fraction {fraction} must be below 1")
    mask = batch["event_mask"].cpu().numpy()
    keep = np.zeros_like(mask)
    for row, pair_id in enumerate(batch["pair_id"].tolist()):
        draws = np.random.default_rng([seed, pair_id]).random(mask.shape[1])
        keep[row] = mask[row] & (draws >= fraction)
    # Stable sort of "dropped" (True last) moves the kept events to the front in their order.
    order = torch.from_numpy(np.argsort(~keep, axis=1, kind="stable")).to(batch["events"].device)
    events = torch.gather(batch["events"], 1, order.unsqueeze(-1).expand_as(batch["events"]))
    new_mask = torch.from_numpy(np.take_along_axis(keep, order.cpu().numpy(), axis=1)).to(batch["event_mask"].device)
    return {**batch, "events": events * new_mask.unsqueeze(-1).to(events.dtype), "event_mask": new_mask}

