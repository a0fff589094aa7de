"""ehrGAN augmentation (Che et al., ICDM 2017) around the LSTM classifier: config, synthetic
patients (shape, visit masks, labels, ratio), GAN and classifier training under manual optimisation."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from risk_batches import random_risk_batch

from ehrlab.config import CONFIG_DIR
from ehrlab.models.risk.ehrgan_aug import EhrGANAugmentation
from ehrlab.models.risk.lstm import LSTMBackbone

VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(2, 40)]
SMALL = [
    "model.backbone.visit_dim=16", "model.backbone.hidden_dim=16", "model.backbone.time_dim=8",
    "model.backbone.dropout=0.0", "model.code_dim=16", "model.latent_dim=8", "model.discriminator_filters=4",
    "model.gan_dropout=0.0",
]


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=["model=ehrgan_aug", *overrides])


def build(overrides=()) -> EhrGANAugmentation:
    torch.manual_seed(0)
    return instantiate(compose_cfg([*SMALL, *overrides]).model, vocabulary=VOCABULARY)


def batch(seed=0, n_patients=6, n_visits=5, n_codes=4):
    """Tiny batch with one [UNK] code planted, and distinct codes per visit as the DataModule lists them."""
    data = random_risk_batch(len(VOCABULARY), n_patients, n_visits, n_codes, seed, pad_last_code=True,
                             alternate_labels=True)
    generator = torch.Generator().manual_seed(seed)
    distinct = torch.rand(n_patients, n_visits, len(VOCABULARY) - 2, generator=generator).argsort(-1)[..., :n_codes] + 2
    codes = torch.where(data["codes"] != 0, distinct, torch.zeros_like(distinct))
    codes[0, 0, 0] = 1  # an unknown code
    return dict(data, codes=codes)


def multi_hot(codes):
    hot = torch.zeros(*codes.shape[:2], len(VOCABULARY)).scatter(-1, codes, 1.0)
    hot[..., 0] = 0.0
    return hot


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def trainer(**overrides) -> pl.Trainer:
    """The composed config's own trainer node (gradient_clip_val must be valid under manual optimisation)."""
    settings = {"max_epochs": 1, "enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "num_sanity_val_steps": 0} | overrides
    return instantiate(compose_cfg().trainer, **settings)


def loader(n_batches=3, seed=10):
    return torch.utils.data.DataLoader([batch(seed=seed + i) for i in range(n_batches)], batch_size=None)


# --- configuration -------------------------------------------------------------------------


def test_defaults_follow_the_authors_and_the_lstm_recipe():
    cfg = compose_cfg()
    model = instantiate(cfg.model, vocabulary=VOCABULARY)
    assert isinstance(model, EhrGANAugmentation) and type(model.backbone) is LSTMBackbone
    assert (model.backbone.visit_dim, model.backbone.hidden_dim) == (256, 256)  # model=lstm's classifier
    assert model.synthetic_ratio == 1.0 and model.generator.noise_ratio == 0.5
    assert model.generator.code_embedding.embedding_dim == 200
    assert model.generator.encoder[1].conv.linear.out_features == 100
    assert [conv.width for conv in model.discriminator.convs] == [3, 4, 5]
    assert model.discriminator.output.in_features == 300
    # Lightning refuses Trainer(gradient_clip_val) under manual optimisation: the model clips.
    assert cfg.trainer.gradient_clip_val is None and model.gradient_clip_val == 1.0
    assert not model.automatic_optimization
    classifier, generator, discriminator = model.configure_optimizers()
    assert classifier["lr_scheduler"]["scheduler"].mode == "max"  # ReduceLROnPlateau on val/f1
    assert classifier["optimizer"].defaults["lr"] == 1e-3 and classifier["optimizer"].defaults["weight_decay"] == 1e-3
    assert discriminator["optimizer"].defaults["weight_decay"] == 0.0
    owned = [{id(p) for group in o["optimizer"].param_groups for p in group["params"]}
             for o in (classifier, generator, discriminator)]
    assert owned[0] == {id(p) for p in model.backbone.parameters()}
    assert owned[1] == {id(p) for p in model.generator.parameters()}
    assert owned[2] == {id(p) for p in model.discriminator.parameters()}


# --- synthetic patients ----------------------------------------------------------------------


def test_synthetic_patients_have_the_source_shape_masks_times_and_labels():
    model = build()
    data = batch(seed=1)
    synthetic = model.generate(data, generator=seeded())
    rows = synthetic.source_index
    codes = synthetic.batch["codes"]
    assert codes.shape == data["codes"].shape and codes.dtype == torch.long
    for key in ("visit_mask", "n_visits", "time_delta", "time_to_end", "label", "subject_id"):
        torch.testing.assert_close(synthetic.batch[key], data[key][rows])
    # Each real visit gets as many codes as its source visit, left-aligned; padding visits none.
    source_counts = (data["codes"][rows] != 0).sum(-1)
    assert torch.equal((codes != 0).sum(-1), source_counts)
    assert torch.equal(codes != 0, torch.arange(codes.shape[-1]) < source_counts[..., None])
    assert not codes[~synthetic.batch["visit_mask"]].any()
    # Real codes only: never [UNK] (id 1), no code twice in a visit.
    assert ((codes == 0) | (codes >= 2)).all()
    sorted_codes = codes.sort(-1).values
    assert not ((sorted_codes[..., 1:] == sorted_codes[..., :-1]) & (sorted_codes[..., 1:] != 0)).any()
    # The straight-through path: probabilities of real codes at real visits only.
    assert not synthetic.probabilities[..., :2].any() and not synthetic.probabilities[~synthetic.batch["visit_mask"]].any()


def test_discriminator_reads_multi_hot_visits_with_a_straight_through_gradient():
    """Forward ``x W`` of the hard multi-hot visits; gradient to the probabilities as ``x + p − sg(p)``."""
    model = build()
    synthetic = model.generate(batch(seed=9), generator=seeded())
    codes, probabilities = synthetic.batch["codes"], synthetic.probabilities.detach().requires_grad_()
    weight = model.discriminator.code_embedding.weight
    embedded = model.discriminator.embed(codes, probabilities)
    reference_probabilities = probabilities.detach().clone().requires_grad_()
    relaxed = multi_hot(codes) + reference_probabilities - reference_probabilities.detach()
    reference = relaxed @ weight
    torch.testing.assert_close(embedded, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(embedded)
    (embedded * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(probabilities.grad, reference_probabilities.grad, rtol=1e-5, atol=1e-5)
    # Real visits: [UNK] is hidden from the critic (synthetic visits never hold it).
    data = batch(seed=9)
    assert data["codes"][0, 0, 0] == 1 and model.known_codes(data["codes"])[0, 0, 0] == 0


def test_noise_replacement_makes_two_draws_of_one_patient_differ_and_none_keeps_it_deterministic():
    model = build()
    data = batch(seed=2)
    logits = [model.generator(data["codes"], data["visit_mask"], seeded(s)) for s in (0, 1)]
    assert not torch.allclose(logits[0], logits[1])
    model.generator.noise_ratio = 0.0
    logits = [model.generator(data["codes"], data["visit_mask"], seeded(s)) for s in (0, 1)]
    torch.testing.assert_close(logits[0], logits[1])
    # ... and with every latent entry replaced, the output ignores the source codes.
    model.generator.noise_ratio = 1.0
    other = dict(data, codes=batch(seed=3)["codes"])
    torch.testing.assert_close(model.generator(data["codes"], data["visit_mask"], seeded(4)),
                               model.generator(other["codes"], data["visit_mask"], seeded(4)))


def test_padding_visits_change_neither_generator_nor_discriminator():
    model = build(["model.noise_ratio=0.0"]).eval()
    data = batch(seed=4)
    padded_codes = torch.nn.functional.pad(data["codes"], (0, 2, 0, 3))
    padded_mask = torch.nn.functional.pad(data["visit_mask"], (0, 3))
    with torch.no_grad():
        logits = model.generator(data["codes"], data["visit_mask"])
        padded = model.generator(padded_codes, padded_mask)
        mask = data["visit_mask"]
        torch.testing.assert_close(padded[:, :5][mask], logits[mask], rtol=1e-5, atol=1e-5)
        real = model.discriminator(data["codes"], mask)
        torch.testing.assert_close(model.discriminator(padded_codes, padded_mask), real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ratio", "expected"), [(0.5, 3), (1.0, 6), (2.0, 12), (0.0, 0)])
def test_synthetic_patients_per_step_follow_the_configured_ratio(ratio, expected):
    model = build([f"model.synthetic_ratio={ratio}"])
    data = batch(seed=5)
    assert model.n_synthetic(6) == expected
    if expected == 0:
        assert set(model.training_loss(data)) == {"ce", "loss"}
        return
    rows = model.generate(data, generator=seeded()).source_index
    assert len(rows) == expected
    counts = torch.bincount(rows, minlength=6)
    assert counts.max() - counts.min() <= 1 and counts.max() == -(-expected // 6)  # spread evenly
    assert len(model.training_loss(data)["synthetic_ce"].shape) == 0


def test_classifier_loss_weighs_every_real_and_synthetic_patient_alike_and_stays_off_the_generator():
    model = build()
    data = batch(seed=6)
    synthetic = model.generate(data, generator=seeded())
    losses = model.classifier_losses(data, synthetic.batch)
    n_real, n_synthetic = 6, len(synthetic.source_index)
    torch.testing.assert_close(losses["loss"], (n_real * losses["ce"] + n_synthetic * losses["synthetic_ce"])
                               / (n_real + n_synthetic))
    model.zero_grad()
    losses["loss"].backward()
    assert all(p.grad is None for p in [*model.generator.parameters(), *model.discriminator.parameters()])
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_gan_losses_send_gradients_where_they_belong():
    model = build()
    data = batch(seed=7)
    synthetic = model.generate(data, generator=seeded())
    model.discriminator_loss(data, synthetic).backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    model.zero_grad(set_to_none=True)
    model.generator_loss(synthetic).backward()  # straight-through: through the discrete visits
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def test_evaluation_reads_real_patients_only():
    model = build().eval()
    data = batch(seed=8)
    with torch.no_grad():
        before = model.predict_step(data, 0)["probability"]
        for parameter in [*model.generator.parameters(), *model.discriminator.parameters()]:
            parameter.add_(1.0)
        torch.testing.assert_close(model.predict_step(data, 0)["probability"], before)
        torch.testing.assert_close(model(data), model.backbone(data))


# --- training --------------------------------------------------------------------------------


class StepRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.losses.append((float(metrics["train/generator_loss_step"]), float(metrics["train/discriminator_loss_step"])))


def test_trains_an_epoch_with_all_three_optimisers_clipping_and_the_plateau_scheduler():
    model = build(["model.warmup_epochs=0"])
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    classifier_sizes = []
    model.backbone.lstm.register_forward_pre_hook(
        lambda module, args: classifier_sizes.append(args[0].shape[0]) if module.training else None)
    clip_calls = []
    clip = model.clip_gradients
    model.clip_gradients = lambda optimizer, **kwargs: (clip_calls.append(kwargs), clip(optimizer, **kwargs))
    recorder = StepRecorder()
    fit = trainer(max_epochs=2, callbacks=[recorder])
    fit.fit(model, loader(), loader(2, seed=20))

    assert fit.current_epoch == 2
    metrics = fit.callback_metrics
    for name in ("generator_loss", "discriminator_loss", "ce", "synthetic_ce", "loss"):
        assert torch.isfinite(metrics[f"train/{name}_epoch"]), name
    assert "val/f1" in metrics
    # Every step: the classifier reads 6 real + 6 synthetic patients; three clipped updates.
    assert classifier_sizes == [12] * 6
    assert len(clip_calls) == 3 * 6 and all(c["gradient_clip_val"] == 1.0 for c in clip_calls)
    # Generator, discriminator and classifier all moved; both GAN losses moved over the steps.
    for prefix in ("generator.", "discriminator.", "backbone."):
        assert any(not torch.equal(p, initial[n]) for n, p in model.named_parameters() if n.startswith(prefix))
    generator_losses, discriminator_losses = zip(*recorder.losses)
    assert max(generator_losses) - min(generator_losses) > 1e-3
    assert max(discriminator_losses) - min(discriminator_losses) > 1e-3
    # ReduceLROnPlateau stepped once per epoch on val/f1.
    assert model.lr_schedulers().last_epoch == 2


def test_warmup_epochs_keep_synthetic_patients_from_the_classifier():
    model = build(["model.warmup_epochs=1"])
    classifier_sizes = []
    model.backbone.lstm.register_forward_pre_hook(
        lambda module, args: classifier_sizes.append(args[0].shape[0]) if module.training else None)
    fit = trainer(max_epochs=1, limit_val_batches=0)
    fit.fit(model, loader(2))
    assert classifier_sizes == [6, 6]
    assert "train/generator_loss_epoch" in fit.callback_metrics
    assert "train/synthetic_ce_epoch" not in fit.callback_metrics
