"""Timeline's defining mechanisms (Bai et al., KDD 2018): self-attention over a visit's codes
and the per-code gate σ(θ_c − μ_c Δt) on the days to the prediction, checked by hand."""

from __future__ import annotations

import math

import torch
from risk_batches import compose_risk_model

from ehrlab.models.risk.timeline import TimelineBackbone

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 12)]
SMALL = ["model.backbone.visit_dim=4", "model.backbone.hidden_dim=4", "model.backbone.attention_dim=3",
         "model.backbone.embedding_dropout=0.0"]


def make_backbone() -> TimelineBackbone:
    torch.manual_seed(0)
    backbone = compose_risk_model("timeline", VOCABULARY, SMALL).backbone.eval()
    with torch.no_grad():  # distinct gates per code, so a wrong code lookup shows
        backbone.initial_strength.copy_(torch.linspace(0.5, 2.0, len(VOCABULARY)))
        backbone.decay_rate.copy_(torch.linspace(0.01, 0.05, len(VOCABULARY)))
    return backbone


def test_config_defaults():
    backbone = compose_risk_model("timeline", VOCABULARY).backbone
    assert (backbone.visit_dim, backbone.hidden_dim, backbone.query.out_features) == (256, 256, 256)
    assert torch.all(backbone.initial_strength == 1.0) and torch.all(backbone.decay_rate == 0.1)


def test_visit_representation_matches_a_hand_computation():
    backbone = make_backbone()
    codes = torch.tensor([[[3, 7, 5, 0]]])
    days = torch.tensor([[40.0]])
    W_e, W_q, W_k = backbone.code_embedding.weight, backbone.query.weight, backbone.key.weight
    theta, mu = backbone.initial_strength, backbone.decay_rate
    real = [3, 7, 5]
    expected = torch.zeros(4)
    for i in real:
        scores = torch.stack([(W_q @ W_e[i]) @ (W_k @ W_e[j]) / math.sqrt(3) for j in real])
        weights = torch.softmax(scores, dim=0)
        contextual = sum(w * W_e[j] for w, j in zip(weights, real))  # g_i
        expected = expected + torch.sigmoid(theta[i] - mu[i] * 40.0) * contextual  # δ_i g_i
    with torch.no_grad():
        visit = backbone.embed_visits({"codes": codes, "time_to_end": days})[0, 0]
    torch.testing.assert_close(visit, expected.detach())


def test_single_code_visit_decays_with_the_days_to_prediction():
    backbone = make_backbone()
    codes = torch.tensor([[[4, 0]]]).expand(5, 1, 2)
    days = torch.tensor([0.0, 10.0, 30.0, 90.0, 365.0])[:, None]
    with torch.no_grad():
        visits = backbone.embed_visits({"codes": codes, "time_to_end": days})[:, 0]
    gate = torch.sigmoid(backbone.initial_strength[4] - backbone.decay_rate[4] * days)
    torch.testing.assert_close(visits, gate * backbone.code_embedding.weight[4].detach())
    assert torch.all(gate[1:] < gate[:-1])


def test_visit_representation_ignores_code_order():
    backbone = make_backbone()
    codes = torch.tensor([[[3, 7, 5, 0], [2, 9, 0, 0]]])
    permuted = torch.tensor([[[5, 3, 0, 7], [0, 9, 2, 0]]])
    days = torch.tensor([[120.0, 0.0]])
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed_visits({"codes": permuted, "time_to_end": days}),
                                   backbone.embed_visits({"codes": codes, "time_to_end": days}))
