"""HiTANet (Luo et al., KDD 2020): the time-aware global + local attention against a hand computation."""

import math

import torch
from risk_batches import random_risk_batch

from ehrlab.models.risk.hitanet import HiTANetBackbone

VOCAB_SIZE = 30


def small_hitanet() -> HiTANetBackbone:
    torch.manual_seed(0)
    return HiTANetBackbone(VOCAB_SIZE, visit_dim=16, hidden_dim=16, time_dim=8, query_dim=8,
                           dropout=0.0, embedding_dropout=0.0).eval()


def hand_representation(backbone, hidden, gaps, n_real):
    """One patient, plain tensors: α from the gaps and h_K, β from h, γ = λ_1 α + λ_2 β."""
    h = hidden[:n_real]
    last = h[-1]
    p = {name: param.detach() for name, param in backbone.named_parameters()}
    beta = torch.softmax(h @ p["local_attention.weight"][0] + p["local_attention.bias"], 0)
    query = torch.relu(p["query.weight"] @ last + p["query.bias"])
    feature = 1 - torch.tanh((gaps[:n_real, None] / 180 * p["key_time_feature.linear.weight"][:, 0]
                              + p["key_time_feature.linear.bias"]) ** 2)
    keys = torch.relu(feature @ p["key.weight"].T + p["key.bias"])
    alpha = torch.softmax(keys @ query / math.sqrt(len(query)), 0)
    lam = torch.softmax(p["combination.weight"] @ last + p["combination.bias"], 0)
    gamma = lam[0] * alpha + lam[1] * beta
    return gamma @ h, gamma


def test_patient_representation_is_the_combined_time_aware_attention():
    backbone = small_hitanet()
    batch = random_risk_batch(VOCAB_SIZE, n_patients=5, n_visits=6, seed=1)
    hidden = torch.randn(5, 6, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        result = backbone.patient_representation(hidden, batch)
        weights = backbone.attention_weights(hidden, batch)["combined"]
    for b, n in enumerate(batch["n_visits"].tolist()):
        expected, gamma = hand_representation(backbone, hidden[b], batch["time_to_end"][b], n)
        torch.testing.assert_close(result[b], expected)
        torch.testing.assert_close(weights[b, :n], gamma)
        assert torch.all(weights[b, n:] == 0) and abs(float(gamma.sum()) - 1) < 1e-5


def test_gaps_move_the_global_weights_and_the_hidden_states_but_not_the_local_weights():
    backbone = small_hitanet()
    batch = random_risk_batch(VOCAB_SIZE, n_patients=4, n_visits=5, seed=3)
    later = dict(batch, time_to_end=batch["time_to_end"] * 2.5)
    hidden = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before, after = backbone.attention_weights(hidden, batch), backbone.attention_weights(hidden, later)
        embeddings = backbone.embed_visits(batch)
        moved = backbone.encode(embeddings, later) - backbone.encode(embeddings, batch)
    torch.testing.assert_close(after["local"], before["local"])
    several = batch["n_visits"] > 1
    assert not torch.allclose(after["global"][several], before["global"][several])
    assert moved[batch["visit_mask"]].abs().amax() > 1e-3
