"""PromptEHR (seed 002 §2.4, F.3): prompts, corruption, statistics, structured sampling.

Training data are built by hand as PatientSequences (the prepared split layout) and padded
into batches with the DataModule's own ``pad_batch``; a task vocabulary (``[PAD]``, ``[UNK]``,
then codes) with planted structure: codes 2-4 occur together, 5-6 together, 7-13 alone with
falling prevalence.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from support import planted_records
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from ehrlab.checkpoints import load_model_weights
from ehrlab.data.datamodules import pad_batch
from ehrlab.data.sequences import PatientSequences
from ehrlab.models.generative.promptehr import (
    SAMPLE,
    PromptEHR,
    build_promptehr_tokenizer,
)

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
N_CODES = 12
VOCABULARY = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{100 + i}.{i}" for i in range(N_CODES)]


def planted_sequences(n_patients: int, seed: int) -> PatientSequences:
    rng = np.random.default_rng(seed)
    records = planted_records(n_patients, rng, first_code=2)
    return to_sequences(records, age=rng.uniform(0, 90, n_patients), gender=rng.integers(0, 3, n_patients))


def to_sequences(records: list[list[list[int]]], age, gender) -> PatientSequences:
    visits_per_patient = [len(r) for r in records]
    codes_per_visit = [len(v) for r in records for v in r]
    return PatientSequences(
        subject_id=np.arange(len(records), dtype=np.int64),
        visit_offsets=np.concatenate([[0], np.cumsum(visits_per_patient)]).astype(np.int64),
        code_offsets=np.concatenate([[0], np.cumsum(codes_per_visit)]).astype(np.int64),
        codes=np.asarray([c for r in records for v in r for c in v], dtype=np.int32),
        visit_days=np.zeros(sum(visits_per_patient)),
        age=np.asarray(age, dtype=np.float32),
        gender=np.asarray(gender, dtype=np.int64),
        label=np.full(len(records), -1, dtype=np.int64),
    )


def batches(sequences: PatientSequences, batch_size: int) -> list[dict[str, torch.Tensor]]:
    n = sequences.n_patients
    return [pad_batch(sequences, np.arange(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def small_model(**kwargs) -> PromptEHR:
    settings = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 4, "ffn_dim": 64,
                    "d_prompt_hidden": 8, "max_length": 64, "max_visits": 8, "max_codes": 16, "dropout": 0.0}  # fmt: skip
    return PromptEHR(VOCABULARY, **{**settings, **kwargs})


def tiny_trainer(**kwargs) -> pl.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, "max_epochs": 1, **kwargs}
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, **kwargs)


class TaskDataModule(pl.LightningDataModule):
    """The part of EHRDataModule a generator reads: ``task_data.splits`` and the loaders."""

    def __init__(self, splits: dict[str, PatientSequences], batch_size: int):
        super().__init__()
        self.task_data = SimpleNamespace(splits=splits)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(batches(self.task_data.splits["train"], self.batch_size), batch_size=None)

    def val_dataloader(self):
        return DataLoader(batches(self.task_data.splits["val"], self.batch_size), batch_size=None)


def mean_prompt_only_loss(model: PromptEHR, data) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(np.mean([model.prompt_only_loss(b).item() for b in data]))
    model.train()
    return loss


@pytest.fixture(scope="module")
def fitted():
    """A small PromptEHR trained briefly with a real Trainer on the planted training split."""
    torch.manual_seed(0)
    train, val = planted_sequences(192, seed=0), planted_sequences(32, seed=1)
    model = small_model(
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.01),
        scheduler=functools.partial(get_linear_schedule_with_warmup),
        warmup_steps=5,
    )
    data = batches(train, 32)
    before = mean_prompt_only_loss(model, data)
    tiny_trainer(max_epochs=15).fit(model, datamodule=TaskDataModule({"train": train, "val": val}, 32))
    model.loss_before_fit = before
    model.train_split = train
    return model, data


def test_tokenizer_keeps_code_ids_and_appends_the_specials():
    tokenizer = build_promptehr_tokenizer(VOCABULARY)
    vocab = tokenizer.get_vocab()
    assert all(vocab[code] == i for i, code in enumerate(VOCABULARY))
    assert [vocab[t] for t in ["[BOS]", "[EOS]", "<v>", "</v>", "[END]", "[MASK]"]] == list(range(14, 20))
    assert tokenizer.encode("<v> DIAGNOSIS//ICD//9//101.1 </v> [END]").ids == [16, 3, 17, 18]
    assert tokenizer.encode("DIAGNOSIS//ICD//9//999.9").ids == [1]
    model = small_model()
    assert model.bart.config.vocab_size == 20 and model.n_generatable == N_CODES
    # A vocabulary without [UNK] gets one after the specials.
    assert build_promptehr_tokenizer(VOCABULARY[:1] + VOCABULARY[2:]).token_to_id("[UNK]") == 19


def test_records_become_visit_delimited_token_rows_without_unknown_codes():
    model = small_model()
    codes = torch.tensor([[[2, 3, 0], [1, 5, 0], [9, 0, 0]], [[4, 0, 0], [7, 7, 0], [0, 0, 0]]])
    tokens = model.record_tokens({"codes": codes, "n_visits": torch.tensor([3, 1])})
    v, e, end = model.visit_start_id, model.visit_end_id, model.end_id
    assert tokens.tolist() == [[v, 2, 3, e, v, 5, e, v, 9, e, end], [v, 4, e, end] + [0] * 7]
    # Too long for max_length 8: the earliest visits that fit before [END] are kept.
    short = small_model(max_length=8).record_tokens({"codes": codes, "n_visits": torch.tensor([3, 1])})
    assert short[0].tolist() == [v, 2, 3, e, v, 5, e, end]


def test_prompts_change_the_encoder_output_when_age_or_sex_change():
    torch.manual_seed(0)
    model = small_model().eval()
    body = model.empty_bodies(4)

    def encoded(age, sex):
        embeddings, mask = model.encoder_inputs(body, torch.tensor(age), torch.tensor(sex))
        return model.bart.get_encoder()(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state

    with torch.no_grad():
        base = encoded([30.0, 30.0, 30.0, -1.0], [0, 0, 1, 2])
        older = encoded([70.0, 30.0, 30.0, 70.0], [0, 0, 1, 2])
        other_sex = encoded([30.0, 30.0, 30.0, -1.0], [1, 2, 0, 2])
    assert not torch.allclose(base[0], older[0], atol=1e-4)  # age moves every position
    assert torch.allclose(base[1], older[1])  # same demographics, same output
    assert not torch.allclose(base[3], older[3], atol=1e-4)  # unknown age differs from 70
    assert not torch.allclose(base[:3], other_sex[:3], atol=1e-4)


def split_visits(tokens: list[int], visit_end: int) -> list[list[int]]:
    """The tokens of each visit (up to its end delimiter), padding left out."""
    visits, current = [], []
    for token in tokens:
        if token == visit_end:
            visits.append(current)
            current = []
        elif token:
            current.append(token)
    return visits


def test_corruption_masks_spans_and_deletes_codes_but_never_touches_delimiters_or_padding():
    model = small_model(mask_ratio=0.5, delete_prob=0.3)
    v, e = model.visit_start_id, model.visit_end_id
    rows = [[v, *range(2, 14), e, v, 2, 3, 4, e], [v, 5, 6, e] + [0] * 15]
    body = torch.tensor(rows * 50)
    corrupted = model.corrupt_records(body, torch.Generator().manual_seed(0))
    n_masks = n_hidden = 0
    for before, after in zip(body.tolist(), corrupted.tolist()):
        length = len([t for t in after if t])
        assert all(after[:length]) and not any(after[length:])  # padding only at the end
        # Delimiters stay in place relative to each other; within each visit, the kept
        # codes are in their order.
        assert [t for t in after if t in (v, e)] == [t for t in before if t in (v, e)]
        for visit_before, visit_after in zip(split_visits(before, e), split_visits(after, e)):
            kept = [t for t in visit_after if t != model.mask_id]
            remaining = iter(visit_before)
            assert all(code in remaining for code in kept)  # a subsequence
            n_masks += visit_after.count(model.mask_id)
            n_hidden += len(visit_before) - len(kept)
    assert n_masks > 20 and n_hidden > n_masks  # spans hide more codes than masks they leave
    # Masking alone: each span (merged with any span it touches) leaves one [MASK].
    masking = small_model(mask_ratio=0.5, delete_prob=0.0).corrupt_records(body, torch.Generator().manual_seed(2))
    assert (masking == model.mask_id).any()
    assert not ((masking[:, 1:] == model.mask_id) & (masking[:, :-1] == model.mask_id)).any()
    # Deletion alone: no [MASK], codes removed, delimiters intact.
    deleting = small_model(mask_ratio=0.0, delete_prob=0.5).corrupt_records(body, torch.Generator().manual_seed(1))
    assert model.mask_id not in deleting and (deleting != 0).sum() < (body != 0).sum()
    assert ((deleting == v).sum(dim=1) == (body == v).sum(dim=1)).all()
    # Nothing to corrupt: the rows come back as they were.
    untouched = small_model(mask_ratio=0.0, delete_prob=0.0).corrupt_records(body)
    assert torch.equal(untouched, body)


def test_statistics_come_from_the_training_split_only(fitted):
    model, _ = fitted
    reference = small_model()
    reference.fit_statistics(model.train_split)
    for name in ["log_frequency", "first_code_counts", "visit_count_counts", "visit_length_counts",
                 "demographic_counts"]:  # fmt: skip
        assert torch.equal(getattr(model, name), getattr(reference, name)), name
    train = model.train_split
    assert model.demographic_counts.sum() == train.n_patients
    assert model.first_code_counts.sum() == train.n_visits
    counts = np.bincount(train.codes, minlength=len(VOCABULARY))
    frequent, rare = int(counts.argmax()), int(np.flatnonzero(counts)[counts[counts > 0].argmin()])
    assert model.log_frequency[frequent] > model.log_frequency[rare]
    assert model.log_frequency[len(VOCABULARY):].eq(0).all()  # specials are neutral
    assert model.visit_count_counts[4:].sum() == 0  # planted records have 1-3 visits


def test_statistics_refuse_codes_outside_the_vocabulary():
    sequences = to_sequences([[[2, 99]]], age=[40.0], gender=[0])
    with pytest.raises(ValueError, match="outside"):
        small_model().fit_statistics(sequences)
    with pytest.raises(ValueError, match="no data statistics"):
        small_model().generate(3, seed=0, progress=False)


def test_short_fit_lowers_the_prompt_only_loss(fitted):
    model, data = fitted
    assert mean_prompt_only_loss(model, data) < 0.7 * model.loss_before_fit
    # Validation logged the prompt-only cross-entropy and its perplexity (F.3's stopping metric).
    metrics = model.trainer.callback_metrics
    assert torch.isclose(metrics["val/perplexity"], torch.exp(metrics["val/loss"]), rtol=1e-3)


def test_training_with_the_prompts_alone_is_generation_s_input():
    torch.manual_seed(0)
    model = small_model(prompt_only_share=1.0).eval()
    batch = batches(planted_sequences(16, seed=2), 16)[0]
    with torch.no_grad():
        assert torch.allclose(model.training_loss(batch), model.prompt_only_loss(batch))
        # With the record itself in the encoder (no corruption) the input differs.
        copying = small_model(prompt_only_share=0.0, mask_ratio=0.0, delete_prob=0.0).eval()
        copying.load_state_dict(model.state_dict())
        assert not torch.allclose(copying.training_loss(batch), model.prompt_only_loss(batch))


def test_linear_schedule_warms_up_over_at_most_a_tenth_of_the_run():
    model = small_model(
        warmup_steps=1000,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        scheduler=functools.partial(get_linear_schedule_with_warmup),
    )
    learning_rates = []

    class RecordLearningRate(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            learning_rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    data = batches(planted_sequences(16, seed=3), 8)
    tiny_trainer(max_steps=20, callbacks=[RecordLearningRate()]).fit(model, DataLoader(data * 10, batch_size=None))
    # 20 steps: warm-up over 2 (not 1,000), then linear decay to 0.
    expected = [0.0, 5e-3] + [1e-2 * (20 - s) / 18 for s in range(2, 20)]
    assert learning_rates == pytest.approx(expected)


def test_generate_emits_vocabulary_codes_with_the_sampled_visit_structure(fitted):
    model, _ = fitted
    table = model.generate(60, seed=1, batch_size=32, progress=False)
    assert list(table.columns) == ["subject_id", "visit_id", "code"] and len(table) > 0
    assert set(table["code"]) <= set(VOCABULARY[2:])  # no [PAD], [UNK] or special
    assert not table.duplicated().any()
    visits = table.groupby("subject_id")["visit_id"].nunique()
    assert visits.between(1, 3).all()  # the training histogram's support
    lengths = table.groupby(["subject_id", "visit_id"]).size()
    support = torch.nonzero(model.visit_length_counts).flatten().tolist()
    assert set(lengths) <= set(support)

    # The table holds exactly the drawn structure: visit counts and lengths, first codes.
    structure = model.sample_structure(20, torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        patient, visit, code = model.sample_codes(20, torch.Generator().manual_seed(5))
    model.train()
    drawn = pd.DataFrame({"patient": patient, "visit": visit, "code": code})
    per_visit = drawn.groupby(["patient", "visit"])["code"]
    assert (per_visit.nunique() == per_visit.size()).all()  # no repeats within a visit
    lengths = structure["lengths"]
    expected = {(p, v): int(lengths[p, v]) for p, v in torch.nonzero(lengths).tolist()}
    assert per_visit.size().to_dict() == expected
    assert per_visit.first().to_dict() == {(p, v): int(structure["first_codes"][p, v]) for p, v in expected}


def test_planted_co_occurrence_is_reproduced(fitted):
    model, _ = fitted
    table = model.generate(300, seed=3, progress=False)
    visits = table.assign(present=1).pivot_table(
        index=["subject_id", "visit_id"], columns="code", values="present", fill_value=0
    )
    # Codes 2-4 always occur together: a visit holding code 2 far more often holds code 3.
    holds_first = visits[VOCABULARY[2]] == 1
    assert 20 < holds_first.sum() < len(visits) - 20
    second = visits[VOCABULARY[3]]
    assert second[holds_first].mean() - second[~holds_first].mean() > 0.4


def test_first_codes_follow_the_age_and_sex_of_the_patient_and_structures_fit_the_context():
    # Children (ages 0-10) start every visit with code 2, the old (80-90) with code 3.
    records = [[[2, 5, 6, 7, 8, 9, 10, 11]] * 3] * 20 + [[[3, 5, 6, 7, 8, 9, 10, 11]] * 3] * 20
    sequences = to_sequences(records, age=[4.0] * 20 + [85.0] * 20, gender=[0, 1] * 20)
    model = small_model(max_length=12)
    model.fit_statistics(sequences)
    structure = model.sample_structure(200, torch.Generator().manual_seed(0))
    age, lengths, first = structure["age"], structure["lengths"], structure["first_codes"]
    assert set(age.floor().tolist()) <= {4.0, 85.0} and (structure["sex"] < 2).all()
    assert (first[age < 10][:, 0] == 2).all() and (first[age > 80][:, 0] == 3).all()
    # Three visits of 8 codes need 31 tokens; max_length 12 keeps the first visit (8 + 2 + [END]).
    assert (lengths[:, 0] == 8).all() and (lengths[:, 1:] == 0).all()
    plan, _ = model.generation_plan(lengths, first)
    assert plan.shape[1] <= model.hparams.max_length


def test_generate_is_deterministic_for_a_seed_and_leaves_global_rng_alone(fitted):
    model, _ = fitted
    torch.manual_seed(123)
    first = model.generate(24, seed=7, batch_size=8, progress=False)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    again = model.generate(24, seed=7, batch_size=8, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert torch.equal(after_first, torch.rand(1))
    assert not first.equals(model.generate(24, seed=8, batch_size=8, progress=False))
    assert len(model.generate(0, seed=0, progress=False)) == 0


def test_frequency_guidance_raises_the_share_of_frequent_codes(fitted):
    model, _ = fitted
    counts = np.bincount(model.train_split.codes, minlength=len(VOCABULARY))
    frequent = {VOCABULARY[i] for i in np.argsort(counts)[::-1][:4]}
    shares = {}
    try:
        for weight in (0.0, 5.0):
            model.hparams.frequency_guidance = weight
            table = model.generate(150, seed=4, progress=False)
            later = table.groupby(["subject_id", "visit_id"]).cumcount() > 0  # the decoder's codes
            shares[weight] = table.loc[later, "code"].isin(frequent).mean()
    finally:
        model.hparams.frequency_guidance = 2.0
    assert shares[5.0] > shares[0.0] + 0.05


def test_checkpoint_round_trip_keeps_the_statistics_and_generates_the_same(fitted, tmp_path):
    model, data = fitted
    model.train()
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(model, train_dataloaders=DataLoader(data[:1], batch_size=None))
    path = tmp_path / "promptehr.ckpt"
    trainer.save_checkpoint(path)
    fresh = small_model()  # no statistics until the checkpoint brings them
    load_model_weights(fresh, path)
    assert bool(fresh.statistics_fitted)
    pd.testing.assert_frame_equal(
        model.generate(30, seed=11, batch_size=16, progress=False),
        fresh.generate(30, seed=11, batch_size=16, progress=False),
    )


def reference_tokens(model: PromptEHR, n: int, seed: int) -> torch.Tensor:
    """The sampler without a cache: every step runs the whole prefix of every patient."""
    generator = torch.Generator().manual_seed(seed)
    structure = model.sample_structure(n, generator)
    tokens, _ = model.generation_plan(structure["lengths"], structure["first_codes"])
    embeddings, mask = model.encoder_inputs(model.empty_bodies(n), structure["age"], structure["sex"])
    with torch.no_grad():
        encoder_hidden = model.bart.get_encoder()(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        for step in range(tokens.shape[1] - 1):
            rows = torch.nonzero(tokens[:, step + 1] == SAMPLE).squeeze(1)
            if len(rows) == 0:
                continue
            prefix = tokens[rows, : step + 1]
            logits = model.bart(encoder_outputs=(encoder_hidden[rows],), attention_mask=mask[rows],
                                decoder_input_ids=prefix).logits[:, -1]  # fmt: skip
            used = torch.zeros(len(rows), model.n_tokens, dtype=torch.bool)
            for i, row in enumerate(prefix.tolist()):
                visit = row[len(row) - row[::-1].index(model.visit_start_id):]
                used[i, visit] = True
            tokens[rows, step + 1] = model.guided_sample(logits, used, generator)
    return tokens


def test_cached_sampler_matches_the_uncached_one(fitted):
    model, _ = fitted
    model.eval()
    with torch.no_grad():
        tokens, _ = model.sample_tokens(16, torch.Generator().manual_seed(3))
        expected = reference_tokens(model, 16, seed=3)
    model.train()
    assert torch.equal(tokens, expected)
    assert (expected == SAMPLE).sum() == 0


def _compose(tmp_path: Path, name: str):
    shutil.copytree(CONF_MODEL, tmp_path / "model", dirs_exist_ok=True)
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: promptehr\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}"])


def test_configs_compose_to_the_f3_size_and_a_small_one(tmp_path):
    paper = _compose(tmp_path, "promptehr")
    cfg = paper.model
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.attention_heads) == (768, 6, 6, 12)
    assert (cfg.max_length, cfg.top_p, cfg.top_k, cfg.frequency_guidance, cfg.warmup_steps) == (512, 0.95, 0, 2.0, 1000)
    assert cfg.optimizer.weight_decay == 0.01 and paper.data.batch_size == 16 and paper.epochs == 20
    assert cfg.scheduler._target_ == "transformers.get_linear_schedule_with_warmup"
    small = _compose(tmp_path, "promptehr_small")
    model = instantiate(small.model, vocabulary=VOCABULARY)
    assert isinstance(model, PromptEHR) and model.bart.config.d_model == 128
    assert small.model.max_length == 512 and small.model.optimizer._target_ == "torch.optim.AdamW"
    assert model.monitor == "val/loss" and not model.flat
    assert model.optimizer_factory.func is torch.optim.AdamW
