"""MedDiffusion (seed 000): noise schedule, step-wise attention, ablations, loss, what its analyses read."""

import functools
import math

import pytest
import torch
from risk_batches import (
    compose_risk_model,
    hand_set_lstm_backbone,
    random_risk_batch,
    reference_cross_entropy,
    reference_lstm,
    reference_visit_embeddings,
)
from support import MEDDIFFUSION_SMALL
from torch import nn

from ehrlab.models.risk.base import RiskBackbone
from ehrlab.models.risk.denoiser import ConvDenoiser, UNet1dDenoiser
from ehrlab.models.risk.diffusion import (
    DiffusionAugmentation,
    NoiseSchedule,
    StepwiseAttention,
)
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.meddiffusion import MedDiffusion

VOCABULARY = ["[PAD]", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//401.9", "LAB//50912//mg/dL"] + [
    f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(250, 276)
]
SMALL = MEDDIFFUSION_SMALL


def make_batch(n_patients=6, n_visits=4, n_codes=3, seed=0):
    return random_risk_batch(len(VOCABULARY), n_patients, n_visits, n_codes, seed, alternate_labels=True)


def compose_model(name="meddiffusion", overrides=()):
    return compose_risk_model(name, VOCABULARY, overrides)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --- configuration -------------------------------------------------------------------------


def test_meddiffusion_config_defaults_follow_the_paper():
    model = compose_model()
    assert isinstance(model, MedDiffusion)
    assert (model.lambda_synthetic, model.lambda_diffusion) == (0.5, 0.1)
    assert model.backbone.visit_dim == 256 and model.backbone.hidden_dim == 256
    assert model.augmentation.attention.score_hidden.out_features == 64  # d_b
    assert model.augmentation.schedule.n_steps == 1000
    assert (model.monitor, model.monitor_mode, model.early_stopping_patience) == ("val/f1", "max", 10)


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("meddiffusion_as1", lambda m: m.augmentation.attention is None),
        ("meddiffusion_as2", lambda m: m.augmentation.attention.mode == "equal"),
        ("meddiffusion_as3", lambda m: m.lambda_synthetic == 0.0 and m.augmentation.attention.mode == "learned"),
    ],
)
def test_ablation_configs_compose(name, check):
    model = compose_model(name, SMALL)
    assert isinstance(model, MedDiffusion) and check(model)
    assert model.lambda_diffusion == 0.1


# --- noise schedule ------------------------------------------------------------------------


def test_noise_schedule_is_linear_and_alpha_bar_decreasing():
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(schedule.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999), atol=1e-9)
    alpha_bars = schedule.alpha_bars
    assert (alpha_bars.diff() < 0).all() and (alpha_bars > 0).all() and (alpha_bars < 1).all()
    assert alpha_bars[0].item() == pytest.approx(1 - 1e-4)
    assert alpha_bars[2].item() == pytest.approx((1 - 1e-4) * (1 - schedule.betas[1].item()) * (1 - schedule.betas[2].item()))
    assert alpha_bars[-1].item() < 1e-4  # almost pure noise at n = N


def test_add_noise_closed_form():
    schedule = NoiseSchedule(10, 0.1, 0.5)
    clean = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]])
    noise = torch.tensor([[[0.5, -0.5]], [[1.0, 1.0]]])
    steps = torch.tensor([0, 9])
    alpha_bar = torch.cumprod(1 - torch.linspace(0.1, 0.5, 10, dtype=torch.float64), 0).float()
    expected = torch.stack(
        [alpha_bar[s].sqrt() * clean[i] + (1 - alpha_bar[s]).sqrt() * noise[i] for i, s in enumerate(steps.tolist())]
    )
    torch.testing.assert_close(schedule.add_noise(clean, noise, steps), expected)


# --- step-wise attention and ablations -------------------------------------------------------


def test_stepwise_attention_is_eq_3_11_with_hand_set_weights():
    attention = StepwiseAttention(visit_dim=2, hidden_dim=1, attention_dim=1)
    with torch.no_grad():
        attention.history_projection.weight.copy_(torch.tensor([[2.0], [-1.0]]))  # W_h
        attention.score_hidden.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))  # W_b
        attention.score_hidden.bias.copy_(torch.tensor([0.5]))  # b_b
        attention.score_output.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # W_a
    visits, history = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[0.5]]])
    aggregated, weights = attention(visits, history)
    # W_h h = (1, −0.5); W_b [e; W_h h] + b_b = 1 − 0.5 + 0.5 = 1; W_a tanh(1) = (t, −t).
    t = math.tanh(1.0)
    gamma_e = math.exp(t) / (math.exp(t) + math.exp(-t))
    torch.testing.assert_close(weights, torch.tensor([[[gamma_e, 1 - gamma_e]]]))
    expected = gamma_e * torch.tensor([1.0, 3.0]) + (1 - gamma_e) * torch.tensor([1.0, -0.5])
    torch.testing.assert_close(aggregated, expected.view(1, 1, 2))


def test_as2_weights_are_exactly_one_half():
    attention = StepwiseAttention(visit_dim=5, hidden_dim=4, mode="equal")
    visits, history = torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    aggregated, weights = attention(visits, history)
    assert torch.equal(weights, torch.full((2, 3, 2), 0.5))
    torch.testing.assert_close(aggregated, 0.5 * visits + 0.5 * attention.history_projection(history))


def _augmentation(**kwargs):
    torch.manual_seed(0)
    defaults = dict(visit_dim=6, hidden_dim=5, attention_dim=4, n_steps=20)
    return DiffusionAugmentation(**(defaults | kwargs), denoiser=functools.partial(ConvDenoiser, channels=8))


def test_first_visit_has_no_history_and_visit_k_uses_h_k_minus_1():
    augmentation = _augmentation()
    mask = torch.ones(2, 3, dtype=torch.bool)
    visits, hidden = torch.randn(2, 3, 6), torch.randn(2, 3, 5)
    output = augmentation(visits, hidden, mask, generator=seeded())
    # Changing the last hidden state h_K changes nothing: no visit k has k − 1 = K.
    changed_last = hidden.clone()
    changed_last[:, -1] += 5.0
    torch.testing.assert_close(augmentation(visits, changed_last, mask, generator=seeded()).synthetic_visits, output.synthetic_visits)
    # Changing h_1 changes visit 2 only in ê (visit 1 sees h_0 = 0).
    changed_first = hidden.clone()
    changed_first[:, 0] += 5.0
    aggregated = augmentation(visits, changed_first, mask, generator=seeded()).aggregated_visits
    torch.testing.assert_close(aggregated[:, 0], output.aggregated_visits[:, 0])
    assert not torch.allclose(aggregated[:, 1], output.aggregated_visits[:, 1])


def test_as1_ignores_hidden_states():
    augmentation = _augmentation(use_history=False)
    mask = torch.ones(2, 3, dtype=torch.bool)
    visits = torch.randn(2, 3, 6)
    first = augmentation(visits, torch.randn(2, 3, 5), mask, generator=seeded())
    second = augmentation(visits, 100 * torch.randn(2, 3, 5), mask, generator=seeded())
    torch.testing.assert_close(first.synthetic_visits, second.synthetic_visits)
    torch.testing.assert_close(first.aggregated_visits, visits)
    assert torch.equal(first.attention_weights[..., 0], torch.ones(2, 3))


def test_synthetic_visits_are_clean_embedding_plus_denoiser_residual():
    augmentation = _augmentation()
    mask = torch.tensor([[True, True, False]])
    visits, hidden = torch.randn(1, 3, 6), torch.randn(1, 3, 5)
    output = augmentation(visits, hidden, mask, generator=seeded(3))
    # Replay the random draws to recover ε and ε̂.
    generator = seeded(3)
    steps = torch.randint(0, 20, (1,), generator=generator)
    noise = torch.randn(1, 3, 6, generator=generator) * mask[..., None]
    predicted = augmentation.denoiser(augmentation.schedule.add_noise(output.aggregated_visits, noise, steps), steps, mask)
    residual = (noise - predicted) * mask[..., None]
    torch.testing.assert_close(output.synthetic_visits, output.aggregated_visits + residual)
    torch.testing.assert_close(output.diffusion_loss, residual[mask].pow(2).mean())
    assert torch.equal(output.synthetic_visits[0, 2], torch.zeros(6))


def test_augmentation_ignores_contents_of_padding_visits():
    augmentation = _augmentation()
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    visits, hidden = torch.randn(2, 4, 6), torch.randn(2, 4, 5)
    garbage_visits, garbage_hidden = visits.clone(), hidden.clone()
    garbage_visits[~mask] = 50.0
    garbage_hidden[~mask] = -50.0
    clean = augmentation(visits, hidden, mask, generator=seeded())
    dirty = augmentation(garbage_visits, garbage_hidden, mask, generator=seeded())
    torch.testing.assert_close(clean.synthetic_visits, dirty.synthetic_visits)
    torch.testing.assert_close(clean.diffusion_loss, dirty.diffusion_loss)


@pytest.mark.parametrize(
    "denoiser",
    [ConvDenoiser(visit_dim=6, channels=8), UNet1dDenoiser(visit_dim=6, channels=4, channel_mult=(1, 2, 2), n_res_blocks=1)],
    ids=["conv", "unet"],
)
def test_denoisers_keep_shape_and_ignore_trailing_padding(denoiser):
    torch.manual_seed(0)
    noisy = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    steps = torch.tensor([3, 17])
    output = denoiser(noisy, steps, mask)
    assert output.shape == noisy.shape
    assert torch.equal(output[1, 3:], torch.zeros(2, 6))
    longer = torch.nn.functional.pad(noisy, (0, 0, 0, 4), value=9.0)
    longer_mask = torch.nn.functional.pad(mask, (0, 4))
    torch.testing.assert_close(denoiser(longer, steps, longer_mask)[:, :5], output)
    garbage = noisy.clone()
    garbage[1, 3:] = -7.0
    torch.testing.assert_close(denoiser(garbage, steps, mask), output)


DENOISERS = {
    "conv": lambda: ConvDenoiser(visit_dim=6, channels=8),
    "unet": lambda: UNet1dDenoiser(visit_dim=6, channels=4, channel_mult=(1, 2, 2, 2), n_res_blocks=1),
}


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_are_causal_along_visits(name):
    """ε̂_k may depend on x_{n,1..k} only: changing visits k+1..V leaves outputs 1..k as
    they were. 11 visits: the 4-level UNet pads them to 16 and works at 16, 8, 4, 2."""
    torch.manual_seed(0)
    denoiser = DENOISERS[name]()
    n_visits = 11
    noisy = torch.randn(2, n_visits, 6)
    mask = torch.tensor([[True] * n_visits, [True] * 6 + [False] * (n_visits - 6)])
    steps = torch.tensor([3, 17])
    reference = denoiser(noisy, steps, mask)
    for k in range(n_visits - 1):
        perturbed = noisy.clone()
        perturbed[:, k + 1 :] += 3.0 * torch.randn(2, n_visits - k - 1, 6)
        output = denoiser(perturbed, steps, mask)
        torch.testing.assert_close(output[:, : k + 1], reference[:, : k + 1], rtol=0, atol=1e-6)
        # Not vacuous: the perturbation does reach visit k+1 of the full-length patient.
        assert not torch.allclose(output[0, k + 1], reference[0, k + 1])


# --- the full model ------------------------------------------------------------------------


class HalfInputDenoiser(nn.Module):
    """A stand-in ε_θ with a formula the test knows, ε̂ = x_n / 2 at real visits; it keeps
    what it was called with, so the test can recover the noise ε the module drew."""

    def __init__(self, visit_dim):
        super().__init__()
        self.calls = []

    def forward(self, noisy, steps, visit_mask):
        self.calls.append((noisy.detach().clone(), steps.clone()))
        return 0.5 * noisy * visit_mask[..., None]


@pytest.mark.parametrize("lambda_synthetic", [0.5, 0.0], ids=["meddiffusion", "as3"])
def test_loss_matches_eq_3_15_written_out(lambda_synthetic):
    """Eq. 3.1–3.4, 3.11, 3.13–3.16 and 3.18 in plain torch ops with weights set by the
    test. ε is recovered from the denoiser's input through the closed form
    x_n = √ᾱ_n ê + √(1−ᾱ_n) ε (ᾱ from β computed here), so the random draws need not be
    replayed; a wrong forward formula then shows up as a wrong e' and L_Diffusion."""
    n_steps, beta_start, beta_end = 10, 0.1, 0.5  # 1 − ᾱ_n ≥ 0.1: ε recovered without cancellation
    model = MedDiffusion(
        VOCABULARY,
        backbone=functools.partial(LSTMBackbone, visit_dim=3, hidden_dim=2, time_dim=2, dropout=0.0),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        lambda_synthetic=lambda_synthetic,
        attention_dim=2,
        diffusion_steps=n_steps,
        beta_start=beta_start,
        beta_end=beta_end,
        denoiser=HalfInputDenoiser,
    )
    weights = hand_set_lstm_backbone(model.backbone, seed=3)
    generator = torch.Generator().manual_seed(4)
    W_h, W_b, b_b, W_a = (torch.randn(*shape, generator=generator) for shape in [(3, 2), (2, 6), (2,), (2, 2)])
    attention = model.augmentation.attention
    with torch.no_grad():
        attention.history_projection.weight.copy_(W_h)
        attention.score_hidden.weight.copy_(W_b)
        attention.score_hidden.bias.copy_(b_b)
        attention.score_output.weight.copy_(W_a)
    batch = make_batch(n_patients=5, n_visits=4, seed=5)
    mask = batch["visit_mask"][..., None].float()
    assert not batch["visit_mask"].all()

    losses = model.training_loss(batch, generator=seeded())

    visits = reference_visit_embeddings(batch, weights)
    hidden = reference_lstm(visits, weights)
    previous_hidden = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)  # h_{k−1}, h_0 = 0
    history = previous_hidden @ W_h.T
    gammas = torch.softmax(torch.tanh(torch.cat([visits, history], dim=-1) @ W_b.T + b_b) @ W_a.T, dim=-1)
    aggregated = (gammas[..., :1] * visits + gammas[..., 1:] * history) * mask  # ê_k, Eq. 3.11
    (noisy, steps), = model.augmentation.denoiser.calls
    alpha_bar = torch.cumprod(1 - torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64), 0)
    alpha_bar = alpha_bar[steps].float()[:, None, None]
    noise = (noisy - alpha_bar.sqrt() * aggregated) / (1 - alpha_bar).sqrt()
    residual = (noise - 0.5 * noisy) * mask  # ε − ε̂
    diffusion_loss = residual[batch["visit_mask"]].pow(2).mean()  # Eq. 3.18, mean over real visits and dims
    ce = reference_cross_entropy(hidden, batch, weights)

    torch.testing.assert_close(losses["ce"], ce)
    torch.testing.assert_close(losses["diffusion_loss"], diffusion_loss)
    if lambda_synthetic:
        synthetic_ce = reference_cross_entropy(reference_lstm(aggregated + residual, weights), batch, weights)
        torch.testing.assert_close(losses["synthetic_ce"], synthetic_ce)
        torch.testing.assert_close(losses["loss"], ce + 0.5 * synthetic_ce + 0.1 * diffusion_loss)  # Eq. 3.15
    else:  # AS-3: no synthetic forward pass at all
        assert "synthetic_ce" not in losses
        torch.testing.assert_close(losses["loss"], ce + 0.1 * diffusion_loss)


def test_training_loss_is_deterministic_given_the_generator():
    model = compose_model("meddiffusion", SMALL)
    batch = make_batch()
    first = model.training_loss(batch, generator=seeded(5))["loss"]
    torch.testing.assert_close(model.training_loss(batch, generator=seeded(5))["loss"], first)
    assert not torch.allclose(model.training_loss(batch, generator=seeded(6))["loss"], first)


def test_gradients_reach_every_parameter_group():
    model = compose_model("meddiffusion", SMALL)
    model.training_loss(make_batch(), generator=seeded())["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    groups = {name.split(".")[0] + "." + name.split(".")[1] for name, _ in model.named_parameters()}
    assert {"backbone.code_embedding", "backbone.lstm", "backbone.output", "augmentation.attention", "augmentation.denoiser"} <= groups


def test_predictions_use_only_the_real_sequence_and_ignore_padding():
    model = compose_model("meddiffusion", SMALL).eval()
    batch = make_batch()
    torch.testing.assert_close(model(batch), model.backbone(batch))
    padded = dict(batch)
    padded["codes"] = torch.nn.functional.pad(batch["codes"], (0, 2, 0, 2))
    padded["visit_mask"] = torch.nn.functional.pad(batch["visit_mask"], (0, 2))
    padded["time_to_end"] = torch.nn.functional.pad(batch["time_to_end"], (0, 2), value=55.0)
    torch.testing.assert_close(model(padded), model(batch))


def test_synthetic_visits_depend_only_on_current_and_earlier_visits():
    """End to end (embedding → LSTM → attention with h_{k−1} → causal denoiser): e'_1..e'_k
    do not change when the codes and times of visits k+1..V change. Each visit's own
    ``time_to_end`` (Eq. 3.3's Δt_k = t_K − t_k) is an input of the batch and stays fixed."""
    model = compose_model("meddiffusion", SMALL)
    generator = torch.Generator().manual_seed(1)
    n_patients, n_visits = 3, 5
    batch = make_batch(n_patients, n_visits)
    batch["visit_mask"] = torch.ones(n_patients, n_visits, dtype=torch.bool)
    batch["n_visits"] = torch.full((n_patients,), n_visits)
    batch["codes"] = torch.randint(1, len(VOCABULARY), (n_patients, n_visits, 3), generator=generator)
    batch["time_to_end"] = torch.rand(n_patients, n_visits, generator=generator) * 400

    def synthetic_visits(b):
        return model.augmented_sequences(b, seeded()).synthetic_visits

    reference = synthetic_visits(batch)
    for k in range(n_visits - 1):
        n_later = n_visits - k - 1
        changed = dict(batch)
        changed["codes"] = batch["codes"].clone()
        changed["codes"][:, k + 1 :] = torch.randint(1, len(VOCABULARY), (n_patients, n_later, 3), generator=generator)
        changed["time_to_end"] = batch["time_to_end"].clone()
        changed["time_to_end"][:, k + 1 :] = torch.rand(n_patients, n_later, generator=generator) * 400
        output = synthetic_visits(changed)
        torch.testing.assert_close(output[:, : k + 1], reference[:, : k + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(output[:, k + 1], reference[:, k + 1])


class TinyGRUBackbone(RiskBackbone):
    """A different backbone (mean code embedding → GRU): the augmentation must wrap it as is."""

    def __init__(self, vocab_size, visit_dim=8, hidden_dim=6):
        super().__init__(visit_dim, hidden_dim)
        self.embedding = nn.Embedding(vocab_size, visit_dim, padding_idx=0)
        self.gru = nn.GRU(visit_dim, hidden_dim, batch_first=True)

    def embed_visits(self, batch):
        return self.embedding(batch["codes"]).sum(2)

    def encode(self, visit_embeddings, batch):
        return self.gru(visit_embeddings)[0]


def test_augmentation_wraps_any_backbone():
    model = MedDiffusion(
        VOCABULARY,
        backbone=TinyGRUBackbone,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        diffusion_steps=10,
        attention_dim=4,
        denoiser=functools.partial(ConvDenoiser, channels=4),
    )
    losses = model.training_loss(make_batch(), generator=seeded())
    losses["loss"].backward()
    assert {"ce", "synthetic_ce", "diffusion_loss"} <= set(losses)
    assert all(p.grad is not None for p in model.parameters())


def test_lightning_fit_learns_planted_signal():
    import lightning.pytorch as pl

    def planted(n_batches, seed):
        batches = []
        for index in range(n_batches):
            batch = make_batch(16, 4, 3, seed=seed + index)
            batch["codes"][batch["codes"] == 1] = 2
            batch["codes"][batch["label"] == 1, 0, 0] = 1  # positives carry code 1 (428.0)
            batches.append(batch)
        return batches

    def loader(batches):
        return torch.utils.data.DataLoader(batches, batch_size=None)

    pl.seed_everything(0, verbose=False)
    model = compose_model("meddiffusion", SMALL + ["model.optimizer.lr=1e-2"])
    trainer = pl.Trainer(
        max_epochs=8, accelerator="cpu", enable_checkpointing=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    train, val = loader(planted(6, 0)), loader(planted(2, 100))
    before = trainer.validate(model, val, verbose=False)[0]
    trainer.fit(model, train, val)
    logged = dict(trainer.callback_metrics)
    after = trainer.validate(model, val, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"]
    assert after["val/f1"] > 90.0
    assert {"train/synthetic_ce_epoch", "train/diffusion_loss_epoch", "train/ce_epoch"} <= set(logged)


# --- what the analyses read (ehrlab.evaluation.risk_analyses; tests/evaluation/test_risk_analyses.py)


def test_augmented_sequences_are_the_training_draw():
    """The §4.6 analyses (Table 5, Figure 2) see what training generates: with the same
    generator, the synthetic CE of training_loss (Eq. 3.14) is that of augmented_sequences' e'_k."""
    model = compose_model("meddiffusion", SMALL)
    batch = make_batch()
    visit_embeddings, hidden_states, synthetic = model.augmented_sequences(batch, seeded(4))
    torch.testing.assert_close(visit_embeddings, model.backbone.embed_visits(batch))
    torch.testing.assert_close(hidden_states, model.backbone.encode(visit_embeddings, batch))
    synthetic_logits = model.backbone.classify(model.backbone.encode(synthetic, batch), batch)
    expected = torch.nn.functional.cross_entropy(synthetic_logits, batch["label"])
    torch.testing.assert_close(model.training_loss(batch, generator=seeded(4))["synthetic_ce"], expected)
    assert not torch.allclose(model.augmented_sequences(batch, seeded(5)).synthetic_visits, synthetic)
    assert MedDiffusion.analyses == ("synthetic_codes", "hidden_state_tsne")
