"""Dipole (Ma et al., KDD 2017): bidirectional GRU and the three attentions, Eq. 4–10."""

import pytest
import torch
from risk_batches import compose_risk_model, random_risk_batch

from ehrlab.models.risk.dipole import ATTENTIONS, DipoleBackbone

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 30)]
SMALL = ["model.backbone.visit_dim=8", "model.backbone.hidden_dim=6", "model.backbone.attention_dim=5",
         "model.backbone.context_dim=7", "model.backbone.embedding_dropout=0.0", "model.backbone.dropout=0.0"]


def small_model(attention="location"):
    torch.manual_seed(0)
    return compose_risk_model("dipole", VOCABULARY, [*SMALL, f"model.backbone.attention={attention}"]).eval()


def make_batch(seed=0):
    batch = random_risk_batch(len(VOCABULARY), n_patients=6, n_visits=5, n_codes=4, seed=seed, pad_last_code=True)
    batch["codes"][1, 1:], batch["visit_mask"][1, 1:], batch["n_visits"][1] = 0, False, 1  # a one-visit patient
    return batch


def score(backbone: DipoleBackbone, query, state):
    """Eq. 4 / 6 / 7 for one (h_K, h_i) pair, from the module's weights."""
    if backbone.attention == "location":
        return backbone.score.weight[0] @ state
    if backbone.attention == "general":
        return query @ backbone.score.weight @ state
    first, _, second = backbone.score
    return second.weight[0] @ torch.tanh(first.weight @ torch.cat([query, state]))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_representation_matches_the_equations_patient_by_patient(attention):
    """α over h_1..h_{K−1} only (Eq. 5), c (Eq. 8), h̃ = tanh(W_c [c; h_K]) (Eq. 9), c = 0 for K = 1."""
    model = small_model(attention)
    backbone = model.backbone
    batch = make_batch(seed=1)
    with torch.no_grad():
        hidden = backbone.encode(backbone.embed_visits(batch), batch)
        assert hidden.shape == (6, 5, 6)
        expected = []
        for states, n in zip(hidden, batch["n_visits"].tolist()):
            query = states[n - 1]
            if n == 1:
                context = torch.zeros_like(query)
            else:
                alpha = torch.softmax(torch.stack([score(backbone, query, states[i]) for i in range(n - 1)]), dim=0)
                context = (alpha[:, None] * states[: n - 1]).sum(0)
            expected.append(backbone.output(torch.tanh(backbone.combine.weight @ torch.cat([context, query]))))
        torch.testing.assert_close(model(batch), torch.stack(expected))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_changes_nothing_for_every_attention(attention):
    model = small_model(attention)
    batch = make_batch(seed=2)
    padded = dict(batch)
    padded["codes"] = torch.nn.functional.pad(batch["codes"], (0, 2, 0, 3))
    padded["visit_mask"] = torch.nn.functional.pad(batch["visit_mask"], (0, 3))
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(batch))
        assert torch.isfinite(model(padded)).all()


def test_hidden_states_are_bidirectional():
    """Changing only the last visit moves the backward half of every earlier h_k and none of
    the forward half; changing only the first visit leaves the backward half of later h_k."""
    backbone = small_model().backbone
    batch = make_batch(seed=3)
    batch["codes"], batch["visit_mask"] = batch["codes"][:1], batch["visit_mask"][:1]  # 5 real visits
    first, last = dict(batch, codes=batch["codes"].clone()), dict(batch, codes=batch["codes"].clone())
    first["codes"][0, 0, :3] = torch.tensor([5, 6, 7])
    last["codes"][0, -1, :3] = torch.tensor([5, 6, 7])
    with torch.no_grad():
        hidden = backbone.encode(backbone.embed_visits(batch), batch)
        hidden_first = backbone.encode(backbone.embed_visits(first), first)
        hidden_last = backbone.encode(backbone.embed_visits(last), last)
    forward, backward = slice(0, 3), slice(3, 6)
    torch.testing.assert_close(hidden_last[:, :-1, forward], hidden[:, :-1, forward])
    assert not torch.allclose(hidden_last[:, 0, backward], hidden[:, 0, backward])
    torch.testing.assert_close(hidden_first[:, 1:, backward], hidden[:, 1:, backward])
    assert not torch.allclose(hidden_first[:, -1, forward], hidden[:, -1, forward])


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention"):
        DipoleBackbone(vocab_size=10, visit_dim=4, hidden_dim=4, attention="dot")
