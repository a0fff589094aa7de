"""GPT-2 baseline over flattened visit sequences (seed 002 §2.6, Appendix F.5).

A patient becomes one token sequence ``[BOS] codes of visit 0 [VISIT] codes of visit 1 ...
[EOS]``: codes are atomic tokens and ``[VISIT]`` separates consecutive visits (F.5 "Data
Flattening"). A Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` (never
downloaded) learns it with the causal language-modelling loss; sampling combines top-k and
nucleus (top-p) filtering (F.5).

Token ids: the WordLevel tokenizer reuses the code ids of our vocabulary (``[PAD]`` = 0,
``[UNK]`` = 1 in a task's vocabulary, code id = token id), then ``[BOS]``, ``[EOS]`` and
``[VISIT]`` (and ``[UNK]`` after them for a vocabulary without one). Flattening a batch is
therefore pure tensor work, with no string lookup; the tokenizer is what users and tests
use to read and write the sequences as text (``save_tokenizer`` writes tokenizer.json). The
embedding table is sized from the tokenizer's largest id, not from a count of tokens
(REFERENCES.md: a trained WordLevel vocabulary can leave gaps). ``[UNK]`` stands for codes
outside the vocabulary: held-out codes the training split lacks (the task maps them to it,
seed 002 F.4) and any text the tokenizer does not know. Like ``[PAD]`` and ``[BOS]`` it is
never sampled.

Decisions where the text of F.5 lost its numbers: learning rate 5e-4 (AdamW), 5 % linear
warm-up then cosine decay (``transformers.get_cosine_schedule_with_warmup``), top-k 50 and
top-p 0.95 (the nucleus mass PromptEHR uses in the same paper), gradient-norm clip 1.0 (the
Hugging Face Trainer default the authors trained with; the trainer's ``gradient_clip_val``,
set in conf/model/gpt.yaml). Context 512 (F.5 "Context Window"):
a longer record keeps its latest visits that fit. Generation stops at ``[EOS]`` or after
``max_generation_length`` = 128 tokens (F.5 "Max Sequence Length"); a record cut there keeps
the codes it has.

Sampling runs its own loop (``model.generate`` would draw from the global RNG, and records
must depend on the seed given to ``generate`` only) over the public key/value cache API: a
``DynamicCache`` passed to the model's forward, which extends it in place.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from ehrlab.data.schema import UNKNOWN_CODE
from ehrlab.models.generative.base import Generator

BOS, EOS, VISIT, UNK = "[BOS]", "[EOS]", "[VISIT]", UNKNOWN_CODE
# The forward argument that takes the key/value cache: transformers 5 renamed past_key_values
# to cache (the old name warns, and goes in 5.40); older releases know only the old one.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


def build_code_tokenizer(vocabulary: list[str]) -> Tokenizer:
    """WordLevel tokenizer with one atomic token per code, id = the code's vocabulary id.

    ``vocabulary[0]`` is ``[PAD]``; ``[BOS]``, ``[EOS]``, ``[VISIT]`` follow the codes, then
    ``[UNK]`` unless the vocabulary holds it already (a task's does, at id 1). Text is split on
    whitespace only, so a code such as ``DIAGNOSIS//ICD//9//428.0`` stays one token. No
    training text is needed: the vocabulary is given.
    """
    bad = [code for code in vocabulary if not code or any(ch.isspace() for ch in code)]
    if bad:
        raise ValueError(f"codes must be non-empty and free of whitespace to be atomic tokens: {bad[:5]}")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("the vocabulary holds a code twice")
    specials = [BOS, EOS, VISIT] + ([] if UNK in vocabulary else [UNK])
    clashing = sorted(set(specials) & set(vocabulary))
    if clashing:
        raise ValueError(f"the vocabulary already holds the special tokens {clashing}")
    token_ids = {token: token_id for token_id, token in enumerate([*vocabulary, *specials])}
    tokenizer = Tokenizer(models.WordLevel(token_ids, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Registered as special so decode(skip_special_tokens=True) drops them; ids are unchanged.
    tokenizer.add_special_tokens([vocabulary[0], BOS, EOS, VISIT, UNK])
    return tokenizer


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits [N, vocab] with everything outside the top-k and the top-p nucleus set to -inf.

    Top-k keeps the ``top_k`` largest logits per row (ties with the k-th are kept; 0 turns it
    off). Top-p then keeps the smallest set of most probable tokens whose probability mass
    reaches ``top_p`` (the most probable token always survives; 1.0 turns it off).
    """
    filtered = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(filtered, top_k, dim=-1).values[..., -1:]
        filtered = filtered.masked_fill(filtered < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_ids = torch.sort(filtered, dim=-1, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probabilities, dim=-1) - probabilities
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_ids, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    return filtered


class GPTBaseline(Generator):
    """GPT-2 over flattened records (seed 002 §2.6, F.5). Defaults are a CPU size; F.5's final
    configuration is 8 layers, embedding 512, 8 heads (search space 2-8 layers, 16-512)."""

    def __init__(
        self,
        vocabulary: list[str],
        n_layer: int = 2,
        n_embd: int = 128,
        n_head: int = 8,
        n_positions: int = 512,
        max_generation_length: int = 128,
        top_k: int = 50,
        top_p: float = 0.95,
        dropout: float = 0.1,
        warmup_ratio: float = 0.05,
        optimizer: Any = None,
        scheduler: Any = None,
        early_stopping_patience: int | None = None,
    ):
        """``scheduler`` is a partial called as ``scheduler(optimizer, num_warmup_steps=...,
        num_training_steps=...)`` and stepped every batch. The training batch (F.5: 64) is
        ``data.batch_size``, which conf/model/gpt.yaml sets."""
        super().__init__(vocabulary, optimizer=optimizer, early_stopping_patience=early_stopping_patience)
        self.save_hyperparameters(ignore=["vocabulary", "optimizer", "scheduler"])
        if not 2 <= max_generation_length <= n_positions:
            raise ValueError(f"max_generation_length ({max_generation_length}) must lie in 2..n_positions ({n_positions})")
        self.scheduler_factory = scheduler
        self.tokenizer = build_code_tokenizer(self.vocabulary)
        self.pad_id = self.tokenizer.token_to_id(self.vocabulary[0])
        self.bos_id = self.tokenizer.token_to_id(BOS)
        self.eos_id = self.tokenizer.token_to_id(EOS)
        self.visit_id = self.tokenizer.token_to_id(VISIT)
        self.never_sampled = [self.pad_id, self.bos_id, self.tokenizer.token_to_id(UNK)]
        config = GPT2Config(
            vocab_size=max(self.tokenizer.get_vocab().values()) + 1,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        self.gpt = GPT2LMHeadModel(config)

    def save_tokenizer(self, path: str | Path) -> None:
        """Write the tokenizer as a Hugging Face ``tokenizer.json``."""
        self.tokenizer.save(str(path))

    # -- batch -> token ids -----------------------------------------------------------------

    def flatten_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] (right-padded with ``[PAD]``) and their attention mask [B, L].

        Each real visit contributes its codes and a separator (``[VISIT]``, or ``[EOS]`` after
        the last visit); the tokens are compacted left with one stable sort per row, so there
        is no loop over patients or visits. Records longer than ``n_positions`` keep their
        latest visits that fit (the last visit always, cut at the end if it alone is longer).
        """
        codes, n_visits = batch["codes"], batch["n_visits"]
        n_patients, n_visit_slots, _ = codes.shape
        visit_index = torch.arange(n_visit_slots, device=codes.device)[None, :]
        is_real = visit_index < n_visits[:, None]
        is_last = visit_index == (n_visits[:, None] - 1)
        separator = torch.where(is_last, self.eos_id, self.visit_id) * is_real
        tokens = torch.cat([codes * is_real[..., None], separator[..., None]], dim=2)

        # Keep visit v if the tokens from v to the end fit after [BOS].
        visit_tokens = (tokens != self.pad_id).sum(dim=2)
        tokens_from_visit = visit_tokens.flip(1).cumsum(1).flip(1)
        keep_visit = (tokens_from_visit <= self.hparams.n_positions - 1) | is_last
        tokens = tokens * keep_visit[..., None]

        bos = torch.full((n_patients, 1), self.bos_id, dtype=codes.dtype, device=codes.device)
        flat = torch.cat([bos, tokens.flatten(1)], dim=1)
        is_token = flat != self.pad_id
        order = torch.argsort((~is_token).to(torch.uint8), dim=1, stable=True)
        flat = torch.gather(flat, 1, order)
        lengths = is_token.sum(dim=1)
        length = min(int(lengths.max()), self.hparams.n_positions)
        attention_mask = torch.arange(length, device=codes.device)[None, :] < lengths[:, None]
        return flat[:, :length], attention_mask

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = self.flatten_batch(batch)
        logits = self.gpt(input_ids=input_ids, attention_mask=attention_mask.long()).logits
        # Causal LM loss: position i predicts token i + 1; padding carries no loss.
        next_tokens = input_ids[:, 1:].masked_fill(~attention_mask[:, 1:], -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), next_tokens.flatten(), ignore_index=-100)

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if total_steps == float("inf"):
            raise ValueError("the cosine schedule needs a finite trainer.max_epochs or trainer.max_steps")
        scheduler = self.scheduler_factory(
            optimizer,
            num_warmup_steps=int(self.hparams.warmup_ratio * total_steps),
            num_training_steps=int(total_steps),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- generation -------------------------------------------------------------------------

    def sample_tokens(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Token ids [n, L] starting with ``[BOS]``; ``[PAD]`` after a patient's ``[EOS]``.

        One token per step for all unfinished patients at once, reusing the key/value cache.
        A finished patient rides along in the cache (its outputs unused, no draws spent on
        it) until at most half of the cached patients are unfinished; then the cache is
        rebuilt from the unfinished ones' tokens so far, so the stragglers do not keep the
        whole batch busy. Stops when all have finished or at ``max_generation_length``.
        """
        max_length = self.hparams.max_generation_length
        tokens = torch.full((n, max_length), self.pad_id, dtype=torch.long, device=self.device)
        tokens[:, 0] = self.bos_id
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)
        cached = torch.arange(n, device=self.device)  # patients in the cache, in its row order
        cache, next_input = DynamicCache(), tokens[:, :1]
        for position in range(1, max_length):
            logits = self.gpt(input_ids=next_input, use_cache=True, **{CACHE_ARGUMENT: cache}).logits[:, -1]
            going = ~finished[cached]
            patients, logits = cached[going], logits[going].float()
            logits[:, self.never_sampled] = float("-inf")
            logits = filter_top_k_top_p(logits, self.hparams.top_k, self.hparams.top_p)
            next_token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
            tokens[patients, position] = next_token
            finished[patients] = next_token == self.eos_id
            n_going = int((~finished[cached]).sum())
            if n_going == 0:
                break
            if 2 * n_going <= len(cached):
                cached = cached[~finished[cached]]
                cache, next_input = DynamicCache(), tokens[cached, : position + 1]
            else:
                next_input = tokens[cached, position : position + 1]
        return tokens[:, : position + 1]

    def decode_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(patient, visit, code id) of every code before ``[EOS]``; the visit index counts
        the ``[VISIT]`` separators before the code (vectorised over the whole batch)."""
        after_end = torch.cumsum(tokens == self.eos_id, dim=1) > 0
        visit = torch.cumsum(tokens == self.visit_id, dim=1)
        is_code = (tokens > self.pad_id) & (tokens < self.vocab_size) & ~after_end
        patient, position = is_code.nonzero(as_tuple=True)
        return patient, visit[patient, position], tokens[patient, position]

    def sample_codes(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decode_tokens(self.sample_tokens(n, generator))
