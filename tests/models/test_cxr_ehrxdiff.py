"""EHRXDiff (seed 004 §3): the adapter, w_null's no-change triples, the DDIM sampler, training,
the EMA, the parts' checkpoints and the configs."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ehrlab.checkpoints import load_model_weights
from ehrlab.errors import UserInputError
from ehrlab.models.cxr.adapter import FusionAdapter
from ehrlab.models.cxr.augment import affine_matrices, random_affine
from ehrlab.models.cxr.autoencoder import CXRAutoencoder
from ehrlab.models.cxr.clip import CXRCLIP
from ehrlab.models.cxr.ehrxdiff import EHRXDiff, add_null_samples, condition_shift, pair_generator

CONF = Path(__file__).resolve().parents[2] / "conf"
FINDINGS = ["chexpert:Edema", "chexpert:Pleural Effusion"]
S, D, E, MAX_EVENTS = 16, 8, 5, 12
AUTOENCODER = {"block_out_channels": [8, 8], "latent_channels": 2, "layers_per_block": 1}  # 16² → 2 × 8 × 8
CLIP = {"clip_dim": 16, "embed_dim": 8, "image": {"patch_size": 8, "n_layers": 1, "n_heads": 2},
        "table": {"n_layers": 1, "n_heads": 2, "dropout": 0.0}}
UNET = {"block_out_channels": [16, 16], "layers_per_block": 1, "attention_levels": [1], "n_heads": 2}
ROWS = {  # Table 4: row → (vae_concat, vae_cross_attention, clip_image, table)
    1: (True, False, False, False), 2: (False, True, False, False), 3: (False, False, True, False),
    4: (False, False, False, True), 5: (True, False, False, True), 6: (True, False, True, True),
    7: (False, True, True, True)}


def conditioning(row: int) -> dict[str, bool]:
    return dict(zip(("vae_concat", "vae_cross_attention", "clip_image", "table"), ROWS[row], strict=True))


def model_arguments() -> dict:
    return {"findings": list(FINDINGS), "event_dim": D, "image_size": S, "max_events": MAX_EVENTS}


def make_model(lr: float = 1e-3, **options) -> EHRXDiff:
    settings = {"n_context": 6, "context_dim": 12, "unet": UNET, "sampling_steps": 4, "ema_decay": None, **options}
    torch.manual_seed(settings.pop("seed", 0))
    return EHRXDiff(**model_arguments(), autoencoder=AUTOENCODER, clip=CLIP,
                    optimizer=functools.partial(torch.optim.AdamW, lr=lr), **settings)


def fake_batch(n_pairs: int = 4, n_events: list[int] | None = None, seed: int = 0, width: int = E) -> dict:
    """A batch as the CXRDataModule builds it: events left-aligned, padding after them."""
    generator = torch.Generator().manual_seed(seed)
    n_events = n_events or [width - i % width for i in range(n_pairs)]
    grid = torch.linspace(-1, 1, S)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(2 * n_pairs, 2, generator=generator) - 0.5
    blobs = torch.exp(-((x - centres[:, :1, None]) ** 2 + (y - centres[:, 1:, None]) ** 2) / 0.2).unsqueeze(1)
    return {
        "prev_image": blobs[:n_pairs], "target_image": blobs[n_pairs:],
        "events": torch.randn(n_pairs, width, D, generator=generator)
        * (torch.arange(width) < torch.tensor(n_events).unsqueeze(1)).unsqueeze(-1),
        "event_mask": torch.arange(width) < torch.tensor(n_events).unsqueeze(1),
        "prev_labels": torch.zeros(n_pairs, len(FINDINGS)), "target_labels": torch.ones(n_pairs, len(FINDINGS)),
        "age": torch.full((n_pairs,), 60.0), "sex": torch.zeros(n_pairs, dtype=torch.long),
        "pair_id": torch.arange(n_pairs) * 7 + 3, "subject_id": torch.arange(n_pairs) + 100,
    }


def rows_of(batch: dict, rows: list[int]) -> dict:
    return {k: v[rows] for k, v in batch.items()}


# --------------------------------------------------------------------------------- the adapter


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_conditioning_row_gives_its_context_and_unet_input(row):
    model = make_model(conditioning=conditioning(row)).eval()
    batch = fake_batch()
    concat, vae_attention, clip_image, table = ROWS[row]
    with torch.no_grad():
        prev_latent = model.encode(batch["prev_image"])[:, :2]  # the posterior's mode (its mean)
        context, extra = model.conditions(model.networks(ema=False), batch)
    streams = vae_attention or clip_image or table
    assert context.tokens.shape == (4, 6 if streams else 1, 12) and context.mask is None
    assert model.unet.config.in_channels == (4 if concat else 2)
    assert (extra is not None) == concat
    if concat:
        assert torch.allclose(extra, prev_latent * model.latent_scale)
    assert (model.image_encoder is not None) == clip_image and (model.table_encoder is not None) == table
    n_tokens = (MAX_EVENTS if table else 0) + ((S // 8) ** 2 + 1 if clip_image else 0) + (2 if vae_attention else 0)
    assert model.adapter.n_tokens == n_tokens
    assert model.forecast(batch, seed=0)["image"].shape == (4, 1, S, S)


def test_no_condition_at_all_and_unknown_switches_are_refused():
    with pytest.raises(UserInputError, match="every condition off"):
        make_model(conditioning=dict.fromkeys(("vae_concat", "vae_cross_attention", "clip_image", "table"), False))
    with pytest.raises(UserInputError, match="unknown key"):
        make_model(conditioning={"text": True})


def test_adapter_multiplies_only_the_real_event_slots_exactly_as_padding_would():
    torch.manual_seed(0)
    adapter = FusionAdapter(clip_dim=6, n_context=5, context_dim=4, table_tokens=10, image_tokens=3,
                            vae_channels=2, vae_pixels=9)
    table = torch.randn(2, 4, 6)
    table[1, 3:] = 0.0  # the second pair's padding
    image, vae = torch.randn(2, 3, 6), torch.randn(2, 2, 3, 3)
    padded = torch.cat([table, torch.zeros(2, 6, 6)], dim=1)
    short = adapter(table=table, image=image, vae=vae).tokens
    # the definition: all 10 + 3 + 2 tokens through one linear map along the token axis
    tokens = torch.cat([padded, image, adapter.vae_projection(vae.flatten(2))], dim=1)
    full = adapter.output_projection(adapter.token_mixing(tokens.transpose(1, 2)).transpose(1, 2))
    assert short.shape == (2, 5, 4)
    assert torch.allclose(short, full, atol=1e-6)
    assert torch.allclose(adapter(table=padded, image=image, vae=vae).tokens, full, atol=1e-6)
    assert adapter.token_mixing.weight.shape == (5, 15)
    with pytest.raises(UserInputError, match="more than the 10 event slots"):
        adapter(table=torch.randn(2, 11, 6), image=image, vae=vae)
    with pytest.raises(ValueError, match="streams"):
        adapter(table=table, image=image)


def test_adapter_with_table_tokens_of_their_own_mixes_only_the_image_streams():
    """table_context=tokens: the event tokens follow the mixed image and VAE tokens as they are
    (projected to the context width), and the mask keeps cross-attention off their padding."""
    torch.manual_seed(0)
    adapter = FusionAdapter(clip_dim=6, n_context=5, context_dim=4, table_tokens=10, image_tokens=3,
                            vae_channels=2, vae_pixels=9, table_context="tokens")
    table = torch.randn(2, 4, 6)
    table[1, 3:] = 0.0
    mask = torch.tensor([[True] * 4, [True] * 3 + [False]])
    image, vae = torch.randn(2, 3, 6), torch.randn(2, 2, 3, 3)
    context = adapter(table=table, image=image, vae=vae, table_mask=mask)
    assert adapter.token_mixing.weight.shape == (5, 5)  # 3 image + 2 VAE tokens, no event slot
    mixed = adapter.token_mixing(torch.cat([image, adapter.vae_projection(vae.flatten(2))], dim=1).transpose(1, 2))
    expected = adapter.output_projection(torch.cat([mixed.transpose(1, 2), table], dim=1))
    assert torch.allclose(context.tokens, expected, atol=1e-6)
    assert torch.equal(context.mask, torch.cat([torch.ones(2, 5, dtype=torch.bool), mask], dim=1))
    with pytest.raises(ValueError, match="table_mask"):
        adapter(table=table, image=image, vae=vae)
    with pytest.raises(UserInputError, match="table_context"):
        FusionAdapter(clip_dim=6, n_context=5, table_tokens=10, table_context="pooled")
    # The table stream alone: one learned token first, which a pair without events attends.
    alone = FusionAdapter(clip_dim=6, n_context=5, table_tokens=10, table_context="tokens")
    context = alone(table=torch.zeros(2, 3, 6), table_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert context.tokens.shape == (2, 4, 6) and context.mask[:, 0].all() and not context.mask[:, 1:].any()


def test_adapter_without_streams_is_one_learned_token():
    adapter = FusionAdapter(clip_dim=6, n_context=5, context_dim=4)
    out = adapter(batch_size=3)
    assert out.tokens.shape == (3, 1, 4) and torch.equal(out.tokens[0], out.tokens[2]) and out.mask is None
    assert [name for name, _ in adapter.named_parameters()] == ["null_context"]


# ------------------------------------------------------------------------------------ w_null


def test_random_affine_moves_the_image_a_little_within_its_range():
    image = fake_batch(n_pairs=8)["prev_image"]
    generator = torch.Generator().manual_seed(0)
    moved = random_affine(image, 10.0, (0.9, 1.1), generator=generator)
    assert moved.shape == image.shape
    difference = (moved - image).abs().flatten(1).mean(dim=1)
    assert (difference > 1e-3).all() and (difference < 0.1).all()
    assert moved.min() >= image.min() - 1e-6 and moved.max() <= image.max() + 1e-6
    # No rotation and scale 1 is the identity; the draws follow the generator.
    assert torch.allclose(random_affine(image, 0.0, (1.0, 1.0)), image, atol=1e-5)
    assert torch.equal(random_affine(image, 10.0, (0.9, 1.1), generator=torch.Generator().manual_seed(0)), moved)
    # A quarter turn and a doubling, on the matrices: (1, 0) → (0, 1) / 2 in input coordinates.
    theta = affine_matrices(torch.tensor([math.pi / 2]), torch.tensor([2.0]))
    assert torch.allclose(theta[0, :, :2] @ torch.tensor([1.0, 0.0]), torch.tensor([0.0, -0.5]), atol=1e-6)
    with pytest.raises(UserInputError):
        random_affine(image, 10.0, (1.1, 0.9))


def test_null_samples_have_no_events_and_a_moved_copy_of_the_previous_image():
    batch = fake_batch(n_pairs=6, n_events=[5, 4, 3, 2, 1, 5])
    extended, source = add_null_samples(batch, 0.5, 10.0, (0.9, 1.1), generator=torch.Generator().manual_seed(1))
    assert extended["prev_image"].shape == (12, 1, S, S) and extended["events"].shape == (12, E, D)
    for key, value in batch.items():  # the original rows come first, unchanged
        assert torch.equal(extended[key][:6], value)
    assert torch.equal(source[:6], torch.arange(6)) and sorted(source[6:].tolist()) == list(range(6))
    assert not extended["event_mask"][6:].any() and not extended["events"][6:].any()
    previous = batch["prev_image"][source[6:]]
    assert torch.equal(extended["prev_image"][6:], previous)
    targets = extended["target_image"][6:]
    difference = (targets - previous).abs().flatten(1).mean(dim=1)
    assert (difference > 1e-3).all() and (difference < 0.1).all()  # moved, but the same image
    assert torch.equal(extended["target_labels"][6:], batch["prev_labels"][source[6:]])  # no change
    assert torch.equal(extended["pair_id"][6:], batch["pair_id"][source[6:]])
    # A quarter of the extended batch: 2 null rows for 6 pairs.
    quarter, source = add_null_samples(batch, 0.25, 10.0, (0.9, 1.1))
    assert len(quarter["pair_id"]) == 8 and len(source) == 8


def test_wnull_training_step_runs_on_the_extended_batch():
    model = make_model(null_share=0.5)
    batch = fake_batch()
    loss = model.training_step(batch, 0)
    loss.backward()
    assert loss.item() > 0 and model.unet.conv_in.weight.grad is not None
    with pytest.raises(UserInputError, match="null_share"):
        make_model(null_share=1.0)


# ---------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("table_context", ["mixed", "tokens"])
def test_ddim_with_a_fixed_seed_is_deterministic_and_independent_of_the_batch(table_context):
    model = make_model(sampling_steps=5, table_context=table_context)
    batch = fake_batch(n_pairs=5, n_events=[5, 1, 3, 2, 4])
    first = model.forecast(batch, seed=0)["image"]
    assert first.shape == (5, 1, S, S) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(model.forecast(batch, seed=0)["image"], first)
    assert not torch.allclose(model.forecast(batch, seed=1)["image"], first, atol=1e-3)
    # The same pairs in another order and company: the same forecasts (their events are
    # padded to another width there, too).
    rows = [3, 1]
    other = rows_of(batch, rows)
    other["events"], other["event_mask"] = other["events"][:, :3], other["event_mask"][:, :3]
    assert torch.allclose(model.forecast(other, seed=0)["image"], first[rows], atol=1e-5)
    assert torch.allclose(model.forecast(rows_of(batch, [2]), seed=0)["image"], first[[2]], atol=1e-5)
    # The noise belongs to the pair id.
    renamed = dict(batch, pair_id=batch["pair_id"] + 1)
    assert not torch.allclose(model.forecast(renamed, seed=0)["image"], first, atol=1e-3)
    assert torch.equal(torch.randn(3, generator=pair_generator(0, 10)), torch.randn(3, generator=pair_generator(0, 10)))
    assert not torch.equal(torch.randn(3, generator=pair_generator(0, 10)),
                           torch.randn(3, generator=pair_generator(1, 10)))


@pytest.mark.parametrize("table_context", ["mixed", "tokens"])
@pytest.mark.parametrize("table", [False, True])
def test_the_events_change_the_forecast_only_with_the_table_stream(table, table_context):
    model = make_model(conditioning={**conditioning(7), "table": table}, sampling_steps=3, table_context=table_context)
    batch = fake_batch()
    changed = dict(batch, events=torch.randn_like(batch["events"]) * batch["event_mask"].unsqueeze(-1))
    same = torch.allclose(model.forecast(batch, seed=0)["image"], model.forecast(changed, seed=0)["image"], atol=1e-6)
    assert same != table


@pytest.mark.parametrize(("row", "table_context"), [(7, "mixed"), (7, "tokens"), (4, "tokens")])
def test_no_events_at_all_is_a_valid_condition(row, table_context):
    model = make_model(sampling_steps=2, conditioning=conditioning(row), table_context=table_context)
    batch = fake_batch(n_events=[0, 0, 2, 0])
    assert not model.forecast(batch, seed=0)["image"].isnan().any()


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_a_perfect_denoiser_returns_the_latent_its_training_target_describes(prediction):
    """The loss's target (`prediction_target`) and the sampler agree on what the denoiser predicts:
    a denoiser that outputs exactly that target for one known latent z_0 makes deterministic DDIM
    (η = 0) end at z_0, for ε- and for v-prediction alike."""
    model = make_model(prediction=prediction, sampling_steps=20, eta=0.0)
    z0 = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))

    def oracle(unet, latents, timesteps, context, concat):
        alpha_bar = model.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noise = (latents - alpha_bar.sqrt() * z0) / (1.0 - alpha_bar).sqrt()
        return model.prediction_target(z0, noise, alpha_bar)

    model.denoise = oracle
    model.decode = lambda latents: latents
    # The last step goes to ᾱ_0 = 0.9985, not to 1 (LDM's): √(1 − ᾱ_0) ≈ 0.04 of the noise remains.
    error = (model.forecast(fake_batch(n_pairs=2), seed=0)["image"] - z0).abs().mean().item()
    wrong = make_model(prediction="epsilon" if prediction == "v" else "v", sampling_steps=20, eta=0.0)
    wrong.denoise, wrong.decode = oracle, model.decode  # trained for one target, sampled as the other
    wrong_error = (wrong.forecast(fake_batch(n_pairs=2), seed=0)["image"] - z0).abs().mean().item()
    assert error < 0.05  # about √(1 − ᾱ_0) · E|ε| = 0.031
    assert wrong_error > 2 * error
    with pytest.raises(UserInputError, match="model.prediction"):
        make_model(prediction="x0")


# ---------------------------------------------------------------------------------- training


def test_training_steps_lower_the_loss_on_a_repeated_batch():
    model = make_model(lr=3e-3)
    batch = fake_batch(n_pairs=8)
    optimizer = model.configure_optimizers()

    def fixed_loss() -> float:  # the same noise, timesteps and posterior samples each time
        with torch.no_grad():
            return model.diffusion_loss(batch, model.networks(ema=False),
                                        generator=torch.Generator().manual_seed(0)).item()

    first = fixed_loss()
    assert fixed_loss() == first
    for _ in range(25):
        optimizer.zero_grad()
        model.training_step(batch, 0).backward()
        optimizer.step()
    assert fixed_loss() < 0.7 * first


def test_the_autoencoder_is_frozen_and_outside_the_optimiser():
    model = make_model(ema_decay=0.999, train_clip=False)
    model.train()
    assert not model.autoencoder.training and not model.ema.training
    assert not model.table_encoder.training and model.unet.training
    trained = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    for module in (model.autoencoder, model.image_encoder, model.table_encoder, model.ema):
        assert not any(id(p) in trained for p in module.parameters())
        assert not any(p.requires_grad for p in module.parameters())
    assert all(id(p) in trained for p in model.unet.parameters())
    assert sorted(model.ema) == ["adapter", "unet"]
    assert sorted(make_model(ema_decay=0.999).ema) == ["adapter", "image_encoder", "table_encoder", "unet"]
    model.training_step(fake_batch(), 0).backward()
    assert all(p.grad is None for p in model.autoencoder.parameters())


def test_ema_follows_ldm_warm_up_and_is_what_forecasts():
    model = make_model(ema_decay=0.9999)
    before = model.ema["unet"].conv_in.weight.clone()
    with torch.no_grad():
        model.unet.conv_in.weight.add_(1.0)
    model.update_ema()
    decay = min(0.9999, 2 / 11)  # LitEma: n = 1 after the first update
    assert torch.allclose(model.ema["unet"].conv_in.weight, decay * before + (1 - decay) * model.unet.conv_in.weight)
    assert int(model.ema_updates) == 1
    # The forecast uses the EMA weights: moving the trained UNet alone leaves it unchanged.
    batch = fake_batch()
    forecast = model.forecast(batch, seed=0)["image"]
    with torch.no_grad():
        model.unet.conv_out.weight.mul_(3.0)
    assert torch.equal(model.forecast(batch, seed=0)["image"], forecast)


class BatchList(pl.LightningDataModule):
    def __init__(self, train: list[dict], val: list[dict]):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


def test_lightning_fit_updates_the_ema_and_the_checkpoint_restores_the_forecast(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = make_model(ema_decay=0.99, null_share=0.5)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=BatchList([fake_batch(seed=s) for s in range(3)], [fake_batch(seed=9)]))
    assert int(model.ema_updates) == 3
    assert {"train/loss_epoch", "val/loss"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    fresh = make_model(ema_decay=0.99, null_share=0.5, seed=1)
    load_model_weights(fresh, tmp_path / "model.ckpt")
    assert int(fresh.ema_updates) == 3
    batch = fake_batch(seed=5)
    assert torch.equal(fresh.forecast(batch, seed=2)["image"], model.forecast(batch, seed=2)["image"])


def test_untrained_parts_are_reported_when_training_starts_not_when_a_checkpoint_will_be_loaded(caplog):
    """stage=evaluate builds the model without its parts' checkpoints and then loads every weight
    from the EHRXDiff checkpoint: building it must not warn that the forecasts are meaningless."""
    with caplog.at_level(logging.INFO, logger="ehrlab.models.cxr.ehrxdiff"):
        model = make_model(train_clip=False)
        assert not caplog.records
        model.on_fit_start()
    messages = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "the autoencoder is untrained" in messages[0][1] and "stay untrained (random)" in messages[2][1]


@pytest.mark.parametrize(("train_clip", "table_context"), [(False, "mixed"), (True, "mixed"), (False, "tokens")])
def test_cached_conditions_give_the_same_loss(train_clip, table_context):
    model = make_model(train_clip=train_clip, cache_conditions=True, null_share=0.5, table_context=table_context).eval()
    plain = make_model(train_clip=train_clip, null_share=0.5, table_context=table_context).eval()
    plain.load_state_dict(model.state_dict())
    batch = fake_batch(n_pairs=5, n_events=[5, 1, 3, 0, 2])
    extended, source = add_null_samples(batch, 0.5, 10.0, (0.9, 1.1), generator=torch.Generator().manual_seed(0))

    def loss(m, b, s=None) -> float:
        with torch.no_grad():
            return m.diffusion_loss(b, m.networks(ema=False), s, generator=torch.Generator().manual_seed(4)).item()

    expected = loss(plain, extended, source)
    assert loss(model, extended, source) == pytest.approx(expected, rel=1e-5)  # fills the cache
    assert loss(model, extended, source) == pytest.approx(expected, rel=1e-5)  # reads it
    entry = model._feature_cache[int(batch["pair_id"][2])]
    assert set(entry) == ({"prev", "target"} if train_clip else {"prev", "target", "image", "table"})
    if not train_clip:
        assert entry["table"].shape == (3, CLIP["clip_dim"])  # its 3 real events, not the batch's padding
    # The same pairs padded to another width, in another order: read from the cache.
    other = rows_of(batch, [4, 2, 0])
    assert loss(model, other) == pytest.approx(loss(plain, other), rel=1e-5)
    assert len(model._feature_cache) == 5
    if not train_clip:  # a pair id must stand for one pair
        with pytest.raises(RuntimeError, match="another number of events"):
            loss(model, fake_batch(n_pairs=5, n_events=[1, 1, 1, 1, 1]))
    model.on_fit_end()
    assert not model._feature_cache


def test_validation_loss_is_the_same_draw_every_epoch():
    model = make_model()
    batch = fake_batch()
    values = [model.diffusion_loss(batch, model.networks(ema=True), generator=torch.Generator().manual_seed(3)).item()
              for _ in range(2)]
    assert values[0] == values[1]


@pytest.mark.parametrize(("row", "other", "swapped", "table_context"), [
    (1, "all", ("prev_image",), "mixed"), (7, "all", ("prev_image", "events", "event_mask"), "mixed"),
    (7, "events", ("events", "event_mask"), "mixed"), (7, "events", ("events", "event_mask"), "tokens")])
def test_other_conditions_denoise_each_target_with_the_pair_half_a_batch_away(row, other, swapped, table_context):
    """val/condition_gain's and val/event_gain's second loss: the same draws and targets, each
    pair's conditions (all, or its events only) replaced by the pair's `condition_shift` rows away."""
    model = make_model(conditioning=conditioning(row), table_context=table_context)
    batch = fake_batch(n_pairs=6, n_events=[5, 1, 3, 2, 4, 5])
    shift = condition_shift(6)
    moved = dict(batch)
    for key in swapped:
        moved[key] = batch[key].roll(shift, dims=0)

    def loss(pairs: dict, swap: str | None = None) -> float:
        return model.diffusion_loss(pairs, model.networks(ema=False), generator=torch.Generator().manual_seed(5),
                                    other_conditions=swap).item()

    assert shift == 3
    assert loss(batch, other) == pytest.approx(loss(moved), rel=1e-5)
    assert loss(batch, other) != loss(batch)  # an untrained model already reads its conditions
    if table_context == "tokens":
        return
    model = make_model(conditioning=conditioning(7))  # an adapter that outputs its bias only: no pair is seen
    for parameter in (model.adapter.token_mixing.weight, model.adapter.token_mixing.bias):
        torch.nn.init.zeros_(parameter)
    assert loss(batch, other) == loss(batch)


def test_validation_logs_the_gains_of_the_conditions_it_has():
    logged = {}
    for row in (1, 7):
        model = make_model(conditioning=conditioning(row))
        model.log = lambda name, value, **_: logged.setdefault(row, {}).__setitem__(name, float(value))
        model.validation_step(fake_batch(n_pairs=4), 0)
    assert set(logged[1]) == {"val/loss", "val/condition_gain"}
    assert set(logged[7]) == {"val/loss", "val/condition_gain", "val/event_gain"}
    assert all(value != 0.0 for value in logged[7].values())
    # one pass for all variants gives what separate passes on the same draws give
    separate = {other: model.diffusion_loss(fake_batch(n_pairs=4), model.networks(ema=True),
                                            generator=torch.Generator().manual_seed(0), other_conditions=other).item()
                for other in (None, "all", "events")}
    assert logged[7]["val/loss"] == pytest.approx(separate[None], rel=1e-5)
    assert logged[7]["val/condition_gain"] == pytest.approx(separate["all"] - separate[None], rel=1e-4)
    assert logged[7]["val/event_gain"] == pytest.approx(separate["events"] - separate[None], rel=1e-4)


# ------------------------------------------------------------------------------------- parts


def test_parts_load_from_the_autoencoder_and_clip_runs_checkpoints(tmp_path):
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    torch.manual_seed(5)
    vae = CXRAutoencoder(**model_arguments(), architecture=AUTOENCODER, optimizer=optimizer, latent_scale=0.7)
    clip = CXRCLIP(**model_arguments(), architecture=CLIP, optimizer=optimizer)
    torch.save({"state_dict": vae.state_dict()}, tmp_path / "vae.ckpt")
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.ckpt")
    model = make_model(autoencoder_checkpoint=str(tmp_path / "vae.ckpt"), clip_checkpoint=str(tmp_path / "clip.ckpt"),
                       ema_decay=0.999)
    assert model.latent_scale.item() == pytest.approx(0.7)
    for mine, theirs in ((model.autoencoder, vae.autoencoder), (model.image_encoder, clip.image_encoder),
                         (model.table_encoder, clip.table_encoder), (model.ema["table_encoder"], clip.table_encoder)):
        for name, value in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[name], value), name
    # An autoencoder of another size, or a file without one, is the user's error, naming the option.
    other = CXRAutoencoder(**model_arguments(), architecture={**AUTOENCODER, "latent_channels": 3}, optimizer=optimizer)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    with pytest.raises(UserInputError, match="model.autoencoder_checkpoint=.*does not fit"):
        make_model(autoencoder_checkpoint=str(tmp_path / "other.ckpt"))
    with pytest.raises(UserInputError, match="model.clip_checkpoint=.*no image encoder"):
        make_model(clip_checkpoint=str(tmp_path / "vae.ckpt"))


def test_the_papers_size_builds_with_its_parameter_count():
    vae = OmegaConf.load(CONF / "model" / "cxr_vae.yaml").model.architecture
    clip = OmegaConf.load(CONF / "model" / "cxr_clip.yaml").model.architecture
    with torch.device("meta"):  # no memory, no time: shapes only
        model = EHRXDiff(FINDINGS, event_dim=384, image_size=256, max_events=1024, autoencoder=vae, clip=clip,
                         optimizer=functools.partial(torch.optim.AdamW, lr=5e-5))
    assert (model.latent_channels, model.latent_size) == (3, 64)
    assert model.adapter.token_mixing.weight.shape == (1024, 1024 + 65 + 3)  # §4.5: 1,092 → 1,024 tokens
    assert model.adapter.vae_projection.weight.shape == (768, 64 * 64)
    assert model.adapter.output_projection is None
    assert model.unet.config.down_block_types == ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    assert model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.heads == 8
    counts = model.parameter_counts()
    assert counts["adapter"] == 1024 * 1092 + 1024 + 4096 * 768 + 768
    assert 505e6 < counts["unet"] < 506.5e6  # 505,780,355 with diffusers 0.42
    assert 599e6 < counts["trained"] < 601e6  # + ViT-B/32 85.9M, table encoder 3.8M (384-d events), adapter
    assert sum(p.numel() for p in model.ema.parameters()) == counts["trained"]


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name, null_share, size", [("ehrxdiff", 0.0, 256), ("ehrxdiff_wnull", 0.5, 256),
                                                    ("ehrxdiff_small", 0.0, 64), ("ehrxdiff_small_wnull", 0.5, 64)])
def test_the_configs_compose_with_their_parts_and_build(make_config, name, null_share, size):
    cfg = make_config(f"model={name}", "data=synthetic_cxr", "task=cxr_forecast", shrink=False)
    assert cfg.data.image_size == size and cfg.model.null_share == null_share
    assert cfg.pretrain.autoencoder.model._target_.endswith("CXRAutoencoder")
    assert cfg.pretrain.clip.model._target_.endswith("CXRCLIP")
    assert cfg.pretrain.autoencoder.data.image_size == cfg.pretrain.clip.data.image_size == size
    assert "architecture" not in cfg.model  # nothing of a part's own model leaks into EHRXDiff's
    optimizer = OmegaConf.to_container(cfg.model.optimizer)
    assert optimizer == {"_target_": "torch.optim.AdamW", "_partial_": True,
                         "lr": 5e-5 if size == 256 else optimizer["lr"]}
    arguments = {**model_arguments(), "image_size": size, "max_events": 1024}
    if size == 256:
        with torch.device("meta"):
            model = instantiate(cfg.model, **arguments)
        assert model.latent_size == 64 and cfg.data.batch_size == 128
    else:
        model = instantiate(cfg.model, **arguments)
        assert model.latent_size == 16 and model.sampling_steps == 50
        model.configure_optimizers()
    assert type(model) is EHRXDiff and model.sampling_seeds == (0, 1, 2)
