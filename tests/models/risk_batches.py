"""Builders shared by the risk-model tests: batches in the DataModule contract and models
composed from the real conf/model files."""

from __future__ import annotations

import torch
from support import compose_risk_model  # noqa: F401  (re-exported for the risk-model tests)


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
    # Visit days: increasing gaps of up to 200 days from the first visit.
    gaps = torch.rand(n_patients, n_visits, generator=generator) * 200 * visit_mask
    gaps[:, 0] = 0.0
    days = gaps.cumsum(dim=1)
    last_day = days.gather(1, (visit_counts - 1)[:, None])
    time_to_end = (last_day - days) * visit_mask
    labels = torch.arange(n_patients) % 2 if alternate_labels else \
        torch.randint(0, 2, (n_patients,), generator=generator)
    return {
        "codes": codes,
        "visit_mask": visit_mask,
        "n_visits": visit_counts,
        "time_delta": gaps,
        "time_to_end": time_to_end,
        "age": torch.full((n_patients,), 70.0),
        "gender": torch.zeros(n_patients, dtype=torch.long),
        "subject_id": torch.arange(n_patients),
        "label": labels,
    }


# --- plain-torch references: expected values that do not call the modules under test ------


def hand_set_lstm_backbone(backbone, seed=0) -> dict[str, torch.Tensor]:
    """Overwrite every parameter of an ``LSTMBackbone`` with values drawn here and return
    them by the paper's names; the padding row 0 of W_v gets non-zero garbage on purpose."""
    generator = torch.Generator().manual_seed(seed)
    vocab_size, visit_dim = backbone.code_embedding.weight.shape
    hidden_dim, time_dim = backbone.hidden_dim, backbone.time_embedding.time_dim

    def draw(*shape):
        return torch.randn(*shape, generator=generator) * 0.7

    weights = {
        "W_v": draw(vocab_size, visit_dim), "b_v": draw(visit_dim),
        "W_f": draw(time_dim), "b_f": draw(time_dim), "W_t": draw(visit_dim, time_dim), "b_t": draw(visit_dim),
        "W_ih": draw(4 * hidden_dim, visit_dim), "W_hh": draw(4 * hidden_dim, hidden_dim),
        "b_ih": draw(4 * hidden_dim), "b_hh": draw(4 * hidden_dim),
        "W_y": draw(2, hidden_dim), "b_y": draw(2),
    }
    with torch.no_grad():
        backbone.code_embedding.weight.copy_(weights["W_v"])
        backbone.code_bias.copy_(weights["b_v"])
        backbone.time_embedding.feature.linear.weight.copy_(weights["W_f"][:, None])
        backbone.time_embedding.feature.linear.bias.copy_(weights["b_f"])
        backbone.time_embedding.projection.weight.copy_(weights["W_t"])
        backbone.time_embedding.projection.bias.copy_(weights["b_t"])
        backbone.lstm.weight_ih_l0.copy_(weights["W_ih"])
        backbone.lstm.weight_hh_l0.copy_(weights["W_hh"])
        backbone.lstm.bias_ih_l0.copy_(weights["b_ih"])
        backbone.lstm.bias_hh_l0.copy_(weights["b_hh"])
        backbone.output.weight.copy_(weights["W_y"])
        backbone.output.bias.copy_(weights["b_y"])
    return weights


def reference_visit_embeddings(batch, weights) -> torch.Tensor:
    """Eq. 3.1–3.3: ``e_k = ReLU(Σ_{codes c ≠ 0 of visit k} W_v[c] + b_v)
    + W_t (1 − tanh((W_f Δt_k/180 + b_f)²)) + b_t``."""
    codes = batch["codes"]
    code_sum = (weights["W_v"][codes] * (codes != 0)[..., None]).sum(dim=2)
    code_part = torch.relu(code_sum + weights["b_v"])
    gap = batch["time_to_end"][..., None] / 180.0
    time_part = (1.0 - torch.tanh((gap * weights["W_f"] + weights["b_f"]) ** 2)) @ weights["W_t"].T + weights["b_t"]
    return code_part + time_part


def reference_lstm(inputs, weights) -> torch.Tensor:
    """Eq. 3.4, a single-layer LSTM unrolled over visits (gate rows in PyTorch's i, f, g, o order)."""
    n_patients, n_visits, _ = inputs.shape
    hidden = cell = inputs.new_zeros(n_patients, weights["W_hh"].shape[1])
    states = []
    for k in range(n_visits):
        gates = inputs[:, k] @ weights["W_ih"].T + weights["b_ih"] + hidden @ weights["W_hh"].T + weights["b_hh"]
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
        hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
        states.append(hidden)
    return torch.stack(states, dim=1)


def reference_cross_entropy(hidden_states, batch, weights) -> torch.Tensor:
    """Eq. 3.13 and 3.16: −log Softmax(W_y h_K + b_y)[y] at each patient's last real visit, batch mean."""
    last = torch.stack([hidden_states[b, int(n) - 1] for b, n in enumerate(batch["n_visits"])])
    log_probabilities = torch.log_softmax(last @ weights["W_y"].T + weights["b_y"], dim=-1)
    return -log_probabilities[torch.arange(len(last)), batch["label"]].mean()
