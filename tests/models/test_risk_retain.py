"""RETAIN (Choi et al., NeurIPS 2016): reverse-time attention, Eq. 1–6."""

import torch
from risk_batches import compose_risk_model, random_risk_batch

from ehrlab.models.risk.retain import RetainBackbone, reverse_real_visits

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 30)]
SMALL = ["model.backbone.visit_dim=8", "model.backbone.hidden_dim=6",
         "model.backbone.embedding_dropout=0.0", "model.backbone.context_dropout=0.0"]


def small_model():
    torch.manual_seed(0)
    return compose_risk_model("retain", VOCABULARY, SMALL).eval()


def make_batch(seed=0):
    return random_risk_batch(len(VOCABULARY), n_patients=6, n_visits=5, n_codes=4, seed=seed, pad_last_code=True)


def test_reverse_real_visits_flips_each_patients_real_visits_and_is_its_own_inverse():
    values = torch.arange(8.0).reshape(2, 4, 1)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    flipped = reverse_real_visits(values, mask)
    assert flipped.squeeze(-1).tolist() == [[2.0, 1.0, 0.0, 3.0], [5.0, 4.0, 6.0, 7.0]]
    torch.testing.assert_close(reverse_real_visits(flipped, mask), values)


def test_forward_matches_the_equations_run_patient_by_patient():
    """Eq. 1–5 per patient on its real visits only, the RNNs fed v_K, …, v_1."""
    model = small_model()
    backbone: RetainBackbone = model.backbone
    assert backbone.hidden_dim == 8 and backbone.rnn_dim == 6
    batch = make_batch(seed=1)
    assert not batch["visit_mask"].all()
    expected = []
    with torch.no_grad():
        for codes, n in zip(batch["codes"], batch["n_visits"].tolist()):
            weights = backbone.code_embedding.weight
            v = torch.stack([weights[[c for c in visit.tolist() if c != 0]].sum(0) for visit in codes[:n]])  # Eq. 1
            g = backbone.alpha_rnn(v.flip(0)[None])[0][0].flip(0)  # Eq. 2, reverse time
            h = backbone.beta_rnn(v.flip(0)[None])[0][0].flip(0)  # Eq. 3, reverse time
            alpha = torch.softmax(g @ backbone.alpha_score.weight[0], dim=0)
            beta = torch.tanh(h @ backbone.beta_gate.weight.T + backbone.beta_gate.bias)
            context = (alpha[:, None] * beta * v).sum(0)  # Eq. 4
            expected.append(backbone.output(context))  # Eq. 5 (logits)
        torch.testing.assert_close(model(batch), torch.stack(expected))


def test_contributions_sum_to_the_logit():
    """Eq. 6: per-code contributions over all visits and codes add up to W c (logit − b)."""
    model = small_model()
    batch = make_batch(seed=2)
    with torch.no_grad():
        contributions = model.backbone.code_contributions(batch)
        logits = model(batch)
    assert contributions.shape == (*batch["codes"].shape, 2)
    assert (contributions[batch["codes"] == 0] == 0).all()
    torch.testing.assert_close(contributions.sum(dim=(1, 2)) + model.backbone.output.bias, logits)


def test_attention_runs_in_reverse_time():
    """g_k and h^β_k read visits k..K: changing visit 1 leaves β_k (k ≥ 2) and the ratios of
    α_k (k ≥ 2) alone, while changing the last visit moves β_1. Forward-time RNNs fail this."""
    backbone = small_model().backbone
    batch = make_batch(seed=3)
    batch["codes"], batch["visit_mask"] = batch["codes"][:1], batch["visit_mask"][:1]  # 5 real visits
    first, last = dict(batch, codes=batch["codes"].clone()), dict(batch, codes=batch["codes"].clone())
    first["codes"][0, 0, :3] = torch.tensor([5, 6, 7])
    last["codes"][0, -1, :3] = torch.tensor([5, 6, 7])
    with torch.no_grad():
        alpha, beta = backbone.attention(backbone.embed_visits(batch), batch)
        alpha_first, beta_first = backbone.attention(backbone.embed_visits(first), first)
        _, beta_last = backbone.attention(backbone.embed_visits(last), last)
    torch.testing.assert_close(beta_first[:, 1:], beta[:, 1:])
    torch.testing.assert_close(alpha_first[:, 1:] / alpha_first[:, 1:2], alpha[:, 1:] / alpha[:, 1:2])
    assert not torch.allclose(beta_first[:, 0], beta[:, 0])
    assert not torch.allclose(beta_last[:, 0], beta[:, 0])
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(1))


def test_hidden_states_are_the_weighted_terms_of_the_context():
    model = small_model()
    batch = make_batch(seed=4)
    backbone = model.backbone
    with torch.no_grad():
        hidden = backbone.encode(backbone.embed_visits(batch), batch)
        alpha, _ = backbone.attention(backbone.embed_visits(batch), batch)
    assert (hidden[~batch["visit_mask"]] == 0).all()
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(len(alpha)))
    torch.testing.assert_close(backbone.output(hidden.sum(dim=1)), model(batch))
