"""Discriminator-based fidelity (§3.1 and Appendix E, seed 002).

A classifier learns to tell real records (label 1) from synthetic ones (label 0); the
harder that is, the better the synthetic data. Two discriminators, as in the paper:
- LSTM (E.1) over the visit sequence: each visit's multi-hot vector is embedded by a sum of
  code embeddings (a bias-free linear map of the multi-hot row), an LSTM reads the visits in
  order and a linear layer classifies its last hidden state;
- Random Forest (E.2) over the aggregated record: per code, the number of visits containing
  it (the sum of the visit multi-hot vectors).

Protocol (decisions where the paper is silent):
- The real class is the real *training* set, the distribution the generator was fit to.
- Classes are balanced by subsampling the larger one to the size of the smaller, so that
  accuracy 0.5 is chance level.
- Each record is one patient, so a split of records is the paper's patient-level split;
  it is stratified by class, 70% train / 30% test, seeded.
- The LSTM reads at most the last `max_visits` visits (default 20) of a record; it trains
  on one CPU thread by default (`torch_threads`): the model is tiny and more threads only
  contend with each other (measured 3x slower with 2 threads on a busy 2-core machine).
- The forest has 100 trees with at least 5 patients per leaf: fully grown trees on
  near-indistinguishable data split noise down to single patients and took 5x longer for
  the same accuracy.

Score. The paper measures test accuracy and normalises it to [0, 1], 1 meaning "as good as
random guessing" (its formula did not survive in our copy). We use

    score = 1 − 2·|accuracy − 0.5|            (clipped at 0)

on the balanced test set: 1 at chance, 0 for a perfect discriminator. The absolute value
treats a discriminator that is reliably wrong as informative too. We also report ROC AUC
(threshold-free) and its analogue 1 − 2·|AUC − 0.5|, but the headline `disc_*_score` is the
accuracy-based one the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from torch import nn

from ehrlab import metrics
from ehrlab.data.sequences import expand_ranges
from ehrlab.evaluation.synthetic.records import PatientRecords

TEST_FRACTION = 0.3


@dataclass
class DiscriminatorResult:
    """Held-out labels (1 real, 0 synthetic) and predicted probabilities of "real"."""

    labels: np.ndarray
    probabilities: np.ndarray


def discriminator_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy (probability ≥ 0.5 is called real), ROC AUC and their §3.1 scores, from
    `ehrlab.metrics` (AUC of one-class labels is NaN, with a warning)."""
    accuracy = metrics.accuracy(labels, probabilities >= 0.5)
    auc = metrics.roc_auc(labels, probabilities)
    return {
        "accuracy": accuracy,
        "auc": auc,
        "score": max(0.0, 1.0 - 2.0 * abs(accuracy - 0.5)),
        "auc_score": max(0.0, 1.0 - 2.0 * abs(auc - 0.5)),
    }


def balanced_split(n_real: int, n_synthetic: int, seed: int):
    """Balanced, stratified train/test split over (real rows, synthetic rows).

    Returns (train_real, train_synthetic, test_real, test_synthetic) row indices.
    """
    rng = np.random.default_rng(seed)
    n = min(n_real, n_synthetic)
    real = np.sort(rng.choice(n_real, size=n, replace=False))
    synthetic = np.sort(rng.choice(n_synthetic, size=n, replace=False))
    labels = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    rows = np.concatenate([real, synthetic])
    train, test = train_test_split(np.arange(2 * n), test_size=TEST_FRACTION, stratify=labels, random_state=seed)

    def rows_of(split: np.ndarray, label: int) -> np.ndarray:
        return np.sort(rows[split[labels[split] == label]])

    return rows_of(train, 1), rows_of(train, 0), rows_of(test, 1), rows_of(test, 0)


def _stack(real: PatientRecords, synthetic: PatientRecords, real_rows, synthetic_rows):
    """One PatientRecords holding the chosen real then synthetic patients, and their labels."""
    a, b = real.subset(real_rows), synthetic.subset(synthetic_rows)
    stacked = PatientRecords(
        visit_codes=sparse.vstack([a.visit_codes, b.visit_codes]).tocsr(),
        visit_patient=np.concatenate([a.visit_patient, b.visit_patient + a.n_patients]),
        visit_position=np.concatenate([a.visit_position, b.visit_position]),
        n_patients=a.n_patients + b.n_patients,
    )
    labels = np.concatenate([np.ones(a.n_patients), np.zeros(b.n_patients)]).astype(np.float32)
    return stacked, labels


# ---------------------------------------------------------------------------- Random Forest
def random_forest_discriminator(
    real: PatientRecords,
    synthetic: PatientRecords,
    *,
    seed: int = 0,
    n_estimators: int = 100,
    min_samples_leaf: int = 5,
    n_jobs: int = -1,
) -> DiscriminatorResult:
    """Appendix E.2: a Random Forest on per-patient code visit counts."""
    train_real, train_syn, test_real, test_syn = balanced_split(real.n_patients, synthetic.n_patients, seed)
    train, train_labels = _stack(real, synthetic, train_real, train_syn)
    test, test_labels = _stack(real, synthetic, test_real, test_syn)
    forest = RandomForestClassifier(
        n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, random_state=seed, n_jobs=n_jobs
    )
    forest.fit(train.patient_visit_counts.astype(np.float32), train_labels)
    real_column = list(forest.classes_).index(1.0)
    probabilities = forest.predict_proba(test.patient_visit_counts.astype(np.float32))[:, real_column]
    return DiscriminatorResult(labels=test_labels, probabilities=probabilities)


# ---------------------------------------------------------------------------- LSTM
class VisitSequenceClassifier(nn.Module):
    """Appendix E.1: visit multi-hot -> summed code embeddings -> LSTM -> logit of "real"."""

    def __init__(self, n_codes: int, embedding_dim: int = 64, hidden_dim: int = 64):
        super().__init__()
        self.visit_embedding = nn.EmbeddingBag(n_codes, embedding_dim, mode="sum")
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.classifier = nn.Linear(hidden_dim, 1)

    def forward(self, codes, visit_offsets, visit_patient, visit_slot, lengths) -> torch.Tensor:
        """codes/visit_offsets: the batch's visits as flat code ids + start offsets;
        visit_patient/visit_slot: where each visit goes in the (batch, max_len) grid."""
        visits = self.visit_embedding(codes, visit_offsets)
        grid = visits.new_zeros(len(lengths), int(lengths.max()), visits.shape[1])
        grid[visit_patient, visit_slot] = visits
        packed = nn.utils.rnn.pack_padded_sequence(grid, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        return self.classifier(hidden[-1]).squeeze(-1)


def _batch_tensors(records: PatientRecords, patients: np.ndarray, max_visits: int):
    """Model inputs for some patients: their last `max_visits` visits, in order."""
    lengths = np.minimum(records.visits_per_patient[patients], max_visits)
    first = records.visit_start[patients + 1] - lengths
    visit_rows = expand_ranges(first, lengths)
    visits = records.visit_codes[visit_rows]
    visit_patient = np.repeat(np.arange(len(patients)), lengths)
    visit_slot = np.arange(len(visit_rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (
        torch.from_numpy(visits.indices.astype(np.int64)),
        torch.from_numpy(visits.indptr[:-1].astype(np.int64)),
        torch.from_numpy(visit_patient),
        torch.from_numpy(visit_slot),
        torch.from_numpy(lengths.astype(np.int64)),
    )


def lstm_discriminator(
    real: PatientRecords,
    synthetic: PatientRecords,
    *,
    seed: int = 0,
    epochs: int = 5,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    max_visits: int = 20,
    embedding_dim: int = 64,
    hidden_dim: int = 64,
    torch_threads: int | None = 1,
) -> DiscriminatorResult:
    """Appendix E.1: train the LSTM discriminator with BCE for `epochs` epochs, predict the test split."""
    previous_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return _fit_predict_lstm(
            real, synthetic, seed, epochs, batch_size, learning_rate, max_visits, embedding_dim, hidden_dim
        )
    finally:
        torch.set_num_threads(previous_threads)


def _fit_predict_lstm(
    real, synthetic, seed, epochs, batch_size, learning_rate, max_visits, embedding_dim, hidden_dim
) -> DiscriminatorResult:
    train_real, train_syn, test_real, test_syn = balanced_split(real.n_patients, synthetic.n_patients, seed)
    train, train_labels = _stack(real, synthetic, train_real, train_syn)
    test, test_labels = _stack(real, synthetic, test_real, test_syn)
    torch.manual_seed(seed)
    model = VisitSequenceClassifier(real.n_codes, embedding_dim, hidden_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy(train_labels)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(train.n_patients)
        for start in range(0, len(order), batch_size):
            patients = order[start : start + batch_size]
            logits = model(*_batch_tensors(train, patients, max_visits))
            loss = loss_fn(logits, targets[patients])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        probabilities = np.concatenate(
            [
                torch.sigmoid(model(*_batch_tensors(test, np.arange(start, min(start + 1024, test.n_patients)), max_visits))).numpy()
                for start in range(0, test.n_patients, 1024)
            ]
        )
    return DiscriminatorResult(labels=test_labels, probabilities=probabilities)
