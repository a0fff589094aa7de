"""TabDDPM augmentation baseline (seed 000 Table 2; Kotelnikov et al., ICML 2023): the binary
multinomial diffusion, the class-conditional generator, synthetic patients, the ratio of
synthetic to real patients and the two-optimiser training run."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from risk_batches import random_risk_batch

from ehrlab.config import CONFIG_DIR
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.tabddpm_aug import BinaryCodeDiffusion, MLPDenoiser, TabDDPMAugmentation

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 14)]
PLANTED = 7  # the class-1 code of the toy set
SMALL = [
    "model.backbone.visit_dim=16", "model.backbone.hidden_dim=16", "model.backbone.time_dim=8",
    "model.backbone.dropout=0.0", "model.denoiser.layers=[32,32]", "model.denoiser.embedding_dim=16",
    "model.diffusion_steps=20", "model.denoiser_optimizer.lr=3e-3",
]


@functools.lru_cache
def _config(overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=["model=tabddpm_aug", "augment=none", "trainer=debug", *SMALL,
                                            *overrides])


@functools.lru_cache
def compose_defaults():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=["model=tabddpm_aug", "augment=none"])


def build(*overrides: str) -> TabDDPMAugmentation:
    torch.manual_seed(0)
    return instantiate(_config(tuple(overrides)).model, vocabulary=VOCABULARY)


def batch(seed=0, n_patients=6, n_visits=4, n_codes=4):
    return random_risk_batch(len(VOCABULARY), n_patients, n_visits, n_codes, seed, pad_last_code=True,
                             alternate_labels=True)


def toy_batch(seed, n_patients=16):
    """Class-1 patients carry code PLANTED in every visit, class-0 patients never."""
    data = batch(seed, n_patients=n_patients)
    codes = data["codes"]
    codes[codes == PLANTED] = PLANTED + 1
    codes[..., -1] = torch.where(data["visit_mask"] & (data["label"] == 1)[:, None], PLANTED, 0)
    return data


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_config_defaults_follow_tabddpm_and_seed000():
    cfg = _config()
    assert cfg.trainer.gradient_clip_val is None  # Lightning refuses it under manual optimisation
    full = instantiate(compose_defaults().model, vocabulary=VOCABULARY)
    assert isinstance(full.backbone, LSTMBackbone) and full.backbone.hidden_dim == 256
    assert isinstance(full.denoiser, MLPDenoiser) and full.denoiser.embedding_dim == 128
    assert [m.out_features for m in full.denoiser.blocks if isinstance(m, torch.nn.Linear)] == [256, 256]
    assert full.diffusion.n_steps == 100 and full.sampling_steps is None
    assert (full.row, full.synthetic_ratio, full.warmup_epochs, full.gradient_clip_val) == ("visit", 1.0, 2, 1.0)
    assert not full.automatic_optimization
    classifier, denoiser = full.configure_optimizers()
    assert type(classifier["optimizer"]).__name__ == "Adam" and classifier["optimizer"].defaults["lr"] == 1e-3
    assert type(classifier["lr_scheduler"]["scheduler"]).__name__ == "ReduceLROnPlateau"
    assert type(denoiser["optimizer"]).__name__ == "AdamW"
    assert denoiser["optimizer"].defaults["weight_decay"] == 1e-5
    assert {id(p) for p in classifier["optimizer"].param_groups[0]["params"]} == {
        id(p) for p in full.backbone.parameters()}
    assert {id(p) for p in denoiser["optimizer"].param_groups[0]["params"]} == {
        id(p) for p in full.denoiser.parameters()}


def test_posterior_is_bayes_rule_and_an_oracle_denoiser_has_only_the_prior_loss():
    diffusion = BinaryCodeDiffusion(n_steps=10)
    t = 4
    alpha, alpha_bar_prev = diffusion.alphas[t], diffusion.alpha_bars[t - 1]

    def transition(keep):  # [from, to] of Cat(keep x + (1 - keep)/2)
        return keep * torch.eye(2) + (1 - keep) / 2

    for x0 in (0, 1):
        for xt in (0, 1):
            unnormalised = transition(alpha_bar_prev)[x0] * transition(alpha)[:, xt]  # q(x_s|x_0) q(x_t|x_s)
            expected = unnormalised / unnormalised.sum()
            log_one, log_zero = diffusion.posterior(
                torch.tensor([[float(xt)]]), (torch.log(torch.tensor(float(x0)).clamp(min=1e-30)),
                                              torch.log(torch.tensor(1.0 - x0).clamp(min=1e-30))), alpha,
                alpha_bar_prev)
            torch.testing.assert_close(torch.stack([log_zero, log_one]).exp().flatten(), expected)
            clean = (torch.tensor(float(x0)), torch.tensor(1.0 - x0))  # the sampler's probability-space form
            torch.testing.assert_close(diffusion.posterior_one(torch.tensor(float(xt)), clean, alpha, alpha_bar_prev),
                                       expected[1])

    class Oracle(torch.nn.Module):
        clean = None

        def forward(self, noisy, steps, labels):
            return (2 * self.clean - 1) * 50.0

    assert diffusion.sampling_steps() == list(range(9, -1, -1)) and diffusion.sampling_steps(4) == [9, 6, 3, 0]

    rows = (torch.rand(32, 6, generator=seeded()) < 0.3).float()
    oracle = Oracle()
    oracle.clean = rows
    keep = diffusion.alpha_bars[-1]
    final = keep * rows + (1 - keep) / 2
    prior = (final * torch.log(2 * final) + (1 - final) * torch.log(2 * (1 - final))).mean()
    torch.testing.assert_close(diffusion.loss(oracle, rows, torch.zeros(32, dtype=torch.long), seeded()), prior,
                               atol=1e-5, rtol=1e-4)
    assert diffusion.loss(MLPDenoiser(6, layers=(8,), embedding_dim=8), rows, torch.zeros(32, dtype=torch.long),
                          seeded()) > prior + 0.1


def test_denoiser_loss_decreases_on_a_fixed_batch():
    module = build()
    data = batch(seed=1)
    optimizer = module.configure_optimizers()[1]["optimizer"]
    before = module.diffusion_loss(data, seeded(3)).item()
    for _ in range(20):
        optimizer.zero_grad()
        module.diffusion_loss(data, seeded(3)).backward()
        optimizer.step()
    assert module.diffusion_loss(data, seeded(3)).item() < 0.8 * before


def train_denoiser_on_toy_set(module, steps=120):
    optimizer = module.configure_optimizers()[1]["optimizer"]
    for step in range(steps):
        optimizer.zero_grad()
        module.diffusion_loss(toy_batch(100 + step)).backward()
        optimizer.step()


@pytest.mark.parametrize("row", ["visit", "patient"])
def test_samples_are_multi_hot_rows_of_the_requested_class(row):
    module = build(f"model.row={row}")
    train_denoiser_on_toy_set(module)
    n = 200
    ones = module.sample_rows(torch.ones(n, dtype=torch.long), seeded(1))
    zeros = module.sample_rows(torch.zeros(n, dtype=torch.long), seeded(2))
    for rows in (ones, zeros):
        assert rows.shape == (n, len(VOCABULARY))
        assert set(rows.unique().tolist()) <= {0.0, 1.0}
        assert not rows[:, 0].any()  # never [PAD]
    assert ones[:, PLANTED].mean() > 0.8 and zeros[:, PLANTED].mean() < 0.2
    # Skipping steps (the sampler's exact composite posterior) keeps the class.
    module.sampling_steps = 5
    assert module.sample_rows(torch.ones(n, dtype=torch.long), seeded(3))[:, PLANTED].mean() > 0.8
    assert module.sample_rows(torch.zeros(n, dtype=torch.long), seeded(4))[:, PLANTED].mean() < 0.2


@pytest.mark.parametrize("row", ["visit", "patient"])
def test_synthetic_patients_have_the_batch_format_and_their_template_class(row):
    module = build(f"model.row={row}")
    train_denoiser_on_toy_set(module)
    data = toy_batch(seed=7, n_patients=8)
    synthetic = module.synthetic_patients(data, n=16, generator=seeded(4))
    codes, mask, labels = synthetic["codes"], synthetic["visit_mask"], synthetic["label"]
    assert codes.dtype == torch.int64 and codes.shape[0] == 16
    assert ((codes >= 0) & (codes < len(VOCABULARY))).all()
    assert not codes[~mask].any()  # no codes in padding visits
    present = codes != 0
    assert (present[..., 1:] <= present[..., :-1]).all()  # left-aligned codes, padding after
    for visit in codes[mask]:
        real = visit[visit != 0]
        assert len(real.unique()) == len(real)  # multi-hot: no code twice
    # Two synthetic patients per real one (n = 2B): the classes of the real batch, twice.
    assert torch.equal(labels.sort().values, data["label"].repeat(2).sort().values)
    if row == "visit":
        assert codes.shape[2] <= data["codes"].shape[2]  # the batch's per-visit code cap
        # Each synthetic patient has a real patient's layout (visits, times) and its class.
        layouts = {(tuple(m.tolist()), tuple(t.tolist()), int(y)) for m, t, y in
                   zip(data["visit_mask"], data["time_to_end"], data["label"], strict=True)}
        assert all((tuple(m.tolist()), tuple(t.tolist()), int(y)) in layouts for m, t, y in
                   zip(mask, synthetic["time_to_end"], labels, strict=True))
        carries = (codes[mask] == PLANTED).any(dim=1).float()  # per synthetic visit
        visit_labels = labels[:, None].expand_as(mask)[mask]
    else:
        assert mask.shape[1] == 1 and mask.all() and not synthetic["time_to_end"].any()
        carries = (codes == PLANTED).any(dim=(1, 2)).float()
        visit_labels = labels
    assert carries[visit_labels == 1].mean() > 0.8 and carries[visit_labels == 0].mean() < 0.2


@pytest.mark.parametrize("ratio", [1.0, 0.5, 2.0])
def test_ratio_of_synthetic_to_real_patients_in_a_training_step(ratio):
    module = build(f"model.synthetic_ratio={ratio}", "model.warmup_epochs=0")
    seen = []
    module.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]["label"].clone()))
    data = batch(seed=2)
    losses = module.training_loss(data, generator=seeded())
    n_real = len(data["label"])
    assert len(seen) == 1 and len(seen[0]) == n_real + round(ratio * n_real)
    assert torch.equal(seen[0][:n_real], data["label"])
    synthetic_labels = seen[0][n_real:]
    # Templates cycle through a permutation of the batch: the classes come in the batch's proportions.
    expected = data["label"].repeat(int(ratio) + 1)[: round(ratio * n_real)].sort().values
    if ratio >= 1:
        assert torch.equal(synthetic_labels.sort().values, expected)
    assert {"diffusion_loss", "ce", "real_ce", "synthetic_ce", "loss"} <= set(losses)
    torch.testing.assert_close(losses["loss"], losses["ce"] + losses["diffusion_loss"])


def test_warm_up_trains_the_classifier_on_real_patients_only():
    module = build("model.warmup_epochs=1")
    seen = []
    module.backbone.register_forward_pre_hook(lambda _, args: seen.append(len(args[0]["label"])))
    losses = module.training_loss(batch(seed=2))
    assert seen == [6] and "synthetic_ce" not in losses


def test_trains_two_epochs_with_both_optimisers_and_steps_the_scheduler():
    """Warm-up epoch (real only), then an epoch with synthetic patients; the trainer comes from
    the composed config (no trainer clipping), the classifier's clipping is the model's."""
    cfg = _config(("model.warmup_epochs=1",))
    torch.manual_seed(0)
    module = instantiate(cfg.model, vocabulary=VOCABULARY)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    clipped = []
    original_clip = module.clip_gradients

    def recording_clip(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clipped.append((optimizer.optimizer, gradient_clip_val, gradient_clip_algorithm))
        return original_clip(optimizer, gradient_clip_val=gradient_clip_val,
                             gradient_clip_algorithm=gradient_clip_algorithm)

    module.clip_gradients = recording_clip
    loader = torch.utils.data.DataLoader([batch(seed=10 + i) for i in range(3)], batch_size=None)
    trainer = instantiate(cfg.trainer, max_epochs=2, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    assert trainer.current_epoch == 2
    metrics = trainer.callback_metrics
    for name in ("train/diffusion_loss_epoch", "train/ce_epoch", "train/synthetic_ce_epoch", "train/real_ce_epoch"):
        assert torch.isfinite(metrics[name]), name
    assert "val/f1" in metrics
    unchanged = [name for name, p in module.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged
    classifier_optimizer = module.optimizers()[0].optimizer
    assert len(clipped) == 6 and all(c == (classifier_optimizer, 1.0, "norm") for c in clipped)
    assert module.lr_schedulers().last_epoch == 2  # ReduceLROnPlateau stepped once per epoch
    # Evaluation reads real patients only: predictions are the backbone's on the real batch.
    data = batch(seed=20)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(data), module.backbone(data))
