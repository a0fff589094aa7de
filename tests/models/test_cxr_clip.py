"""The CXR-EHR CLIP of seed 004 (Appendix B.1): encoders, contrastive loss, retrieval, checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from ehrlab.checkpoints import FINDINGS_KEY, load_model_weights, read_checkpoint
from ehrlab.errors import UserInputError
from ehrlab.models.cxr.baselines import TableClassifier
from ehrlab.models.cxr.clip import (
    CXRCLIP,
    INITIAL_LOGIT_SCALE,
    ImageTokenEncoder,
    build_clip_encoders,
    contrastive_logits,
    retrieval_accuracy,
    subsample_events,
    symmetric_contrastive_loss,
)
from ehrlab.models.cxr.parts import load_part
from ehrlab.models.cxr.table_encoder import TABLE_ENCODER_KEY
from test_cxr_baselines import BatchList  # a datamodule over ready-made batches

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
FINDINGS = ["chexpert:Edema", "chexpert:Pleural Effusion"]
D, S, E = 16, 16, 6
ARCHITECTURE = {"clip_dim": 16, "embed_dim": 8,
                "image": {"patch_size": 4, "n_layers": 1, "n_heads": 2, "mlp_ratio": 2, "dropout": 0.0},
                "table": {"n_layers": 1, "n_heads": 4, "ffn_multiplier": 2, "dropout": 0.0}}


def model_arguments() -> dict:
    return {"findings": list(FINDINGS), "event_dim": D, "image_size": S, "max_events": E}


def clip(lr: float = 1e-3, **options) -> CXRCLIP:
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.2, betas=(0.9, 0.98))
    return CXRCLIP(**model_arguments(), architecture=ARCHITECTURE, optimizer=optimizer, **options)


def fake_batch(n_pairs: int = 8, seed: int = 0, first_pair: int = 0) -> dict[str, torch.Tensor]:
    """A CXRDataModule batch: images in [0, 1], events left-aligned with padding after them."""
    generator = torch.Generator().manual_seed(seed)
    n_events = torch.randint(1, E + 1, (n_pairs,), generator=generator)
    return {
        "prev_image": torch.rand(n_pairs, 1, S, S, generator=generator),
        "target_image": torch.rand(n_pairs, 1, S, S, generator=generator),
        "events": torch.randn(n_pairs, E, D, generator=generator),
        "event_mask": torch.arange(E) < n_events.unsqueeze(1),
        "prev_labels": torch.zeros(n_pairs, len(FINDINGS)),
        "target_labels": torch.ones(n_pairs, len(FINDINGS)),
        "age": torch.full((n_pairs,), 60.0),
        "sex": torch.zeros(n_pairs, dtype=torch.long),
        "pair_id": torch.arange(n_pairs) + first_pair,
        "subject_id": torch.arange(n_pairs) + 100,
    }


def test_image_encoder_gives_cls_plus_one_token_per_patch():
    encoder = ImageTokenEncoder(image_size=32, width=24, patch_size=8, n_layers=1, n_heads=3)
    tokens = encoder(torch.rand(2, 1, 32, 32))
    assert encoder.n_tokens == 17 and tokens.shape == (2, 17, 24)
    # The paper's ViT-B/32 at 256²: 65 tokens of 768 (§4.5); built without memory on the meta device.
    with torch.device("meta"):
        image, table = build_clip_encoders(256, 384, {"clip_dim": 768, "image": {"patch_size": 32, "n_layers": 12,
                                                                                "n_heads": 12}})
    assert (image.n_tokens, image.width, table.output_dim, table.n_heads) == (65, 768, 768, 24)
    assert 85e6 < sum(p.numel() for p in image.parameters()) < 88e6  # ViT-B/32's vision tower without RGB/pooler
    assert image.vit.config.num_hidden_layers == 12 and len(table.transformer.layers) == 2


def test_encoders_refuse_sizes_that_do_not_fit():
    with pytest.raises(UserInputError, match="patch_size=5 does not divide"):
        ImageTokenEncoder(32, 16, patch_size=5, n_layers=1, n_heads=2)
    with pytest.raises(UserInputError, match="n_heads=3 does not divide"):
        ImageTokenEncoder(32, 16, patch_size=8, n_layers=1, n_heads=3)
    with pytest.raises(UserInputError, match="built for 32² images"):
        ImageTokenEncoder(32, 16, patch_size=8, n_layers=1, n_heads=2)(torch.rand(1, 1, 16, 16))
    with pytest.raises(UserInputError, match="unknown option.*'width'"):
        build_clip_encoders(S, D, {**ARCHITECTURE, "image": {**ARCHITECTURE["image"], "width": 8}})
    with pytest.raises(UserInputError, match="table.*n_heads=5 does not divide"):
        build_clip_encoders(S, D, {**ARCHITECTURE, "table": {"n_heads": 5}})


def test_table_tokens_are_projected_to_the_clip_width_and_zero_at_padding():
    _, table = build_clip_encoders(S, D, ARCHITECTURE)
    batch = fake_batch()
    tokens = table(batch["events"], batch["event_mask"])
    assert tokens.shape == (8, E, 16)
    assert torch.equal(tokens[~batch["event_mask"]], torch.zeros_like(tokens[~batch["event_mask"]]))


def test_contrastive_loss_is_symmetric_cross_entropy_with_a_clamped_temperature():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, -1.0], [0.0, 3.0, 0.0]])
    rows = -torch.log_softmax(logits, 1).diagonal().mean()
    columns = -torch.log_softmax(logits, 0).diagonal().mean()
    assert symmetric_contrastive_loss(logits).item() == pytest.approx(((rows + columns) / 2).item())
    assert symmetric_contrastive_loss(logits).item() == pytest.approx(symmetric_contrastive_loss(logits.T).item())
    assert symmetric_contrastive_loss(logits).item() != pytest.approx(rows.item())  # both directions count
    embeddings = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    scaled = contrastive_logits(embeddings, embeddings, torch.tensor(INITIAL_LOGIT_SCALE))
    assert scaled[0, 0].item() == pytest.approx(1 / 0.07, rel=1e-5)  # cosine 1 × the initial 1/0.07
    assert scaled[0, 1].item() == pytest.approx(0.8 / 0.07, rel=1e-5)
    assert contrastive_logits(embeddings, embeddings, torch.tensor(10.0))[0, 0].item() == pytest.approx(100.0)


def test_training_on_a_repeated_batch_separates_matched_from_shuffled_pairs():
    torch.manual_seed(0)
    model = clip(lr=3e-3)
    batch = fake_batch()
    shuffled = dict(batch, events=batch["events"].roll(1, 0), event_mask=batch["event_mask"].roll(1, 0))
    optimizer = model.configure_optimizers()
    first = symmetric_contrastive_loss(model(batch)).item()
    for _ in range(25):
        optimizer.zero_grad()
        symmetric_contrastive_loss(model(batch)).backward()
        optimizer.step()
    with torch.no_grad():
        matched = symmetric_contrastive_loss(model(batch)).item()
        mismatched = symmetric_contrastive_loss(model(shuffled)).item()
    assert matched < 0.5 * first
    assert mismatched > 2 * matched + 1.0
    assert model.logit_scale.item() != INITIAL_LOGIT_SCALE  # the temperature is learned


def test_weight_decay_spares_biases_norms_and_the_temperature():
    model = clip()
    decay, no_decay = model.configure_optimizers().param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert any(p is model.image_projection.weight for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"]) and all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_retrieval_counts_the_match_among_the_top_k_and_does_not_penalise_identical_twins():
    similarity = torch.tensor([
        [0.9, 0.1, 0.2, 0.0, 0.0, 0.0],   # match first
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # match second
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # match third
        [0.9, 0.8, 0.7, 0.6, 0.1, 0.0],   # match fourth
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.95],  # match sixth
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],   # all tied (identical candidates): ranked first
    ])
    assert retrieval_accuracy(similarity, 1) == pytest.approx(2 / 6)
    assert retrieval_accuracy(similarity, 2) == pytest.approx(3 / 6)
    assert retrieval_accuracy(similarity, 5) == pytest.approx(5 / 6)
    assert retrieval_accuracy(similarity, 6) == 1.0


def test_test_metrics_rank_all_test_pairs_at_once():
    torch.manual_seed(0)
    model = clip()
    batches = [fake_batch(4, seed=1), fake_batch(3, seed=2, first_pair=4)]
    metrics = model.test_metrics(batches)
    assert set(metrics) == {"test/loss", "test/retrieval_top1_image_to_events", "test/retrieval_top5_image_to_events",
                            "test/retrieval_top1_events_to_image", "test/retrieval_top5_events_to_image"}
    model.eval()
    with torch.no_grad():
        images = torch.cat([model.embed_images(b["prev_image"]) for b in batches])
        tables = torch.cat([model.embed_events(b["events"], b["event_mask"]) for b in batches])
    logits = contrastive_logits(images, tables, model.logit_scale)
    assert metrics["test/loss"] == pytest.approx(symmetric_contrastive_loss(logits).item(), rel=1e-5)
    assert metrics["test/retrieval_top5_image_to_events"] == pytest.approx(retrieval_accuracy(logits, 5))
    assert metrics["test/retrieval_top1_events_to_image"] == pytest.approx(retrieval_accuracy(logits.T, 1))
    # Over 7 pairs a top-5 hit is not guaranteed, while a pair-by-pair batch of 3 or 4 always hits.
    assert metrics["test/retrieval_top5_image_to_events"] <= 1.0
    assert model.test_metrics([fake_batch(4, seed=1)])["test/retrieval_top5_events_to_image"] == 1.0


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> tuple[CXRCLIP, Path]:
    """A CXRCLIP fitted by Lightning for two epochs, and its best.ckpt."""
    folder = tmp_path_factory.mktemp("clip")
    pl.seed_everything(0, verbose=False)
    model = clip(lr=3e-3)
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor=model.monitor, mode=model.monitor_mode)
    trainer = pl.Trainer(max_epochs=2, logger=False, callbacks=[best], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=folder)
    trainer.fit(model, datamodule=BatchList([fake_batch(seed=s) for s in range(3)], [fake_batch(seed=9)]))
    assert {"train/loss_epoch", "train/logit_scale", "val/loss"} <= set(trainer.callback_metrics)
    return model, folder / "best.ckpt"


def test_checkpoint_round_trip_through_the_weights_only_reader(trained_checkpoint):
    model, path = trained_checkpoint
    checkpoint = read_checkpoint(path)
    assert checkpoint[FINDINGS_KEY] == FINDINGS
    assert checkpoint["hyper_parameters"]["optimizer"]["betas"] == [0.9, 0.98]
    assert checkpoint["hyper_parameters"]["architecture"] == ARCHITECTURE
    fresh = clip()
    load_model_weights(fresh, path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    batch = fake_batch(seed=5)
    assert model.test_metrics([batch]) == fresh.test_metrics([batch])


def test_encoders_built_elsewhere_load_from_a_clip_checkpoint(trained_checkpoint):
    """EHRXDiff's path: build_clip_encoders with the run's architecture, then load_part."""
    model, path = trained_checkpoint
    image, table = build_clip_encoders(S, D, ARCHITECTURE)
    load_part(image, path, "image_encoder", role="model.clip_checkpoint", hint="")
    load_part(table, path, TABLE_ENCODER_KEY, role="model.clip_checkpoint", hint="")
    batch = fake_batch(seed=6)
    model.eval(), image.eval(), table.eval()
    with torch.no_grad():
        assert torch.equal(image(batch["prev_image"]), model.image_encoder(batch["prev_image"]))
        assert torch.equal(table(batch["events"], batch["event_mask"]),
                           model.table_encoder(batch["events"], batch["event_mask"]))


def test_table_classifier_starts_from_a_clip_checkpoints_table_encoder(trained_checkpoint):
    model, path = trained_checkpoint
    table = ARCHITECTURE["table"]
    classifier = TableClassifier(**model_arguments(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
                                 n_layers=table["n_layers"], n_heads=table["n_heads"],
                                 ffn_multiplier=table["ffn_multiplier"], clip_checkpoint=str(path))
    trained = model.table_encoder.state_dict()
    loaded = classifier.table_encoder.state_dict()
    assert loaded.keys() == {k for k in trained if not k.startswith("projection.")}  # the projection is skipped
    for name, value in loaded.items():
        assert torch.equal(value, trained[name]), name
    assert not torch.equal(loaded["transformer.layers.0.linear1.weight"],
                           TableClassifier(**model_arguments(), optimizer=torch.optim.AdamW, n_layers=1, n_heads=4,
                                           ffn_multiplier=2).table_encoder.state_dict()[
                                               "transformer.layers.0.linear1.weight"])
    with pytest.raises(UserInputError, match="model.clip_checkpoint=.*does not fit"):
        TableClassifier(**model_arguments(), optimizer=torch.optim.AdamW, n_layers=2, n_heads=4, ffn_multiplier=2,
                        clip_checkpoint=str(path))


def compose(name: str):
    config = OmegaConf.load(CONF / f"{name}.yaml")
    if "defaults" in config:
        parents = [OmegaConf.load(CONF / f"{parent}.yaml") for parent in config.defaults if parent != "_self_"]
        config = OmegaConf.merge(*parents, config)
        del config["defaults"]
    return config


@pytest.mark.parametrize("name, image_size, tokens, width, batch_size", [("cxr_clip", 256, 65, 768, 1024),
                                                                          ("cxr_clip_small", 64, 65, 128, 128)])
def test_model_configs_build_their_model(name, image_size, tokens, width, batch_size):
    config = compose(name)
    assert config.data.image_size == image_size and config.data.batch_size == batch_size
    with torch.device("meta"):  # the paper's ViT-B/32 costs no memory or time here
        model = instantiate(config.model, **dict(model_arguments(), event_dim=384, image_size=image_size))
    assert type(model) is CXRCLIP and model.output == "encoder"
    assert (model.image_encoder.n_tokens, model.image_encoder.width, model.table_encoder.n_heads) == (tokens, width, 24)
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["lr"] == 5e-4 and tuple(optimizer.defaults["betas"]) == (0.9, 0.98)  # B.1
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.2, 0.0]
    assert model.hparams.optimizer.keywords["betas"] == [0.9, 0.98] and type(model.hparams.optimizer.keywords[
        "betas"]) is list


def test_subsampled_events_are_distinct_real_events_of_the_same_pair():
    batch = fake_batch(n_pairs=16)
    n_real = batch["event_mask"].sum(1)
    events, mask = subsample_events(batch["events"], batch["event_mask"], 3, torch.Generator().manual_seed(0))
    assert events.shape == (16, 3, D) and mask.shape == (16, 3)
    assert torch.equal(mask.sum(1), n_real.clamp(max=3))
    for pair in range(16):
        real = batch["events"][pair][batch["event_mask"][pair]]
        kept = events[pair][mask[pair]]
        matches = (kept.unsqueeze(1) == real.unsqueeze(0)).all(-1)  # kept × real
        assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()  # each kept event is one distinct real one
    again, _ = subsample_events(batch["events"], batch["event_mask"], 3, torch.Generator().manual_seed(1))
    assert not torch.equal(events, again)  # a new draw each step
    same = subsample_events(batch["events"], batch["event_mask"], E)
    assert same[0] is batch["events"] and same[1] is batch["event_mask"]  # nothing to drop


def test_training_steps_see_at_most_train_max_events_while_evaluation_sees_all(monkeypatch):
    model = clip(train_max_events=2)
    seen = []
    original = model.embed_events
    monkeypatch.setattr(model, "embed_events", lambda events, mask: seen.append(mask.shape[1]) or original(events, mask))
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    batch = fake_batch()
    model.training_step(batch, 0)
    model.validation_step(batch, 0)
    model.test_metrics([batch])
    assert seen == [2, E, E]
    with pytest.raises(UserInputError, match="train_max_events=0"):
        clip(train_max_events=0)
