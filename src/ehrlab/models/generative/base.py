"""The generator contract: train like any model, then ``generate(n, seed)`` a long table.

Every synthetic-EHR generator (HALO, the GPT-2 baseline, ...) subclasses `Generator`. A
subclass implements two things:

- ``training_loss(batch) -> Tensor``: the scalar loss on one batch of the DataModule's
  batch contract (``codes`` [B, V, C], ``visit_mask``, ``n_visits`` ...). The base logs it as
  ``train/loss`` and ``val/loss`` (the monitored metric, lower is better).
- ``sample_codes(n, generator) -> (patient, visit, code_id)``: three equal-length int64
  tensors, one entry per generated code of ``n`` new patients, sampled with ``generator``
  only, in any order, repeats allowed. The base batches patients, drops repeated codes
  within a visit, numbers visits densely, and turns ids into code strings. A generator of
  counts (MedGAN's count mode) says so with ``emits_counts`` and returns a fourth tensor,
  ``count`` (int64 >= 1): its table always has a ``count`` column (an empty one too), and
  repeats of a code within a visit add their counts.

A generator conditioned on patient labels (HALO's phenotype label row) lists them in
``label_names`` and accepts ``labels``, a float tensor [n, len(label_names)] of requested
label vectors, as a keyword of ``sample_codes``; ``generate(..., labels=...)`` checks and
builds it from a vector or from label names (``label_vector``). Others refuse ``labels``.

``flat`` says whether the generator models a patient as one multi-hot (or count) vector,
emitting a single pseudo-visit (MedGAN, CorGAN: seed 002 §2.1, Table 12), or as a sequence
of visits; seed 002's per-family discriminator score reads it (Random Forest for flat
generators, LSTM for sequential ones, Appendix E).

The long table follows ``ehrlab.data.schema.LONG_COLUMNS``: ``subject_id`` 0..n-1,
``visit_id`` 0-based visit index within the patient, ``code`` a vocabulary string. Visits
that came out empty are dropped and the remaining visits renumbered (HALO's reference
``convert_ehr`` does the same), so a patient whose every visit is empty has no rows: as in
seed 002 Table 12 (HALO: 9,989 patients from 10,000 requested), a table may hold fewer than
``n`` distinct subjects. The runner offsets ``subject_id`` so it never meets a real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ehrlab.data.schema import LONG_COLUMNS
from ehrlab.errors import UserInputError
from ehrlab.models.base import EHRModule


def dense_visit_index(patient: torch.Tensor, visit: torch.Tensor) -> torch.Tensor:
    """Renumber each patient's visits 0, 1, 2 ... in order, skipping numbers with no codes.

    ``patient`` and ``visit`` are int64 [N], one entry per code, sorted by (patient, visit).
    A new visit starts wherever the (patient, visit) pair changes; counting those starts
    within each patient gives the dense index without a loop over patients.
    """
    if patient.numel() == 0:
        return visit.clone()
    new_visit = torch.ones_like(patient, dtype=torch.bool)
    new_visit[1:] = (patient[1:] != patient[:-1]) | (visit[1:] != visit[:-1])
    new_patient = torch.ones_like(new_visit)
    new_patient[1:] = patient[1:] != patient[:-1]
    visits_so_far = torch.cumsum(new_visit.long(), 0)
    # Count of visits that began before this patient's first code, broadcast to the patient.
    patient_start = torch.cummax(torch.where(new_patient, visits_so_far, 0), 0).values
    return visits_so_far - patient_start


def _sorted_unique(
    patient: torch.Tensor, visit: torch.Tensor, code: torch.Tensor, vocab_size: int, count: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sort (patient, visit, code) triples and drop repeats (a code is a set member of its
    visit); with ``count``, the counts of repeats are added up."""
    if patient.numel() == 0:
        return patient, visit, code, count
    n_visit_slots = int(visit.max()) + 1
    key, inverse = torch.unique((patient * n_visit_slots + visit) * vocab_size + code, return_inverse=True)  # sorted
    if count is not None:
        count = torch.zeros_like(key).scatter_add_(0, inverse, count.to(key.dtype))
    code = key % vocab_size
    patient_visit = key // vocab_size
    return patient_visit // n_visit_slots, patient_visit % n_visit_slots, code, count


class Generator(EHRModule):
    """Base of every synthetic-EHR generator (see the module docstring for the contract)."""

    family = "generation"
    #: one pseudo-visit per patient (see the module docstring)
    flat = False
    #: the patient labels ``generate(labels=...)`` can request (none by default)
    label_names: tuple[str, ...] = ()
    monitor = "val/loss"
    monitor_mode = "min"

    @property
    def emits_counts(self) -> bool:
        """Whether ``sample_codes`` returns a fourth tensor of counts (see the module docstring)."""
        return False

    def __init__(self, vocabulary: list[str], optimizer: Any = None, early_stopping_patience: int | None = None):
        """``early_stopping_patience``: validation checks without a lower ``val/loss`` before
        the runner stops training (None: train every epoch; best.ckpt keeps the lowest either
        way, so stopping only saves the epochs after the best)."""
        super().__init__(vocabulary)
        self.optimizer_factory = optimizer
        self.early_stopping_patience = early_stopping_patience
        # Object array so one fancy-index turns any id tensor into code strings.
        self._code_strings = np.asarray(self.vocabulary, dtype=object)

    # -- training ---------------------------------------------------------------------------

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["codes"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["codes"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} needs an `optimizer` (a _partial_ config node)")
        return self.optimizer_factory(params=self.parameters())

    # -- generation -------------------------------------------------------------------------

    def sample_codes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def label_vector(self, labels) -> torch.Tensor:
        """The float label vector [len(label_names)] asked for by ``labels``: either names of
        labels to set (the others are 0) or one number per label, in ``label_names`` order."""
        names = list(self.label_names)
        if not names:
            raise UserInputError(f"{type(self).__name__} is not conditioned on labels: drop generate.labels.")
        labels = [labels] if isinstance(labels, str) else list(labels)
        if all(isinstance(label, str) for label in labels):
            unknown = sorted(set(labels) - set(names))
            if unknown:
                raise UserInputError(f"generate.labels: unknown label(s) {unknown}; the model's labels are {names}.")
            return torch.tensor([float(name in labels) for name in names])
        if len(labels) != len(names) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in labels):
            raise UserInputError(f"generate.labels: give label names, or {len(names)} numbers in [0, 1] in the order "
                                 f"{names}; got {labels}.")
        return torch.tensor([float(v) for v in labels])

    def record_labels(self, records: pd.DataFrame) -> pd.DataFrame | None:
        """The labels a label-conditioned generator would give each subject of a long table
        (bool, index ``subject_id``, one column per label name), read from its codes, or None
        when labels cannot be read from codes. The runner reports their prevalence in the
        generated records, which shows whether ``generate(labels=...)`` was obeyed."""
        return None

    def generate(self, n: int, seed: int, batch_size: int = 256, progress: bool = True, labels=None) -> pd.DataFrame:
        """``n`` synthetic patients as a long table (``subject_id, visit_id, code``).

        Deterministic for a given ``seed`` and ``batch_size``: all randomness comes from one
        ``torch.Generator`` seeded here, never from the global RNG. Runs in eval mode without
        gradients and restores the training mode afterwards. ``labels`` (label names, or one
        number per label) asks every patient to carry that label vector (see ``label_vector``).
        """
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        label_vector = None if labels is None else self.label_vector(labels).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        parts = []
        try:
            with torch.no_grad():
                with tqdm(total=n, desc="generating", unit="patient", disable=not progress) as bar:
                    for start in range(0, n, batch_size):
                        size = min(batch_size, n - start)
                        conditions = {} if label_vector is None else {"labels": label_vector.expand(size, -1)}
                        patient, visit, code, *count = self.sample_codes(size, generator, **conditions)
                        patient, visit, code, count = _sorted_unique(
                            patient, visit, code, self.vocab_size, count[0] if count else None)
                        visit = dense_visit_index(patient, visit)
                        columns = [patient + start, visit, code] + ([] if count is None else [count])
                        parts.append(torch.stack(columns).cpu())
                        bar.update(size)
        finally:
            self.train(was_training)
        counted = self.emits_counts
        rows = torch.cat(parts, dim=1).numpy() if parts else np.zeros((3 + counted, 0), dtype=np.int64)
        table = pd.DataFrame(
            {
                "subject_id": rows[0].astype(np.int64),
                "visit_id": rows[1].astype(np.int64),
                "code": pd.array(self._code_strings[rows[2]], dtype="str"),
            }
        )
        if counted:
            table["count"] = rows[3].astype(np.int64)
        return table.loc[:, LONG_COLUMNS + (["count"] if counted else [])]
