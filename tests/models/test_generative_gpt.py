"""The GPT-2 baseline's pieces: tokenizer, flattening, decoding, top-k/top-p, schedule."""

from __future__ import annotations

import functools
import json
import math

import lightning.pytorch as pl
import pytest
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from ehrlab.models.generative.gpt import GPTBaseline, build_code_tokenizer, filter_top_k_top_p

VOCABULARY = ["[PAD]", "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//250.00",
              "PROCEDURE//ICD//9//39.95"]  # fmt: skip


def small_gpt(**kwargs) -> GPTBaseline:
    settings = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32, "max_generation_length": 16}
    return GPTBaseline(VOCABULARY, **{**settings, **kwargs})


def example_batch() -> dict[str, torch.Tensor]:
    codes = torch.tensor(
        [
            [[1, 3, 0], [2, 0, 0], [4, 1, 2]],
            [[2, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[0, 4, 0], [3, 3, 0], [0, 0, 0]],  # a padding id inside a visit; a repeated code
        ]
    )
    return {"codes": codes, "n_visits": torch.tensor([3, 1, 2])}


def test_tokenizer_keeps_code_ids_and_appends_the_special_tokens():
    tokenizer = build_code_tokenizer(VOCABULARY)
    vocab = tokenizer.get_vocab()
    assert all(vocab[code] == i for i, code in enumerate(VOCABULARY))
    assert [vocab[t] for t in ["[BOS]", "[EOS]", "[VISIT]", "[UNK]"]] == [5, 6, 7, 8]
    # Codes stay atomic tokens although they hold '/' and '.'.
    assert tokenizer.encode("[BOS] DIAGNOSIS//ICD//9//428.0 [VISIT] DIAGNOSIS//ICD//9//250.00 [EOS]").ids == [5, 2, 7, 3, 6]
    assert tokenizer.encode("DIAGNOSIS//ICD//9//999.9").ids == [8]
    model = small_gpt()
    assert model.gpt.config.vocab_size == max(vocab.values()) + 1
    assert model.gpt.get_input_embeddings().weight.shape[0] == 9


def test_a_task_vocabulary_keeps_its_own_unknown_entry_as_the_tokenizer_s():
    vocabulary = ["[PAD]", "[UNK]", *VOCABULARY[1:]]
    tokenizer = build_code_tokenizer(vocabulary)
    assert [tokenizer.token_to_id(t) for t in ["[UNK]", "[BOS]", "[EOS]", "[VISIT]"]] == [1, 6, 7, 8]
    assert tokenizer.encode("DIAGNOSIS//ICD//9//999.9").ids == [1]
    model = GPTBaseline(vocabulary, n_layer=1, n_embd=16, n_head=2, n_positions=32, max_generation_length=16)
    assert model.gpt.config.vocab_size == 9 and 1 in model.never_sampled


@pytest.mark.parametrize(
    "vocabulary, problem",
    [(["[PAD]", "A B"], "whitespace"), (["[PAD]", "A", "A"], "twice"), (["[PAD]", "[VISIT]"], "special")],
)
def test_tokenizer_rejects_codes_that_cannot_be_atomic_tokens(vocabulary, problem):
    with pytest.raises(ValueError, match=problem):
        build_code_tokenizer(vocabulary)


def test_flattening_round_trips_through_the_tokenizer_to_the_same_visits(tmp_path):
    model = small_gpt()
    batch = example_batch()
    input_ids, attention_mask = model.flatten_batch(batch)
    assert input_ids[0].tolist() == [5, 1, 3, 7, 2, 7, 4, 1, 2, 6]
    assert attention_mask.sum(dim=1).tolist() == [10, 3, 6]
    assert torch.all(input_ids[~attention_mask] == 0)

    model.save_tokenizer(tmp_path / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
    for patient in range(3):
        ids = input_ids[patient][attention_mask[patient]].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False)
        assert tokenizer.encode(text).ids == ids
        body = text.removeprefix("[BOS] ").removesuffix(" [EOS]")
        decoded = [set(visit.split()) for visit in body.split(" [VISIT] ")]
        n_visits = int(batch["n_visits"][patient])
        expected = [{VOCABULARY[c] for c in visit.tolist() if c} for visit in batch["codes"][patient, :n_visits]]
        assert decoded == expected


def test_long_records_keep_their_latest_visits_that_fit():
    model = small_gpt(n_positions=7, max_generation_length=7)
    input_ids, attention_mask = model.flatten_batch(example_batch())
    # Patient 0 needs 10 tokens; [BOS] + visits 1 and 2 (2 + 4 tokens) fit in 7.
    assert input_ids[0].tolist() == [5, 2, 7, 4, 1, 2, 6]
    assert input_ids.shape[1] == 7


def test_decoding_counts_visit_separators_and_stops_at_eos():
    model = small_gpt()
    tokens = torch.tensor([[5, 1, 2, 7, 3, 6, 4, 0], [5, 7, 4, 7, 7, 2, 0, 0]])
    patient, visit, code = model.decode_tokens(tokens)
    assert list(zip(patient.tolist(), visit.tolist(), code.tolist())) == [
        (0, 0, 1), (0, 0, 2), (0, 1, 3), (1, 1, 4), (1, 3, 2)
    ]  # fmt: skip


def test_generation_renumbers_empty_visits_away():
    model = small_gpt()
    tokens = torch.tensor([[5, 7, 4, 7, 7, 2, 2, 6]])
    model.sample_tokens = lambda n, generator: tokens.expand(n, -1)
    table = model.generate(2, seed=0, progress=False)
    assert table.values.tolist() == [
        [0, 0, VOCABULARY[4]], [0, 1, VOCABULARY[2]], [1, 0, VOCABULARY[4]], [1, 1, VOCABULARY[2]]
    ]  # fmt: skip


def test_top_k_keeps_the_k_largest_logits():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 6.0]])
    kept = torch.isfinite(filter_top_k_top_p(logits, top_k=2, top_p=1.0))
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(filter_top_k_top_p(logits, top_k=0, top_p=1.0), logits)


def test_top_p_keeps_the_smallest_nucleus_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5], [0.9, 0.04, 0.03, 0.03]]))
    kept = torch.isfinite(filter_top_k_top_p(logits, top_k=0, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True], [True, False, False, False]]
    kept = torch.isfinite(filter_top_k_top_p(logits, top_k=0, top_p=0.81))
    assert kept[0].tolist() == [True, True, True, False]


def test_top_p_applies_to_the_renormalised_top_k():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # After top-3 the masses are 0.526, 0.316, 0.158: 0.526 + 0.316 < 0.9, so all three stay.
    kept = torch.isfinite(filter_top_k_top_p(logits, top_k=3, top_p=0.9))
    assert kept.tolist() == [[True, True, True, False]]


def test_loss_ignores_padding_positions():
    torch.manual_seed(0)
    model = small_gpt(dropout=0.0).eval()
    batch = example_batch()
    padded = {"codes": torch.cat([batch["codes"], torch.zeros(3, 2, 3, dtype=torch.long)], dim=1),
              "n_visits": batch["n_visits"]}  # fmt: skip
    assert torch.allclose(model.training_loss(batch), model.training_loss(padded), atol=1e-6)
    alone = model.training_loss({"codes": batch["codes"][1:2], "n_visits": batch["n_visits"][1:2]})
    assert not torch.allclose(alone, model.training_loss(batch))  # sanity: the loss sees the records


def test_cosine_schedule_warms_up_then_decays_to_zero():
    torch.manual_seed(0)
    model = small_gpt(
        warmup_ratio=0.25,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        scheduler=functools.partial(get_cosine_schedule_with_warmup),
    )
    learning_rates = []

    class RecordLearningRate(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            learning_rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(
        max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[RecordLearningRate()],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader([example_batch()] * 8, batch_size=None))
    expected = [1e-2 * s / 2 for s in range(2)] + [
        1e-2 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 8)
    ]
    assert learning_rates == pytest.approx(expected)


def boost_logits(model: GPTBaseline, boosts: dict[int, float]):
    """Add constants to some tokens' logits at every forward pass (a hook on the LM head)."""
    bias = torch.zeros(model.gpt.config.vocab_size)
    for token, value in boosts.items():
        bias[token] = value
    return model.gpt.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)


def test_generated_records_never_hold_unknown_even_where_the_model_favours_it():
    torch.manual_seed(0)
    vocabulary = ["[PAD]", "[UNK]", *VOCABULARY[1:]]
    model = GPTBaseline(vocabulary, n_layer=1, n_embd=16, n_head=2, n_positions=32, max_generation_length=16)
    boost_logits(model, {1: 8.0})  # [UNK] near-certain without the mask
    table = model.generate(32, seed=0, progress=False)
    assert len(table) > 0 and "[UNK]" not in set(table["code"])


def reference_tokens(model: GPTBaseline, n: int, seed: int) -> list[list[int]]:
    """The sampler without a cache: the whole prefix through the model at every step."""
    generator = torch.Generator().manual_seed(seed)
    records, done = [[model.bos_id] for _ in range(n)], [False] * n
    for _ in range(1, model.hparams.max_generation_length):
        live = [i for i in range(n) if not done[i]]
        with torch.no_grad():
            logits = model.gpt(input_ids=torch.tensor([records[i] for i in live])).logits[:, -1].float()
        logits[:, model.never_sampled] = float("-inf")
        logits = filter_top_k_top_p(logits, model.hparams.top_k, model.hparams.top_p)
        drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
        for i, token in zip(live, drawn.tolist()):
            records[i].append(token)
            done[i] = token == model.eos_id
        if all(done):
            break
    return records


def test_cached_sampler_matches_the_uncached_one_and_uses_only_the_public_cache_api(monkeypatch):
    from transformers import DynamicCache

    def internal(*args, **kwargs):
        raise AssertionError("the sampler called a cache-internal row selection")

    monkeypatch.setattr(DynamicCache, "batch_select_indices", internal)
    torch.manual_seed(0)
    model = small_gpt(max_generation_length=24).eval()
    with torch.no_grad():
        tokens = model.sample_tokens(12, torch.Generator().manual_seed(3))
    expected = reference_tokens(model, 12, seed=3)
    lengths = sorted(len(record) for record in expected)
    # Records end at varied lengths, so finished ones ride along and the cache is rebuilt.
    assert lengths[0] < lengths[len(lengths) // 2] < lengths[-1]
    for row, record in zip(tokens.tolist(), expected):
        assert row[: len(record)] == record and all(t == model.pad_id for t in row[len(record):])
