"""PromptEHR: a demographic-prompted BART that writes visit sequences (seed 002 §2.4, F.3).

A Hugging Face ``BartForConditionalGeneration`` built from a ``BartConfig`` (never
downloaded) learns ``p(record | age, sex)`` (F.3 Eq. 1). The encoder reads two prompt vectors
(F.3 Eq. 2) followed by a corrupted copy of the record; the decoder writes the whole record.

Tokens (F.3 "Hierarchical Tokenization"). A record is ``<v> codes of visit 0 </v> <v> codes
of visit 1 </v> ... [END]``. Code tokens reuse our vocabulary ids (``[PAD]`` = 0, a task
vocabulary's ``[UNK]`` = 1, code id = token id); the specials follow the codes: ``[BOS]``
(the decoder's start token and the encoder input's first token), ``[EOS]`` (the encoder
input's last token), ``<v>``, ``</v>``, ``[END]`` (end of record), ``[MASK]`` (a masked span),
and ``[UNK]`` when the vocabulary lacks one. With ``[PAD]`` and ``[UNK]`` these are F.3's
seven specials plus ``[MASK]``, which F.3's mask infilling needs although its count of seven
leaves it out. ``build_promptehr_tokenizer`` writes the same ids as a WordLevel tokenizer.
``[PAD]``, ``[UNK]`` and every special are never sampled as codes.

Demographic prompts (F.3 Eq. 2, the reparameterised prompts of PromptEHR): age (float years,
``batch["age"]``) goes through ``NumericalPrompt`` (a learned weight and bias per hidden unit
of width ``d_prompt_hidden`` = 128 as in the reference, then a bias-free projection to
``d_model``); sex (``batch["gender"]``: 0 F, 1 M, 2 unknown) through ``CategoricalPrompt``
(an embedding plus a feature bias, projected to ``d_model``). The two vectors are prepended
to the encoder's token embeddings (``inputs_embeds``).

Training objective: the token cross-entropy of the decoder's teacher-forced reconstruction of
the whole record, padding ignored. The encoder input is a corrupted copy (F.3 "Data
Augmentation": mask infilling and token deletion on, token replacement 0): see
``corrupt_records``. ``val/loss`` is the cross-entropy with the prompts alone in the encoder
(what generation conditions on), so F.3's early-stopping metric, validation perplexity, is
``exp(val/loss)`` (also logged as ``val/perplexity``).

Data statistics (F.3 "Structure Sampling", build_frequency_prior, build_first_code_prior) are
computed from the training split only (``fit_statistics``, called at ``setup("fit")``) and
kept as persistent buffers of sizes fixed at construction, so a checkpoint generates without
the data. They are aggregates (counts), never a patient's record.

Generation: demographics, visit count and each visit's length are drawn from those
histograms; the first code of each visit from the first-code prior of the patient's age bin
and sex; every further code by the decoder (key/value cache, all patients of a batch stepping
together) from ``softmax((logits + w · log-frequency prior) / T)`` within the top-p nucleus,
codes already in the visit masked; a visit closes after its drawn length. All draws come from
the ``torch.Generator`` passed in.

Decisions where F.3 is silent or lost its numbers:

- Learning rate 1e-5 (AdamW, weight decay 0.01): the default of the PyHealth PromptEHR port by
  the seed's authors (the number is lost from F.3's table). That port also sets dropout 0.3
  and label smoothing 0.1 on the training loss; conf/model/promptehr.yaml keeps both. The
  validation loss is never smoothed, so it stays a true perplexity.
- Warm-up: F.3's 1,000 steps, but at most a tenth of the run's steps, so a short run reaches
  its peak rate (F.3's run has ≈57,000 steps and is unaffected).
- Corruption applies to code tokens only; the visit delimiters stay, so the encoder always
  sees the visit structure. Mask infilling as in BART: span starts with probability
  ``mask_ratio / poisson_lambda`` per code, span lengths ~ Poisson(``poisson_lambda`` = 3)
  (at least 1, cut at the visit's end); each span becomes one ``[MASK]``; ``mask_ratio`` =
  0.3 is BART's. Token deletion drops each remaining code with ``delete_prob`` = 0.1.
- The empty-record marker: generation's encoder input is the prompts then ``[BOS] [MASK]
  [EOS]`` (the whole record as one masked span). A share ``prompt_only_share`` = 0.5 of the
  training patients (drawn per patient in each batch) gets that input instead of a corrupted
  copy, so generation is in distribution; the other half learns the denoising task F.3
  describes. (The PyHealth port gives the encoder the uncorrupted record in training and a
  lone ``[PAD]`` at generation, which the decoder never saw.)
- The first-code prior applies to every visit, as §2.4 reads ("the first diagnosis code for
  each patient visit"), and is counted over the first code of every training visit (the
  source's order puts the primary diagnosis first), so the prior matches the position it
  fills. Bins: ages 0-10, ..., 80-90 (90 in the last), plus a tenth bin for an unknown age;
  sexes F, M, unknown. An empty (bin, sex) cell falls back to the pooled first-code counts.
- Age: the numerical prompt reads ``age / 90`` (years over the dataset's cap, so inputs lie in
  [0, 1]); an unknown age (-1) replaces the hidden vector by a learned "missing" vector.
  Demographics are drawn from the joint histogram of whole years (0..90, plus unknown) × sex;
  a drawn year gets a uniform fraction added (age 90 stays 90), as real ages are fractional.
- Visit counts are capped at ``max_visits`` (64) and visit lengths at ``max_codes`` (64) in the
  histograms (longer ones count at the cap); a visit is never longer than the number of
  codes that can be generated (no repeats within a visit).
- Context: a record is cut to ``max_length`` = 512 decoder tokens (F.3), keeping its earliest
  visits that fit (and the first visit's first codes if it alone is longer); a generated
  structure is cut the same way. The encoder's position table has room for the two prompts
  and the ``[BOS]``/``[EOS]`` around the record.
- ``[UNK]`` codes (held-out codes the training split lacks) are dropped from the records the
  model reads and writes, as the evaluation drops them (PatientSequences.to_long_table).
- Decoder start: ``[BOS]``. (F.3 names it by an id, 2, of a token layout the text lost; BART's
  own convention starts with its end token.)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    DynamicCache,
    EncoderDecoderCache,
)

from ehrlab.data.schema import UNKNOWN_CODE
from ehrlab.models.generative.base import Generator
from ehrlab.models.generative.gpt import filter_top_k_top_p

BOS, EOS, VISIT_START, VISIT_END, END, MASK, UNK = "[BOS]", "[EOS]", "<v>", "</v>", "[END]", "[MASK]", UNKNOWN_CODE
SPECIALS = (BOS, EOS, VISIT_START, VISIT_END, END, MASK)
#: age bins of the first-code prior: 0-10, ..., 80-90 (F.3), then one for an unknown age
N_AGE_BINS = 10
N_SEXES = 3  # 0 F, 1 M, 2 unknown (the batch contract)
MAX_AGE = 90  # ages are clipped at 90 (the batch contract)
#: rows of the demographics histogram: unknown age, then whole years 0..90
N_AGE_ROWS = MAX_AGE + 2
# transformers 5 renamed the forward's past_key_values to cache (see gpt.py).
CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(BartForConditionalGeneration.forward).parameters else "past_key_values"
)
IGNORE = -100
SAMPLE = -1  # a position of the generation plan that the decoder fills


def build_promptehr_tokenizer(vocabulary: list[str]) -> Tokenizer:
    """WordLevel tokenizer, one atomic token per code with id = vocabulary id, then the
    specials ``[BOS] [EOS] <v> </v> [END] [MASK]`` (and ``[UNK]`` unless the vocabulary holds
    it, as a task's does at id 1). Split on whitespace only."""
    bad = [code for code in vocabulary if not code or any(ch.isspace() for ch in code)]
    if bad:
        raise ValueError(f"codes must be non-empty and free of whitespace to be atomic tokens: {bad[:5]}")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("the vocabulary holds a code twice")
    specials = [*SPECIALS] + ([] if UNK in vocabulary else [UNK])
    clashing = sorted(set(specials) & set(vocabulary))
    if clashing:
        raise ValueError(f"the vocabulary already holds the special tokens {clashing}")
    token_ids = {token: token_id for token_id, token in enumerate([*vocabulary, *specials])}
    tokenizer = Tokenizer(models.WordLevel(token_ids, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([vocabulary[0], *SPECIALS, UNK])
    return tokenizer


class NumericalPrompt(nn.Module):
    """F.3 Eq. 2: ``proj(w ⊙ x + b)``, a learned weight and bias per hidden unit (the
    reparameterisation), then a bias-free projection to ``d_model``. ``x`` = value / scale;
    a negative value (unknown) uses a learned ``missing`` hidden vector instead."""

    def __init__(self, d_hidden: int, d_model: int, scale: float):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, d_hidden))[0])
        self.bias = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, d_hidden))[0])
        self.missing = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, d_hidden))[0])
        self.proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        """[B] float -> [B, d_model]."""
        hidden = self.weight * (value.clamp(min=0) / self.scale)[:, None] + self.bias
        hidden = torch.where((value >= 0)[:, None], hidden, self.missing)
        return self.proj(hidden)


class CategoricalPrompt(nn.Module):
    """F.3: an embedding of the category plus a feature bias, projected to ``d_model``."""

    def __init__(self, n_categories: int, d_hidden: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(n_categories, d_hidden)
        self.bias = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, d_hidden))[0])
        self.proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """[B] int -> [B, d_model]."""
        return self.proj(self.embedding(category) + self.bias)


def compact_left(tokens: torch.Tensor, keep: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept tokens of each row moved left in order (one stable sort per row), the rest
    ``pad_id``; also the row lengths. The width is the longest row (at least 1)."""
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)
    lengths = keep.sum(dim=1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    compact = torch.gather(tokens, 1, order)[:, :width]
    inside = torch.arange(width, device=tokens.device)[None, :] < lengths[:, None]
    return compact.masked_fill(~inside, pad_id), lengths


class PromptEHR(Generator):
    """PromptEHR (seed 002 §2.4, F.3); see the module docstring. Defaults are a CPU size;
    conf/model/promptehr.yaml is F.3's (BART-base layout: d_model 768, 6 + 6 layers, 12 heads)."""

    def __init__(
        self,
        vocabulary: list[str],
        d_model: int = 128,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        attention_heads: int = 4,
        ffn_dim: int = 512,
        d_prompt_hidden: int = 32,
        max_length: int = 512,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
        mask_ratio: float = 0.3,
        poisson_lambda: float = 3.0,
        delete_prob: float = 0.1,
        prompt_only_share: float = 0.5,
        max_visits: int = 64,
        max_codes: int = 64,
        frequency_guidance: float = 2.0,
        frequency_epsilon: float = 1e-10,
        temperature: float = 1.0,
        top_p: float = 0.95,
        top_k: int = 0,
        warmup_steps: int = 1000,
        optimizer: Any = None,
        scheduler: Any = None,
        early_stopping_patience: int | None = None,
    ):
        """``scheduler`` is a partial called as ``scheduler(optimizer, num_warmup_steps=...,
        num_training_steps=...)`` (``transformers.get_linear_schedule_with_warmup``), stepped
        every batch. The training batch (F.3: 16) is ``data.batch_size``."""
        super().__init__(vocabulary, optimizer=optimizer, early_stopping_patience=early_stopping_patience)
        self.save_hyperparameters(ignore=["vocabulary", "optimizer", "scheduler"])
        for name, value in [("mask_ratio", mask_ratio), ("delete_prob", delete_prob),
                            ("prompt_only_share", prompt_only_share), ("label_smoothing", label_smoothing)]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if poisson_lambda <= 0 or temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError("need poisson_lambda > 0, temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        if max_length < 4 or max_visits < 1 or max_codes < 1:
            raise ValueError("need max_length >= 4, max_visits >= 1 and max_codes >= 1")
        self.scheduler_factory = scheduler
        self.tokenizer = build_promptehr_tokenizer(self.vocabulary)
        token = self.tokenizer.token_to_id
        self.pad_id, self.unk_id = token(self.vocabulary[0]), token(UNK)
        self.bos_id, self.eos_id, self.mask_id, self.end_id = token(BOS), token(EOS), token(MASK), token(END)
        self.visit_start_id, self.visit_end_id = token(VISIT_START), token(VISIT_END)
        self.n_tokens = max(self.tokenizer.get_vocab().values()) + 1
        self.n_prompts = 2
        # Decoder: max_length tokens; encoder: the prompts, [BOS], the record body, [EOS].
        config = BartConfig(
            vocab_size=self.n_tokens,
            max_position_embeddings=max_length + self.n_prompts + 1,
            d_model=d_model,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            encoder_attention_heads=attention_heads,
            decoder_attention_heads=attention_heads,
            encoder_ffn_dim=ffn_dim,
            decoder_ffn_dim=ffn_dim,
            dropout=dropout,
            attention_dropout=dropout,
            activation_dropout=dropout,
            pad_token_id=self.pad_id,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            decoder_start_token_id=self.bos_id,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
        )
        self.bart = BartForConditionalGeneration(config)
        self.age_prompt = NumericalPrompt(d_prompt_hidden, d_model, scale=float(MAX_AGE))
        self.sex_prompt = CategoricalPrompt(N_SEXES, d_prompt_hidden, d_model)

        # Tokens that are codes the model may write (not [PAD], [UNK] or a special).
        generatable = torch.zeros(self.n_tokens, dtype=torch.bool)
        generatable[1 : self.vocab_size] = True
        generatable[self.unk_id] = False
        self.register_buffer("generatable", generatable, persistent=False)
        self.n_generatable = int(generatable.sum())
        if self.n_generatable == 0:
            raise ValueError("the vocabulary holds no code to generate")

        # Data statistics (persistent: a checkpoint generates without the data).
        self.register_buffer("statistics_fitted", torch.tensor(False))
        self.register_buffer("log_frequency", torch.zeros(self.n_tokens))
        self.register_buffer("first_code_counts", torch.zeros(N_AGE_BINS, N_SEXES, self.vocab_size))
        self.register_buffer("visit_count_counts", torch.zeros(max_visits + 1))
        self.register_buffer("visit_length_counts", torch.zeros(max_codes + 1))
        self.register_buffer("demographic_counts", torch.zeros(N_AGE_ROWS, N_SEXES))

    def save_tokenizer(self, path: str | Path) -> None:
        """Write the tokenizer as a Hugging Face ``tokenizer.json``."""
        self.tokenizer.save(str(path))

    # -- data statistics (F.3 Structure Sampling, build_frequency_prior, build_first_code_prior) --

    @staticmethod
    def age_bins(age):
        """Bin of the first-code prior (numpy or torch ages): 0-10 -> 0, ..., 80-90 -> 8 (90
        included), unknown (negative) -> 9."""
        if isinstance(age, torch.Tensor):
            return torch.where(age < 0, N_AGE_BINS - 1, (age.clamp(0, MAX_AGE) // 10).clamp(max=8)).long()
        return np.where(age < 0, N_AGE_BINS - 1, np.minimum(np.clip(age, 0, MAX_AGE) // 10, 8)).astype(np.int64)

    def fit_statistics(self, sequences) -> None:
        """Count the training split's aggregates into the buffers (``sequences``: a
        PatientSequences of the training split; never a validation or test one)."""
        codes = np.asarray(sequences.codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"the sequences hold code ids outside the model's vocabulary of {self.vocab_size}")
        vocab_size = self.vocab_size
        counts = np.bincount(codes, minlength=vocab_size).astype(np.float64)
        counts[[self.pad_id, *([self.unk_id] if self.unk_id < vocab_size else [])]] = 0
        frequency = counts / max(counts.sum(), 1.0)
        log_frequency = np.zeros(self.n_tokens)
        log_frequency[:vocab_size] = np.log(frequency + self.hparams.frequency_epsilon)
        log_frequency[~self.generatable.cpu().numpy()] = 0.0  # specials, [PAD], [UNK]: neutral

        visits_per_patient = sequences.visits_per_patient()
        codes_per_visit = sequences.codes_per_visit()
        age = np.asarray(sequences.age, dtype=np.float64)
        sex = np.clip(np.asarray(sequences.gender, dtype=np.int64), 0, N_SEXES - 1)
        patient_of_visit = np.repeat(np.arange(sequences.n_patients), visits_per_patient)
        has_codes = codes_per_visit > 0
        first_codes = codes[sequences.code_offsets[:-1][has_codes]]
        cell = (self.age_bins(age) * N_SEXES + sex)[patient_of_visit[has_codes]]
        first = np.bincount(cell * vocab_size + first_codes, minlength=N_AGE_BINS * N_SEXES * vocab_size)
        first = first.reshape(N_AGE_BINS, N_SEXES, vocab_size).astype(np.float64)
        first[:, :, self.pad_id] = 0
        if self.unk_id < vocab_size:
            first[:, :, self.unk_id] = 0

        hp = self.hparams
        visit_counts = np.bincount(np.minimum(visits_per_patient, hp.max_visits), minlength=hp.max_visits + 1)
        visit_lengths = np.bincount(np.minimum(codes_per_visit, hp.max_codes), minlength=hp.max_codes + 1)
        age_row = np.where(age < 0, 0, np.floor(np.clip(age, 0, MAX_AGE)).astype(np.int64) + 1)
        demographics = np.bincount(age_row * N_SEXES + sex, minlength=N_AGE_ROWS * N_SEXES)

        for buffer, value in [
            (self.log_frequency, log_frequency),
            (self.first_code_counts, first),
            (self.visit_count_counts, visit_counts),
            (self.visit_length_counts, visit_lengths),
            (self.demographic_counts, demographics.reshape(N_AGE_ROWS, N_SEXES)),
        ]:
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype))
        self.visit_length_counts[0] = 0  # an empty visit is never drawn
        self.visit_count_counts[0] = 0
        self.statistics_fitted.fill_(True)

    def setup(self, stage: str) -> None:
        """Before training: the statistics of the training split of the prepared task."""
        task_data = getattr(getattr(self.trainer, "datamodule", None), "task_data", None)
        if stage == "fit" and task_data is not None:
            self.fit_statistics(task_data.splits["train"])

    # -- batch -> token ids -----------------------------------------------------------------

    def record_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each patient's ``<v> codes </v> ... [END]`` [B, L] (right-padded with ``[PAD]``),
        cut to ``max_length`` tokens keeping the earliest visits; ``[UNK]`` codes dropped."""
        codes, n_visits = batch["codes"], batch["n_visits"]
        n_visit_slots = codes.shape[1]
        max_length = self.hparams.max_length
        visit_index = torch.arange(n_visit_slots, device=codes.device)[None, :]
        is_real = visit_index < n_visits[:, None]
        is_code = (codes != self.pad_id) & (codes != self.unk_id) & is_real[..., None]
        # A visit alone never needs more than max_length - 3 codes (<v>, </v>, [END]).
        is_code &= torch.cumsum(is_code.long(), dim=2) <= max_length - 3
        # Keep the earliest visits whose tokens (codes + 2 delimiters) fit before [END].
        visit_tokens = (is_code.sum(dim=2) + 2) * is_real
        keep_visit = is_real & ((torch.cumsum(visit_tokens, dim=1) <= max_length - 1) | (visit_index == 0))
        is_code &= keep_visit[..., None]
        start = torch.full_like(codes[..., :1], self.visit_start_id)
        end = torch.full_like(codes[..., :1], self.visit_end_id)
        tokens = torch.cat([start, codes, end], dim=2)
        keep = torch.cat([keep_visit[..., None], is_code, keep_visit[..., None]], dim=2)
        flat, lengths = compact_left(tokens.flatten(1), keep.flatten(1), self.pad_id)
        flat = torch.cat([flat, torch.full_like(flat[:, :1], self.pad_id)], dim=1)
        return flat.scatter(1, lengths[:, None], self.end_id)

    def corrupt_records(self, body: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """F.3's augmentation of the encoder input: mask infilling then token deletion on the
        code tokens of ``body`` [B, L] (right-padded); visit delimiters and padding are never
        touched. Returns the corrupted rows, compacted left and right-padded with ``[PAD]``."""
        hp = self.hparams
        n_positions = body.shape[1]
        position = torch.arange(n_positions, device=body.device).expand_as(body)
        is_code = self.generatable[body]
        draws = torch.rand(body.shape, generator=generator, device=body.device)
        starts = is_code & (draws < hp.mask_ratio / hp.poisson_lambda)
        rate = torch.full(body.shape, float(hp.poisson_lambda), device=body.device)
        span = torch.poisson(rate, generator=generator).long().clamp(min=1)
        # A span ends at its visit's end: the next non-code token at or after it.
        non_code = torch.where(is_code, n_positions, position)
        visit_end = torch.flip(torch.cummin(torch.flip(non_code, [1]), dim=1).values, [1])
        reach = torch.where(starts, torch.minimum(position + span, visit_end), 0)
        covered = is_code & (position < torch.cummax(reach, dim=1).values)
        previous = torch.cat([torch.zeros_like(covered[:, :1]), covered[:, :-1]], dim=1)
        span_head = covered & ~previous  # each span becomes one [MASK] at its first token
        deleted = is_code & ~covered & (torch.rand(body.shape, generator=generator, device=body.device) < hp.delete_prob)
        tokens = torch.where(span_head, self.mask_id, body)
        keep = (body != self.pad_id) & ~(covered & ~span_head) & ~deleted
        return compact_left(tokens, keep, self.pad_id)[0]

    def encoder_inputs(
        self, body: torch.Tensor, age: torch.Tensor, sex: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts + embeddings of ``[BOS] body [EOS]`` and the attention mask."""
        lengths = (body != self.pad_id).sum(dim=1)
        bos = torch.full_like(body[:, :1], self.bos_id)
        ids = torch.cat([bos, body, torch.full_like(body[:, :1], self.pad_id)], dim=1)
        ids = ids.scatter(1, lengths[:, None] + 1, self.eos_id)
        mask = ids != self.pad_id
        prompts = torch.stack([self.age_prompt(age.float()), self.sex_prompt(sex.long())], dim=1)
        embeddings = torch.cat([prompts.to(self.bart.dtype), self.bart.get_input_embeddings()(ids)], dim=1)
        mask = torch.cat([torch.ones_like(mask[:, : self.n_prompts]), mask], dim=1)
        return embeddings, mask.long()

    def empty_bodies(self, n: int) -> torch.Tensor:
        """The empty-record marker ``[MASK]`` as the body of ``n`` encoder inputs."""
        return torch.full((n, 1), self.mask_id, dtype=torch.long, device=self.device)

    def reconstruction_loss(
        self, batch: dict[str, torch.Tensor], body: torch.Tensor, labels: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of ``labels`` given the prompts and the encoder ``body``."""
        embeddings, mask = self.encoder_inputs(body, batch["age"], batch["gender"])
        decoder_input = torch.cat([torch.full_like(labels[:, :1], self.bos_id), labels[:, :-1]], dim=1)
        logits = self.bart(
            inputs_embeds=embeddings,
            attention_mask=mask,
            decoder_input_ids=decoder_input,
            decoder_attention_mask=(decoder_input != self.pad_id).long(),
        ).logits
        targets = labels.masked_fill(labels == self.pad_id, IGNORE)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                               label_smoothing=label_smoothing)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = self.record_tokens(batch)
        body = labels.masked_fill(labels == self.end_id, self.pad_id)
        corrupted = self.corrupt_records(body)
        prompt_only = torch.rand(len(labels), device=labels.device) < self.hparams.prompt_only_share
        empty = torch.zeros_like(corrupted)
        empty[:, 0] = self.mask_id
        body = torch.where(prompt_only[:, None], empty, corrupted)
        return self.reconstruction_loss(batch, body, labels, self.hparams.label_smoothing)

    def prompt_only_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token cross-entropy of the records given the prompts alone (generation's input),
        without label smoothing: ``exp`` of it is the perplexity F.3 early-stops on."""
        labels = self.record_tokens(batch)
        return self.reconstruction_loss(batch, self.empty_bodies(len(labels)), labels, 0.0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.prompt_only_loss(batch)
        size = batch["codes"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/perplexity", torch.exp(loss), batch_size=size, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if total_steps == float("inf"):
            raise ValueError("the linear schedule needs a finite trainer.max_epochs or trainer.max_steps")
        warmup = min(self.hparams.warmup_steps, int(total_steps) // 10)
        scheduler = self.scheduler_factory(optimizer, num_warmup_steps=warmup, num_training_steps=int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- generation -------------------------------------------------------------------------

    def sample_structure(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Demographics, visit lengths and each visit's first code for ``n`` patients (F.3
        Structure Sampling): ``age`` [n], ``sex`` [n], ``lengths`` [n, V] (0 past the last
        visit), ``first_codes`` [n, V]; cut to ``max_length`` decoder tokens."""
        if not bool(self.statistics_fitted):
            raise ValueError("PromptEHR has no data statistics: train it, or call fit_statistics(training split)")
        draw = lambda weights, k: torch.multinomial(weights, k, replacement=True, generator=generator)
        demographic = draw(self.demographic_counts.flatten(), n)
        age_row, sex = demographic // N_SEXES, demographic % N_SEXES
        fraction = torch.rand(n, generator=generator, device=self.device)
        age = torch.where(age_row == 0, -1.0, (age_row - 1).float() + fraction * (age_row - 1 < MAX_AGE))

        n_visits = draw(self.visit_count_counts, n)
        n_visit_slots = int(n_visits.max())
        lengths = draw(self.visit_length_counts, n * n_visit_slots).view(n, n_visit_slots)
        lengths = lengths.clamp(max=self.n_generatable)
        lengths = lengths * (torch.arange(n_visit_slots, device=self.device)[None, :] < n_visits[:, None])
        # Cut to max_length: <v> codes </v> per visit, then [END].
        max_length = self.hparams.max_length
        lengths[:, 0] = lengths[:, 0].clamp(max=max_length - 3)
        fits = torch.cumsum((lengths + 2) * (lengths > 0), dim=1) <= max_length - 1
        lengths = lengths * fits

        prior = self.first_code_counts[self.age_bins(age), sex]  # [n, vocab]
        pooled = self.first_code_counts.sum(dim=(0, 1))
        if float(pooled.sum()) == 0:
            pooled = self.generatable[: self.vocab_size].float()
        prior = torch.where(prior.sum(dim=1, keepdim=True) > 0, prior, pooled)
        first_codes = draw(prior, n_visit_slots)
        return {"age": age, "sex": sex, "lengths": lengths, "first_codes": first_codes}

    def generation_plan(self, lengths: torch.Tensor, first_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder sequence [n, T] of each patient, ``[BOS] <v> first SAMPLE... </v> ...``,
        with ``SAMPLE`` where the decoder draws a code and ``[PAD]`` after the last visit;
        also the visit index of every position."""
        n = lengths.shape[0]
        visit_tokens = (lengths + 2) * (lengths > 0)
        ends = 1 + torch.cumsum(visit_tokens, dim=1)  # one past each visit's last position
        starts = ends - visit_tokens
        width = int(ends[:, -1].max()) if lengths.numel() else 1
        position = torch.arange(width, device=lengths.device).expand(n, width)
        visit = torch.searchsorted(ends, position.contiguous(), right=True).clamp(max=lengths.shape[1] - 1)
        offset = position - torch.gather(starts, 1, visit)
        length = torch.gather(lengths, 1, visit)
        plan = torch.full_like(position, self.pad_id)
        plan = torch.where(offset == 0, self.visit_start_id, plan)
        plan = torch.where(offset == 1, torch.gather(first_codes, 1, visit), plan)
        plan = torch.where((offset >= 2) & (offset <= length), SAMPLE, plan)
        plan = torch.where(offset == length + 1, self.visit_end_id, plan)
        plan = torch.where(position >= ends[:, -1:], self.pad_id, plan)
        plan[:, 0] = self.bos_id
        return plan, visit

    def guided_sample(self, logits: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One code per row from ``logits`` [N, tokens]: logits + w · log-frequency prior (F.3),
        non-codes and ``used`` codes masked, divided by the temperature, top-k / top-p."""
        hp = self.hparams
        logits = logits.float() + hp.frequency_guidance * self.log_frequency
        logits = logits.masked_fill(~self.generatable | used, float("-inf")) / hp.temperature
        logits = filter_top_k_top_p(logits, hp.top_k, hp.top_p)
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)

    def decoder_step(self, tokens, encoder_hidden, encoder_mask, cache) -> torch.Tensor:
        """The decoder's last hidden state [N, d_model] after ``tokens``, extending ``cache``
        in place. The vocabulary projection is left to the caller, which needs it only for
        the rows that draw a code."""
        return self.bart.model.decoder(
            input_ids=tokens,
            encoder_hidden_states=encoder_hidden,
            encoder_attention_mask=encoder_mask,
            use_cache=True,
            **{CACHE_ARGUMENT: cache},
        ).last_hidden_state[:, -1]

    def vocabulary_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """BART's output layer: the tied projection plus its final bias."""
        return self.bart.lm_head(hidden) + self.bart.final_logits_bias

    def sample_tokens(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder sequences [n, T] of ``n`` new patients and the visit index of each position.

        Forced positions (``[BOS]``, delimiters, first codes) are copied from the plan; the
        decoder fills the others, one position per step for every patient that still has one
        ahead (key/value cache). Patients past their last drawn code ride along in the cache
        (outputs unused, no draws spent) until at most half the cached ones need the model;
        then the cache is rebuilt from the others' prefixes, as gpt.py's sampler does.
        """
        structure = self.sample_structure(n, generator)
        tokens, visit = self.generation_plan(structure["lengths"], structure["first_codes"])
        to_sample = tokens == SAMPLE
        position = torch.arange(tokens.shape[1], device=self.device)
        last_draw = torch.where(to_sample, position, 0).max(dim=1).values  # 0: nothing to draw
        cached = torch.nonzero(last_draw > 0).squeeze(1)
        if len(cached) == 0:
            return tokens, visit
        body = self.empty_bodies(len(cached))
        embeddings, encoder_mask = self.encoder_inputs(body, structure["age"][cached], structure["sex"][cached])
        encoder_hidden = self.bart.get_encoder()(inputs_embeds=embeddings, attention_mask=encoder_mask).last_hidden_state
        # used[p, c]: code c is already in patient p's current visit.
        used = torch.zeros(n, self.n_tokens, dtype=torch.bool, device=self.device)
        cache, next_input = EncoderDecoderCache(DynamicCache(), DynamicCache()), tokens[cached, :1]
        for step in range(int(last_draw.max())):
            fed = tokens[:, step]
            used[fed == self.visit_start_id] = False
            is_code = self.generatable[fed.clamp(min=0)]
            used[is_code.nonzero().squeeze(1), fed[is_code]] = True
            hidden = self.decoder_step(next_input, encoder_hidden, encoder_mask, cache)
            draw_here = to_sample[cached, step + 1]
            patients = cached[draw_here]
            if len(patients):
                logits = self.vocabulary_logits(hidden[draw_here])
                tokens[patients, step + 1] = self.guided_sample(logits, used[patients], generator)
            going = last_draw[cached] > step + 1
            n_going = int(going.sum())
            if n_going == 0:
                break
            if 2 * n_going <= len(cached):
                cached, encoder_hidden, encoder_mask = cached[going], encoder_hidden[going], encoder_mask[going]
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
                next_input = tokens[cached, : step + 2]
            else:
                next_input = tokens[cached, step + 1 : step + 2]
        return tokens, visit

    def sample_codes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, visit = self.sample_tokens(n, generator)
        is_code = self.generatable[tokens.clamp(min=0)] & (tokens >= 0)
        patient, position = is_code.nonzero(as_tuple=True)
        return patient, visit[patient, position], tokens[patient, position]

