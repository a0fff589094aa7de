"""LightningDataModules: TaskData in, padded tensor batches out.

The batch contract every model relies on (B patients, V visits, C codes per visit):
- `codes` int64 [B, V, C]: code ids, 0 = padding, 1 = `[UNK]` (a validation or test code
  the training split lacks); visits in time order, left-aligned.
- `visit_mask` bool [B, V]; `n_visits` int64 [B].
- `time_delta` float32 [B, V]: days since the previous visit (0 for the first and padding).
- `time_to_end` float32 [B, V]: days from the visit to the last input visit (0 for padding).
- `age` float32 [B], `gender` int64 [B] (0 F, 1 M, 2 unknown), `subject_id` int64 [B].
- `label` int64 [B] for risk tasks.
Padding a batch is vectorised numpy over the flat PatientSequences arrays.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ehrlab.data.sequences import PatientSequences, expand_ranges
from ehrlab.data.tasks.base import TaskData


class PatientIndex(Dataset):
    """A split as a dataset of patient positions; `collate` does the real work per batch."""

    def __init__(self, sequences: PatientSequences):
        self.sequences = sequences

    def __len__(self) -> int:
        return self.sequences.n_patients

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return pad_batch(self.sequences, np.asarray(indices, dtype=np.int64))


def pad_batch(sequences: PatientSequences, patients: np.ndarray) -> dict[str, torch.Tensor]:
    """Padded tensors for the given patients (see the module docstring for the contract)."""
    n_visits = sequences.visits_per_patient()[patients]
    visits = expand_ranges(sequences.visit_offsets[patients], n_visits)
    n_codes = sequences.codes_per_visit()[visits]
    batch_size, max_visits, max_codes = len(patients), int(n_visits.max()), max(int(n_codes.max()), 1)

    row = np.repeat(np.arange(batch_size), n_visits)  # batch row of each visit
    first_visit = np.cumsum(n_visits) - n_visits
    visit_pos = np.arange(len(visits)) - first_visit[row]  # position of each visit in its patient
    code_visit = np.repeat(np.arange(len(visits)), n_codes)  # visit of each code
    code_pos = np.arange(len(code_visit)) - (np.cumsum(n_codes) - n_codes)[code_visit]

    codes = np.zeros((batch_size, max_visits, max_codes), dtype=np.int64)
    codes[row[code_visit], visit_pos[code_visit], code_pos] = sequences.codes[expand_ranges(
        sequences.code_offsets[visits], n_codes)]
    visit_mask = np.zeros((batch_size, max_visits), dtype=bool)
    visit_mask[row, visit_pos] = True
    days = np.zeros((batch_size, max_visits), dtype=np.float64)
    days[row, visit_pos] = sequences.visit_days[visits]
    time_delta = np.zeros_like(days)
    time_delta[:, 1:] = np.where(visit_mask[:, 1:], days[:, 1:] - days[:, :-1], 0.0)
    last_day = days[np.arange(batch_size), n_visits - 1]
    time_to_end = np.where(visit_mask, last_day[:, None] - days, 0.0)

    batch = {
        "codes": torch.from_numpy(codes),
        "visit_mask": torch.from_numpy(visit_mask),
        "n_visits": torch.from_numpy(n_visits.astype(np.int64)),
        "time_delta": torch.from_numpy(time_delta.astype(np.float32)),
        "time_to_end": torch.from_numpy(time_to_end.astype(np.float32)),
        "age": torch.from_numpy(sequences.age[patients].astype(np.float32)),
        "gender": torch.from_numpy(sequences.gender[patients].astype(np.int64)),
        "subject_id": torch.from_numpy(sequences.subject_id[patients].astype(np.int64)),
    }
    labels = sequences.label[patients]
    if (labels >= 0).all():
        batch["label"] = torch.from_numpy(labels.astype(np.int64))
    return batch


class SplitDataModule(pl.LightningDataModule):
    """What every family's DataModule shares: loaders over `datasets` (split name -> a dataset
    with a `collate`), the training split shuffled, the others in order; predict = test.

    Args: batch_size, num_workers, pin_memory: as for torch DataLoaders.
    """

    datasets: dict[str, Dataset]

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def model_arguments(self) -> dict:
        """What the data tells a model's constructor (the runner instantiates the model with it)."""
        raise NotImplementedError

    def _loader(self, split: str | Dataset, shuffle: bool) -> DataLoader:
        """A loader over a split of `datasets` (by name) or over a dataset built from one."""
        dataset = self.datasets[split] if isinstance(split, str) else split
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=dataset.collate,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split in its stored order (predictions line up with it row by row)."""
        return self._loader("test", shuffle=False)


class EHRDataModule(SplitDataModule):
    """Batches of one task's prepared data, for risk predictors and generators alike.

    Args:
        task_data: the prepared task (see `ehrlab.data.tasks`).
        batch_size, num_workers, pin_memory: as for torch DataLoaders.
    """

    def __init__(self, task_data: TaskData, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False):
        super().__init__(batch_size, num_workers, pin_memory)
        self.task_data = task_data
        self.datasets = {name: PatientIndex(seqs) for name, seqs in task_data.splits.items()}

    @property
    def vocabulary(self) -> list[str]:
        return self.task_data.vocabulary

    def model_arguments(self) -> dict:
        """What the data tells a model's constructor: its code vocabulary."""
        return {"vocabulary": self.vocabulary}

    @property
    def code_frequencies(self) -> np.ndarray:
        """Training-split visits per code id (never the held-out splits'); see TaskData."""
        return self.task_data.code_frequencies()
