"""SAnD (Song et al., AAAI 2018): dense interpolation (Algorithm 1) and the masked attention."""

import torch
from risk_batches import compose_risk_model, random_risk_batch

from ehrlab.models.risk.sand import SAnDBackbone

VOCAB_SIZE = 30


def small_sand(**kwargs) -> SAnDBackbone:
    torch.manual_seed(0)
    return SAnDBackbone(VOCAB_SIZE, visit_dim=16, hidden_dim=16, dropout=0.0, **kwargs).eval()


def algorithm_1(hidden_states: torch.Tensor, n_real: int, factor: int) -> torch.Tensor:
    """Algorithm 1 of the paper, written as its loops over one patient's real visits."""
    u = torch.zeros(factor, hidden_states.shape[-1])
    for t in range(1, n_real + 1):
        s = factor * t / n_real
        for m in range(1, factor + 1):
            u[m - 1] += (1 - abs(s - m) / factor) ** 2 * hidden_states[t - 1]
    return u.flatten()


def test_dense_interpolation_is_algorithm_1_over_the_real_visits_only():
    backbone = small_sand(interpolation_factor=3)
    batch = random_risk_batch(VOCAB_SIZE, n_patients=5, n_visits=6, seed=1)
    hidden = torch.randn(5, 6, 16, generator=torch.Generator().manual_seed(2))
    expected = torch.stack([algorithm_1(hidden[b], int(n), 3) for b, n in enumerate(batch["n_visits"])])
    torch.testing.assert_close(backbone.patient_representation(hidden, batch), expected)
    # Garbage in the padding slots and extra padding visits change nothing.
    padded = dict(batch, visit_mask=torch.nn.functional.pad(batch["visit_mask"], (0, 4)))
    garbage = torch.cat([hidden.masked_fill(~batch["visit_mask"][..., None], 7.0), torch.full((5, 4, 16), 9.0)], 1)
    torch.testing.assert_close(backbone.patient_representation(garbage, padded), expected)


def test_restricted_attention_window_sees_only_the_last_r_visits():
    """With one layer and r = 2, h_k reads visits k−1 and k: changing visit 1 moves h_1 and
    h_2 only; without a window it moves every later h_k too."""
    batch = random_risk_batch(VOCAB_SIZE, n_patients=3, n_visits=5, seed=3)
    changed = dict(batch, codes=batch["codes"].clone())
    changed["codes"][0, 0] = torch.tensor([5, 6, 7])  # patient 0 has all 5 visits
    for window, moved in ((2, [True, True, False, False, False]), (None, [True] * 5)):
        backbone = small_sand(attention_window=window)
        with torch.no_grad():
            before = backbone.encode(backbone.embed_visits(batch), batch)[0]
            after = backbone.encode(backbone.embed_visits(changed), changed)[0]
        assert [not torch.allclose(a, b) for a, b in zip(after, before)] == moved


def test_config_defaults():
    backbone = compose_risk_model("sand", ["[PAD]"] + [f"C{i}" for i in range(1, VOCAB_SIZE)]).backbone
    assert isinstance(backbone, SAnDBackbone) and backbone.causal and not backbone.time_aware
    assert (backbone.visit_dim, backbone.hidden_dim, backbone.interpolation_factor) == (256, 256, 4)
    assert backbone.output.in_features == 4 * 256
