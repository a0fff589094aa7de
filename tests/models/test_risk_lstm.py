"""The risk family base (RiskPredictor) and the LSTM backbone (seed 000, Eq. 3.1–3.4, 3.13)."""

import lightning.pytorch as pl
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

from ehrlab.checkpoints import load_model_weights
from ehrlab.models.risk.base import RiskPredictor, last_visit
from ehrlab.models.risk.lstm import LSTMBackbone

VOCABULARY = ["[PAD]"] + [f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(1, 30)]
SMALL = ["model.backbone.visit_dim=16", "model.backbone.hidden_dim=16", "model.backbone.time_dim=8", "model.backbone.dropout=0.0"]


def make_batch(n_patients=6, n_visits=4, n_codes=3, seed=0, vocab_size=len(VOCABULARY)):
    """A batch in the DataModule contract; every visit's last code slot is padding."""
    return random_risk_batch(vocab_size, n_patients, n_visits, n_codes, seed, pad_last_code=True)


def compose_model(name, overrides=()):
    return compose_risk_model(name, VOCABULARY, overrides)


def pad_more(batch, extra_visits=2, extra_codes=2):
    """The same patients with extra padding visits and padding code slots (garbage times)."""
    padded = dict(batch)
    codes = torch.nn.functional.pad(batch["codes"], (0, extra_codes, 0, extra_visits))
    padded["codes"] = codes
    padded["visit_mask"] = torch.nn.functional.pad(batch["visit_mask"], (0, extra_visits))
    for key in ("time_to_end", "time_delta"):
        padded[key] = torch.nn.functional.pad(batch[key], (0, extra_visits), value=0.0)
    return padded


def test_lstm_config_defaults_follow_section_4_1():
    model = compose_model("lstm")
    assert isinstance(model, RiskPredictor) and isinstance(model.backbone, LSTMBackbone)
    assert model.backbone.visit_dim == 256 and model.backbone.hidden_dim == 256
    assert model.backbone.time_embedding.time_dim == 64
    assert (model.monitor, model.monitor_mode, model.early_stopping_patience) == ("val/f1", "max", 10)
    optimizers = model.configure_optimizers()
    adam = optimizers["optimizer"]
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["weight_decay"] == 1e-3
    plateau = optimizers["lr_scheduler"]["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.mode, plateau.factor, plateau.patience) == ("max", 0.2, 5)
    assert optimizers["lr_scheduler"]["monitor"] == "val/f1"


def test_forward_shapes_and_last_visit():
    model = compose_model("lstm", SMALL)
    batch = make_batch()
    embeddings = model.backbone.embed_visits(batch)
    hidden = model.backbone.encode(embeddings, batch)
    assert embeddings.shape == (6, 4, 16) and hidden.shape == (6, 4, 16)
    assert model(batch).shape == (6, 2)
    last = last_visit(hidden, batch["visit_mask"])
    for patient, count in enumerate(batch["n_visits"].tolist()):
        torch.testing.assert_close(last[patient], hidden[patient, count - 1])


TINY = [
    "model.backbone.visit_dim=3", "model.backbone.hidden_dim=2", "model.backbone.time_dim=2", "model.backbone.dropout=0.0"
]


def test_visit_embedding_is_relu_of_code_sum_plus_time_embedding():
    model = compose_model("lstm", TINY)
    weights = hand_set_lstm_backbone(model.backbone)
    batch = {"codes": torch.tensor([[[1, 3, 0]]]), "time_to_end": torch.tensor([[90.0]])}
    code_part = torch.relu(weights["W_v"][1] + weights["W_v"][3] + weights["b_v"])  # Eq. 3.2; row 0 is padding
    time_feature = 1 - torch.tanh((0.5 * weights["W_f"] + weights["b_f"]) ** 2)  # Eq. 3.3, Δt/180 = 90/180
    time_part = weights["W_t"] @ time_feature + weights["b_t"]
    torch.testing.assert_close(model.backbone.embed_visits(batch)[0, 0], code_part + time_part)  # Eq. 3.1


def test_training_loss_matches_the_equations_written_out():
    """Eq. 3.1–3.4, 3.13 and 3.16 in plain torch ops (risk_batches.reference_*) with weights
    set by the test: an expected loss that does not come from the module's own parts."""
    model = compose_model("lstm", TINY)
    weights = hand_set_lstm_backbone(model.backbone, seed=1)
    batch = make_batch(n_patients=5, n_visits=4, seed=2)
    assert not batch["visit_mask"].all()  # padding visits are part of what is checked
    hidden_states = reference_lstm(reference_visit_embeddings(batch, weights), weights)
    expected = reference_cross_entropy(hidden_states, batch, weights)
    torch.testing.assert_close(model.training_loss(batch)["loss"], expected)


def test_padding_visits_and_codes_do_not_change_outputs():
    model = compose_model("lstm", SMALL).eval()
    batch = make_batch()
    padded = pad_more(batch)
    padded["time_to_end"][:, -2:] = 123.0  # even garbage in padding visits must not matter
    torch.testing.assert_close(model(batch), model(padded))


def test_gradients_reach_every_parameter():
    model = compose_model("lstm", SMALL)
    model.training_loss(make_batch())["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_plain_lstm_ignores_time():
    model = compose_model("lstm", SMALL + ["model.backbone.use_time_embedding=false"]).eval()
    batch = make_batch()
    shifted = dict(batch, time_to_end=batch["time_to_end"] * 3 + 10)
    torch.testing.assert_close(model(batch), model(shifted))
    assert not hasattr(model.backbone, "time_embedding")


def test_predict_step_returns_probabilities_per_subject():
    model = compose_model("lstm", SMALL).eval()
    batch = make_batch()
    prediction = model.predict_step(batch, 0)
    assert set(prediction) == {"subject_id", "probability", "label"}
    torch.testing.assert_close(prediction["probability"], model(batch).softmax(-1)[:, 1])
    assert torch.equal(prediction["subject_id"], batch["subject_id"])


def planted_batches(n_batches, batch_size=16, seed=0):
    """Positives carry code 5 in one visit; negatives never do (a learnable signal)."""
    batches = []
    for index in range(n_batches):
        batch = make_batch(batch_size, 4, 3, seed=seed + index)
        batch["codes"][batch["codes"] == 5] = 6
        labels = torch.arange(batch_size) % 2
        batch["label"] = labels
        batch["codes"][labels == 1, 0, 0] = 5
        batches.append(batch)
    return batches


class _Batches(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def loader(batches):
    return torch.utils.data.DataLoader(_Batches(batches), batch_size=None)


def fit_and_validate(model, epochs=12):
    """Tiny Lightning fit; returns val metrics before and after, and the metrics logged by fit."""
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train, val = loader(planted_batches(6)), loader(planted_batches(2, seed=100))
    before = trainer.validate(model, val, verbose=False)[0]
    trainer.fit(model, train, val)
    fit_metrics = dict(trainer.callback_metrics)
    after = trainer.validate(model, val, verbose=False)[0]
    return before, after, fit_metrics, trainer


def test_lightning_fit_learns_planted_signal_and_logs_percent_metrics():
    model = compose_model("lstm", SMALL + ["model.optimizer.lr=1e-2"])
    before, after, fit_metrics, trainer = fit_and_validate(model)
    assert {"val/loss", "val/f1", "val/pr_auc", "val/average_precision", "val/kappa", "val/roc_auc"} <= set(after)
    assert after["val/loss"] < before["val/loss"]
    assert after["val/f1"] > 90.0  # percent, on a perfectly separable signal
    assert "train/loss_epoch" in fit_metrics and "val/f1" in fit_metrics
    test = trainer.test(model, loader(planted_batches(2, seed=200)), verbose=False)[0]
    assert 90.0 < test["test/roc_auc"] <= 100.0


def test_gradient_clipping_is_the_trainers_at_the_papers_value(tmp_path):
    """The model's config sets trainer.gradient_clip_val (authors' code: global norm 1.0),
    and the Trainer clips: after a step on exploding gradients, the update is bounded."""
    from support import compose_config
    from hydra.utils import instantiate

    cfg = compose_config(["model=lstm"], tmp_path, tmp_path, shrink=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, max_steps=1,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                          limit_val_batches=0)
    assert trainer.gradient_clip_val == 1.0
    model = compose_model("lstm", SMALL)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    original_loss = model.training_loss
    model.training_loss = lambda batch: {"loss": 1e6 * original_loss(batch)["loss"]}
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=1.0)
    trainer.fit(model, loader(planted_batches(1, seed=3)))
    step = torch.linalg.vector_norm(torch.stack([(p.detach() - before[n]).norm() for n, p in model.named_parameters()]))
    assert step == pytest.approx(1.0, rel=1e-3)  # SGD with lr 1: the step is the clipped gradient


def test_checkpoint_round_trip_through_the_runners_weights_only_load(tmp_path):
    overrides = SMALL + ["model.denoiser.channels=8", "model.attention_dim=4"]
    model = compose_model("meddiffusion", overrides).eval()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    # As the runner does: the model is built from its config, then the weights are loaded.
    restored = compose_model("meddiffusion", overrides).eval()
    batch = make_batch()
    assert not torch.allclose(restored(batch), model(batch))
    load_model_weights(restored, path)
    torch.testing.assert_close(restored(batch), model(batch))
    checkpoint = torch.load(path, weights_only=True)  # plain data only
    assert checkpoint["ehrlab_vocabulary"] == VOCABULARY
    assert checkpoint["hyper_parameters"]["lambda_synthetic"] == 0.5
    assert checkpoint["hyper_parameters"]["backbone"]["_target_"] == "ehrlab.models.risk.lstm.LSTMBackbone"
