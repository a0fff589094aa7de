"""HALO: hierarchical autoregressive generation of visits (seed 002 §2.5, Appendix F.4).

A patient is a sequence of multi-hot rows over one shared column space; the probability of a
record factorises twice (Theodorou et al. 2023, as summarised in seed 002 §2.5):

- the **coarse** model, a GPT-2-style causal transformer over rows, turns rows ``0..t`` into
  a history vector ``h_t`` (input: bias-free linear embedding of the multi-hot row plus a
  learned position embedding, F.4 Table 8);
- the **fine** model predicts row ``t+1`` column by column: two masked linear layers over
  ``[h_t; x_{t+1}]`` with a ReLU between, lower-triangular so the logit of column ``j``
  sees ``h_t`` and the columns ``< j`` of the same row only.

Row layout (the column ids of our vocabulary are reused so that code id == column):

====================  =========================================================
column 0              padding row flag (the vocabulary's ``[PAD]`` id)
columns 1..V-1        codes, column = code id
columns V..V+L-1      patient labels (``n_labels`` = L, default 0)
column V+L            start flag
column V+L+1          end flag
====================  =========================================================

Rows: 0 = start row; 1 = label row (only when ``n_labels > 0``); then one row per visit; the
**last visit's row also carries the end flag**; rows after it are padding rows. The end flag
sits in the last visit rather than in a row of its own because that is what the reference
code (``HALO_Inpatient``, ``get_batch``: "Set the final visit to have the end token") does;
REFERENCES.md's "end row" is read as that. The loss covers the label row and the visit rows.

Context: ``n_ctx`` rows hold ``max_visits = n_ctx - 1`` visits without labels (**47** at
F.4's n_ctx 48), ``n_ctx - 2`` with a label row (46). (The layout F.4 describes, a label row
and an end row of its own, fits 45; the end flag riding on the last visit frees that row.)
The generation task's ``task.max_visits`` is the one setting that truncates records: HALO
never cuts a record itself, and refuses data with a longer patient, naming that key.

Generation never emits ``[PAD]`` or ``[UNK]`` (the vocabulary's stand-in for held-out codes
the training split lacks) nor the start flag in a generated row: their columns are masked.

Decision, labels: our generation task has no CCS phenotype labels, so ``n_labels`` defaults
to 0 and then the label row is left out altogether, as the reference's label-free variant
does (visits start at row 1). With ``n_labels > 0`` the batch must carry ``labels``
(float [B, n_labels]) and the label row is modelled and sampled like any row.

Decision, loss: masked binary cross-entropy averaged over the valid rows' entries (the
reference averages over all entries, padded rows included, which only rescales it), computed
from logits for numerical stability instead of sigmoid + BCELoss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ehrlab.data.schema import UNKNOWN_CODE
from ehrlab.errors import UserInputError
from ehrlab.models.generative.base import Generator


class MaskedLinear(nn.Linear):
    """Square linear layer whose output ``i`` sees inputs ``0..i`` only (lower-triangular).

    The fine module of HALO (F.4: "masked linear layers that enforce causal dependencies").
    Entries above the diagonal are multiplied by zero in every forward pass, so they neither
    act nor receive gradient.
    """

    def __init__(self, features: int):
        super().__init__(features, features, bias=True)
        self.register_buffer("mask", torch.tril(torch.ones(features, features)), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


class FineAutoregressiveHead(nn.Module):
    """Within-visit autoregression: logit of column ``j`` of row ``t+1`` from ``h_t`` and columns < j.

    The input is ``[h_t; x_{t+1}]`` (``n_embd + row_width`` features). With inclusive
    lower-triangular masks, output ``n_embd - 1 + j`` depends on inputs ``0 .. n_embd - 1 + j``
    = the whole history and columns ``0..j-1`` of the row, never column ``j`` itself; that
    output is column ``j``'s logit.
    """

    def __init__(self, n_embd: int, row_width: int):
        super().__init__()
        self.n_embd = n_embd
        self.layer1 = MaskedLinear(n_embd + row_width)
        self.layer2 = MaskedLinear(n_embd + row_width)

    def forward(self, history: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``history`` [..., n_embd], ``rows`` [..., row_width] -> logits [..., row_width]."""
        hidden = self.layer2(torch.relu(self.layer1(torch.cat([history, rows], dim=-1))))
        return hidden[..., self.n_embd - 1 : -1]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.projection = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        return self.residual_dropout(self.projection(attended.transpose(1, 2).reshape(batch, length, width)))


class TransformerBlock(nn.Module):
    """GPT-2 block: pre-layer-norm causal attention and a 4x GELU MLP, both residual."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, layer_norm_epsilon: float):
        super().__init__()
        self.norm_attention = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        self.attention = CausalSelfAttention(n_embd, n_head, dropout)
        self.norm_mlp = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class CoarseTransformer(nn.Module):
    """Visit-level GPT-2 over multi-hot rows: rows [B, T, row_width] -> history [B, T, n_embd].

    Causal: ``h_t`` depends on rows ``0..t`` only (F.4 "CoarseTransformerModel").
    """

    def __init__(
        self,
        row_width: int,
        n_layer: int,
        n_embd: int,
        n_head: int,
        n_positions: int,
        dropout: float,
        layer_norm_epsilon: float,
        initializer_range: float,
    ):
        super().__init__()
        self.visit_embedding = nn.Linear(row_width, n_embd, bias=False)
        self.position_embedding = nn.Embedding(n_positions, n_embd)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(n_embd, n_head, dropout, layer_norm_epsilon) for _ in range(n_layer)
        )
        self.final_norm = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=initializer_range)  # GPT-2 init, F.4 Table 8
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(rows.shape[1], device=rows.device)
        x = self.embedding_dropout(self.visit_embedding(rows) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)


EXPECTED_CODES_PER_VISIT = 10


class HALO(Generator):
    """HALO generator (seed 002 §2.5, F.4); sizes default to Table 8 (12 layers, 768, 12 heads)."""

    def __init__(
        self,
        vocabulary: list[str],
        n_layer: int = 12,
        n_embd: int = 768,
        n_head: int = 12,
        n_ctx: int = 48,
        n_positions: int = 56,
        n_labels: int = 0,
        dropout: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        optimizer: Any = None,
    ):
        """``n_ctx`` rows at most per patient (start, label row if any, visits: see the module
        docstring for how many visits that is); ``n_positions`` rows in the position table
        (F.4: 48 and 56). The training batch (F.4: 48) is ``data.batch_size``, which
        conf/model/halo.yaml sets.
        """
        super().__init__(vocabulary, optimizer=optimizer)
        self.save_hyperparameters(ignore=["vocabulary", "optimizer", "scheduler"])
        if n_ctx > n_positions:
            raise ValueError(f"n_ctx ({n_ctx}) cannot exceed n_positions ({n_positions})")
        self.n_labels = n_labels
        self.label_columns = slice(self.vocab_size, self.vocab_size + n_labels)
        self.start_column = self.vocab_size + n_labels
        self.end_column = self.start_column + 1
        self.pad_column = 0
        self.row_width = self.vocab_size + n_labels + 2
        self.first_visit_row = 2 if n_labels else 1
        self.max_visits = n_ctx - self.first_visit_row
        # Columns a generated row never sets (see sample_row).
        self.never_sampled = [self.pad_column, self.start_column] + [
            column for column, code in enumerate(self.vocabulary) if code == UNKNOWN_CODE]
        self.coarse = CoarseTransformer(
            self.row_width, n_layer, n_embd, n_head, n_positions, dropout, layer_norm_epsilon, initializer_range
        )
        self.fine = FineAutoregressiveHead(n_embd, self.row_width)
        self._initialise_row_prior(n_embd)

    def _initialise_row_prior(self, n_embd: int) -> None:
        """Start each column's logit at a sparse prior instead of p = 0.5.

        With zero biases an untrained fine head draws half the vocabulary into every row, and
        generation, which costs one fine-module pass per code drawn, crawls. Starting code
        columns at ~10 codes per visit (MIMIC-III averages 11) and the end flag at 0.5 gives
        realistic rows from the first step; training moves them from there. (Our choice; the
        reference initialises the biases at zero.)
        """
        code_probability = min(0.5, EXPECTED_CODES_PER_VISIT / self.row_width)
        prior = torch.full((self.row_width,), float(torch.logit(torch.tensor(code_probability))))
        prior[self.end_column] = 0.0
        with torch.no_grad():
            # Column j's logit is output n_embd - 1 + j of the second masked layer.
            self.fine.layer2.bias[n_embd - 1 : n_embd - 1 + self.row_width] = prior

    # -- batch -> rows ----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Refuse, before the first step, a prepared task with a patient longer than the context."""
        task_data = getattr(getattr(self.trainer, "datamodule", None), "task_data", None)
        if task_data is not None:
            self.check_visits_fit(max(int(part.visits_per_patient().max(initial=0))
                                      for part in task_data.splits.values()))

    def check_visits_fit(self, n_visits: int) -> None:
        """UserInputError naming task.max_visits when a patient of ``n_visits`` exceeds the context."""
        if n_visits > self.max_visits:
            labels = " and a label row" if self.n_labels else ""
            raise UserInputError(
                f"HALO's context holds {self.max_visits} visits (model.n_ctx={self.hparams.n_ctx} rows: a start "
                f"row{labels}, then one row per visit) but a patient has {n_visits}: set "
                f"task.max_visits={self.max_visits} (task.keep_visits chooses the first or last ones), or raise "
                f"model.n_ctx (and model.n_positions).")

    def rows_from_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-hot rows [B, T, row_width] and the mask [B, T-1] of rows 1.. that carry loss.

        A patient with more than ``max_visits`` visits is an error (UserInputError naming
        task.max_visits): the task, not the model, decides which visits a record keeps.
        """
        codes, n_visits = batch["codes"], batch["n_visits"]
        n_patients = codes.shape[0]
        if codes.shape[1] > self.max_visits:  # shape first: no device sync for the usual batch
            self.check_visits_fit(int(n_visits.max()))
            codes = codes[:, : self.max_visits]  # padded wider than its longest patient
        kept = codes.shape[1]
        visit_rows = torch.zeros(n_patients, kept, self.row_width, device=codes.device)
        visit_rows.scatter_(2, codes, 1.0)
        is_real = torch.arange(kept, device=codes.device)[None, :] < n_visits[:, None]
        # Padding code ids scattered into column 0; it is the padding-row flag instead.
        visit_rows[..., self.pad_column] = (~is_real).float()
        last_visit = F.one_hot(n_visits - 1, kept).bool()
        visit_rows[..., self.end_column] = last_visit.float()

        head = torch.zeros(n_patients, self.first_visit_row, self.row_width, device=codes.device)
        head[:, 0, self.start_column] = 1.0
        if self.n_labels:
            if "labels" not in batch:
                raise ValueError(f"HALO with n_labels={self.n_labels} needs batch['labels'] [B, n_labels]")
            head[:, 1, self.label_columns] = batch["labels"].float()
        rows = torch.cat([head, visit_rows], dim=1)
        carries_loss = torch.cat([torch.ones_like(head[:, 1:, 0], dtype=torch.bool), is_real], dim=1)
        return rows, carries_loss

    def row_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits [B, T-1, row_width] of rows 1..T-1 given the rows before them (teacher forcing)."""
        history = self.coarse(rows)
        return self.fine(history[:, :-1], rows[:, 1:])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows, carries_loss = self.rows_from_batch(batch)
        entry_loss = F.binary_cross_entropy_with_logits(self.row_logits(rows), rows[:, 1:], reduction="none")
        weight = carries_loss.float()[..., None]
        return (entry_loss * weight).sum() / (weight.sum() * self.row_width)

    # -- generation (F.4 "Generation Procedure", Table 9) -----------------------------------

    def sample_row(self, history: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One multi-hot row per history vector [P, n_embd], sampled column by column.

        Exact ancestral sampling with few fine-module calls: each pass draws every undecided
        column at once from the logits given the row so far (undecided columns still 0).
        Up to and including a patient's first drawn 1, those draws are exactly the
        conditionals (each saw only zeros after the last accepted column), so they are kept;
        the rest are redrawn next pass from that 1 onward. A pass per code in the row, plus
        one, batched over patients. (The reference keeps draws up to the first 1 over the
        whole batch; per patient needs fewer passes.)
        """
        n_patients = history.shape[0]
        row = torch.zeros(n_patients, self.row_width, device=history.device)
        columns = torch.arange(self.row_width, device=history.device)
        first_undecided = torch.zeros(n_patients, dtype=torch.long, device=history.device)
        active = torch.arange(n_patients, device=history.device)  # patients with columns left to draw
        while active.numel():
            probabilities = torch.sigmoid(self.fine(history[active], row[active]))
            probabilities[:, self.never_sampled] = 0.0
            uniform = torch.rand(active.numel(), self.row_width, generator=generator, device=history.device)
            drawn = (uniform < probabilities) & (columns >= first_undecided[active, None])
            has_one = drawn.any(dim=1)
            first_one = drawn.float().argmax(dim=1)  # first True; 0 when none (not used then)
            row[active[has_one], first_one[has_one]] = 1.0
            first_undecided[active] = first_one + 1
            active = active[has_one & (first_one + 1 < self.row_width)]
        return row

    def sample_codes(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows from the start row until every patient has emitted the end flag or n_ctx rows."""
        rows = torch.zeros(n, self.hparams.n_ctx, self.row_width, device=self.device)
        rows[:, 0, self.start_column] = 1.0
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)
        for position in range(1, self.hparams.n_ctx):
            # Finished patients keep all-zero rows and leave the batch (fewer rows to run).
            unfinished = (~finished).nonzero().squeeze(1)
            history = self.coarse(rows[unfinished, :position])[:, -1]
            row = self.sample_row(history, generator)
            rows[unfinished, position] = row
            if position >= self.first_visit_row:
                finished[unfinished] = row[:, self.end_column].bool()
            if finished.all():
                break
        visit_codes = rows[:, self.first_visit_row :, 1 : self.vocab_size]
        patient, visit, column = visit_codes.nonzero(as_tuple=True)
        return patient, visit, column + 1
