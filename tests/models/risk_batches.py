"""Builders shared by the risk-model tests: batches in the DataModule contract and models
composed from the real conf/model files."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ehrlab.config import CONFIG_DIR


def random_risk_batch(vocab_size: int, n_patients=6, n_visits=4, n_codes=3, seed=0, *, pad_last_code=False,
                      alternate_labels=False) -> dict[str, torch.Tensor]:
    """Left-aligned visits, id 0 padding, the first patient filling every visit slot.

    `pad_last_code` leaves every visit's last code slot empty; labels are 0/1 alternating
    with `alternate_labels`, else drawn at random.
    """
    generator = torch.Generator().manual_seed(seed)
    visit_counts = torch.randint(1, n_visits + 1, (n_patients,), generator=generator)
    visit_counts[0] = n_visits
    visit_mask = torch.arange(n_visits)[None] < visit_counts[:, None]
    codes = torch.randint(1, vocab_size, (n_patients, n_visits, n_codes), generator=generator)
    if pad_last_code:
        codes[:, :, -1] = 0
    codes = codes * visit_mask[..., None]
    time_to_end = torch.rand(n_patients, n_visits, generator=generator) * 400 * visit_mask
    labels = torch.arange(n_patients) % 2 if alternate_labels else \
        torch.randint(0, 2, (n_patients,), generator=generator)
    return {
        "codes": codes,
        "visit_mask": visit_mask,
        "n_visits": visit_counts,
        "time_delta": time_to_end.clone(),
        "time_to_end": time_to_end,
        "age": torch.full((n_patients,), 70.0),
        "gender": torch.zeros(n_patients, dtype=torch.long),
        "subject_id": torch.arange(n_patients),
        "label": labels,
    }


def compose_risk_model(name: str, vocabulary: list[str], overrides=()):
    """conf/model/<name>.yaml with overrides, instantiated as the runner does."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"model/{name}", overrides=list(overrides))
    return instantiate(cfg.model, vocabulary=vocabulary)
