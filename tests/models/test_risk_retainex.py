"""RetainEx's defining mechanisms (Kwon et al., IEEE TVCG 2019): contributions that add up
to the logit, bidirectional α/β RNNs, and the time features of the chosen visit time."""

from __future__ import annotations

import math

import torch
from risk_batches import compose_risk_model, random_risk_batch

from ehrlab.models.risk.retainex import RetainExBackbone, time_features

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 30)]
SMALL = ["model.backbone.visit_dim=16", "model.backbone.hidden_dim=8", "model.backbone.dropout=0.0"]


def make_model(overrides=()):
    torch.manual_seed(0)
    return compose_risk_model("retainex", VOCABULARY, [*SMALL, *overrides]).eval()


def make_batch(seed=0):
    return random_risk_batch(len(VOCABULARY), n_patients=5, n_visits=4, n_codes=3, seed=seed, pad_last_code=True)


def test_config_builds_retainex_with_the_authors_sizes():
    backbone = compose_risk_model("retainex", VOCABULARY).backbone
    assert isinstance(backbone, RetainExBackbone)
    assert (backbone.visit_dim, backbone.embedding_dim, backbone.hidden_dim) == (512, 256, 256)
    assert backbone.alpha_rnn.bidirectional and backbone.beta_rnn.bidirectional
    assert isinstance(backbone.term_projection, torch.nn.Identity)  # h_k = α_k β_k ⊙ v^b_k exactly
    assert backbone.time_key == "time_delta"


def test_time_features_are_t_inverse_and_inverse_log():
    days = torch.tensor([0.0, 9.0, 365.0])
    expected = torch.tensor([[d, 1 / (d + 1), 1 / math.log(math.e + d)] for d in days.tolist()])
    torch.testing.assert_close(time_features(days), expected)


def test_code_contributions_sum_to_the_logits():
    """RetainVis's contribution scores α_k W_y (β_k ⊙ W^b[c]) add up, with the output bias,
    to the logits; per visit, W_y h_k is that visit's share."""
    model = make_model()
    batch = make_batch()
    backbone = model.backbone
    with torch.no_grad():
        logits = model(batch)
        contributions = backbone.code_contributions(batch)
        hidden = backbone.encode(backbone.embed_visits(batch), batch)
    bias = backbone.output.bias
    torch.testing.assert_close(contributions.sum(dim=(1, 2)) + bias, logits)
    torch.testing.assert_close(hidden @ backbone.output.weight.T, contributions.sum(dim=2))
    assert (contributions[batch["codes"] == 0] == 0).all()


def test_alpha_is_a_distribution_over_real_visits():
    model = make_model()
    batch = make_batch(seed=1)
    backbone = model.backbone
    with torch.no_grad():
        alpha, beta = backbone.attention(backbone.embed_visits(batch), batch)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(len(alpha)))
    assert (alpha[~batch["visit_mask"]] == 0).all() and (alpha[batch["visit_mask"]] > 0).all()
    assert beta.shape == (*alpha.shape, backbone.embedding_dim) and (beta.abs() <= 1).all()


def test_beta_reads_both_directions():
    """β of the first visit moves when only the last visit changes (backward LSTM), and β of
    the last visit moves when only the first visit changes (forward LSTM)."""
    model = make_model()
    batch = make_batch(seed=2)
    patient = 0  # fills every visit slot
    backbone = model.backbone
    embeddings = backbone.embed_visits(batch)
    with torch.no_grad():
        _, beta = backbone.attention(embeddings, batch)
        for changed_visit, watched_visit in ((-1, 0), (0, -1)):
            changed = embeddings.clone()
            changed[patient, changed_visit, : backbone.embedding_dim] += 1.0  # v^a only
            _, beta_changed = backbone.attention(changed, batch)
            assert not torch.allclose(beta_changed[patient, watched_visit], beta[patient, watched_visit])


def test_time_key_selects_which_visit_time_is_read():
    batch = make_batch(seed=3)
    shifted_delta = dict(batch, time_delta=batch["time_delta"] * 2.0 + 5.0 * batch["visit_mask"])
    with torch.no_grad():
        default = make_model()
        assert not torch.allclose(default(shifted_delta), default(batch))
        to_end = make_model(["model.backbone.time_key=time_to_end"])
        torch.testing.assert_close(to_end(shifted_delta), to_end(batch))
