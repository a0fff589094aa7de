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
columns V..V+L-1      patient labels (L = 25 with ``labels: ccs_phenotypes``, else ``n_labels``)
column V+L            start flag
column V+L+1          end flag
====================  =========================================================

Rows: 0 = start row; 1 = label row (only with labels, L > 0); then one row per visit; the
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

Labels (``labels``, F.4: HALO conditions on the 25 CCS phenotypes of the MIMIC-III
benchmark, ``ehrlab.data.phenotypes``):

- ``labels: none`` (default) with ``n_labels: 0``: no label row at all, as the reference's
  label-free variant (visits start at row 1).
- ``labels: ccs_phenotypes``: the label row holds the 25 phenotypes (``label_names`` =
  ``PHENOTYPES``). A training patient's label row is the OR over the codes of its visits of
  the code-to-phenotype matrix, derived from the batch itself (no label data needed; the
  labels describe exactly the codes the model is shown, so that generated records can be
  checked against the labels they were asked for). The row is modelled like any row; in
  generation it is sampled first, or fixed to ``generate(labels=...)`` and the visits sampled
  given it.
- ``labels: none`` with ``n_labels`` = L > 0: a label row of L hand-set labels read from
  ``batch["labels"]`` (float [B, L], named ``label_0`` ..): kept for tests and data sets
  that carry their own labels.

Decision, label row sampling: a sampled label row may set label columns only, and a visit
row never sets them. No training row of either kind ever does, so holding those columns at 0
only rules out what the data never shows (the reference leaves them to the model's small
learned probabilities).

Speed (issue item 8; same functions as the plain versions, tests check it): the fine
module's masked layers are blocked lower-triangular products that skip the zero blocks
(``MaskedLinear``; blocks of 2,048 features, 4 blocks at the paper's width of ~7,700:
measured on 2 CPU threads, 512 and 1,024 were slower than the dense product, each block's
strided matmuls being too small, and 2,048-2,600 fastest, ~35% off the forward pass and
~15% off forward + backward, whose weight gradient is bound by writing [F, F]), and
generation caches each coarse layer's keys and values, so a new
row costs one row's forward (``CoarseTransformer.step``).

Decision, loss: masked binary cross-entropy averaged over the valid rows' entries (the
reference averages over all entries, padded rows included, which only rescales it), computed
from logits for numerical stability instead of sigmoid + BCELoss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ehrlab.data.phenotypes import (
    PHENOTYPES,
    patient_phenotypes,
    phenotype_matrix,
    table_phenotypes,
)
from ehrlab.data.schema import UNKNOWN_CODE
from ehrlab.errors import UserInputError
from ehrlab.models.generative.base import Generator

#: one layer's cached keys and values, each [patients, n_head, rows so far, head_dim]
KeyValues = tuple[torch.Tensor, torch.Tensor]


FINE_BLOCK_SIZE = 2048


class _BlockLowerTriangularLinear(torch.autograd.Function):
    """``x @ tril(W)^T + b`` computed block by block, skipping the blocks above the diagonal.

    The features are cut into blocks of ``block`` (the last may be shorter). Output block
    ``i`` is ``x[:, :s_i] @ W[i, :s_i]^T`` (the dense blocks left of the diagonal, one
    matmul) plus ``x_i @ tril(W_ii)^T`` (the diagonal block, masked). The backward pass
    writes the weight gradient of those same entries only (the rest stay exactly zero, as
    under the dense mask) and the input gradient column block by column block from the
    blocks on and below the diagonal. Every block product is written in place into its slice
    of the result (``addmm_`` with ``beta=0``). Same function as the dense masked product,
    fewer multiply-adds (half, plus the diagonal blocks' upper halves), and no [F, F] masked
    copy of the weight per call.
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias, block):
        flat = inputs.reshape(-1, inputs.shape[-1])
        features = weight.shape[0]
        # Each block's products are written in place into its slice of the output (beta=0:
        # the uninitialised memory is ignored), no temporaries.
        out = torch.empty(flat.shape[0], features, dtype=flat.dtype, device=flat.device)
        for start in range(0, features, block):
            end = min(start + block, features)
            part = out[:, start:end].addmm_(flat[:, start:end], weight[start:end, start:end].tril().t(), beta=0)
            if start:
                part.addmm_(flat[:, :start], weight[start:end, :start].t())
        out += bias
        ctx.save_for_backward(flat, weight)
        ctx.block, ctx.input_shape = block, inputs.shape
        return out.reshape(*inputs.shape[:-1], features)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        flat, weight = ctx.saved_tensors
        block, features = ctx.block, weight.shape[0]
        grad = grad_output.reshape(-1, features)
        grad_inputs = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_inputs = torch.empty_like(flat)
            for start in range(0, features, block):  # input column block j: output blocks j.. see it
                end = min(start + block, features)
                part = grad_inputs[:, start:end].addmm_(grad[:, start:end], weight[start:end, start:end].tril(), beta=0)
                if end < features:
                    part.addmm_(grad[:, end:], weight[end:, start:end])
            grad_inputs = grad_inputs.reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty_like(weight)
            for start in range(0, features, block):
                end = min(start + block, features)
                grad_weight[start:end, :end].addmm_(grad[:, start:end].t(), flat[:, :end], beta=0)
                diagonal = grad_weight[start:end, start:end]
                diagonal.copy_(diagonal.tril())
                grad_weight[start:end, end:].zero_()  # masked: exactly no gradient
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=0)
        return grad_inputs, grad_weight, grad_bias, None


class MaskedLinear(nn.Linear):
    """Square linear layer whose output ``i`` sees inputs ``0..i`` only (lower-triangular).

    The fine module of HALO (F.4: "masked linear layers that enforce causal dependencies").
    Entries above the diagonal never act and never receive gradient. The product is blocked
    lower-triangular (``_BlockLowerTriangularLinear``, issue item 8): the zero blocks are
    skipped instead of multiplying ``weight * mask`` densely. Parameters (``weight`` [F, F],
    ``bias`` [F]) are those of the dense layer, so checkpoints of either load in the other;
    the entries above the diagonal are kept (initialised, never used or updated).
    ``_dense`` switches back to the dense masked product (the benchmark's reference only).
    """

    _dense = False

    def __init__(self, features: int, block_size: int = FINE_BLOCK_SIZE):
        super().__init__(features, features, bias=True)
        self.block_size = block_size
        self.register_buffer("mask", torch.tril(torch.ones(features, features)), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._dense:
            return F.linear(inputs, self.weight * self.mask, self.bias)
        return _BlockLowerTriangularLinear.apply(inputs, self.weight, self.bias, self.block_size)


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

    def step(self, x: torch.Tensor, past: KeyValues | None) -> tuple[torch.Tensor, KeyValues]:
        """One new row per patient, ``x`` [P, 1, n_embd], attending to the cached keys/values
        of its earlier rows (``past``: two [P, n_head, t, head_dim]) and to itself; returns the
        output [P, 1, n_embd] and the cache grown by this row. (Generation only: eval mode.)"""
        batch, _, width = x.shape
        q, k, v = self.qkv(x).view(batch, 1, 3, self.n_head, width // self.n_head).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)  # the last row sees every row
        return self.projection(attended.transpose(1, 2).reshape(batch, 1, width)), (k, v)


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

    def step(self, x: torch.Tensor, past: KeyValues | None) -> tuple[torch.Tensor, KeyValues]:
        attended, present = self.attention.step(self.norm_attention(x), past)
        x = x + attended
        return x + self.mlp(self.norm_mlp(x)), present


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

    def step(
        self, row: torch.Tensor, position: int, past: list[KeyValues] | None
    ) -> tuple[torch.Tensor, list[KeyValues]]:
        """Key/value-cached forward of one new row per patient (generation).

        ``row`` [P, row_width] is row ``position`` of P patients whose rows ``0..position-1``
        are cached in ``past`` (one (keys, values) pair per layer, rows of the cache = the P
        patients, in order; None at position 0). Returns ``h_position`` [P, n_embd], the same
        as ``forward(rows)[:, position]``, and the cache grown by this row. A caller that
        drops patients indexes every cached tensor's first dimension the same way.
        """
        x = self.visit_embedding(row[:, None]) + self.position_embedding.weight[position]
        present = []
        for layer, block in enumerate(self.blocks):
            x, layer_cache = block.step(x, None if past is None else past[layer])
            present.append(layer_cache)
        return self.final_norm(x)[:, 0], present


EXPECTED_CODES_PER_VISIT = 10


LABEL_SOURCES = ("none", "ccs_phenotypes")


class HALO(Generator):
    """HALO generator (seed 002 §2.5, F.4); sizes default to Table 8 (12 layers, 768, 12 heads).

    ``labels`` chooses the label row (see the module docstring): ``"none"`` (the default; a
    label row only with hand-set ``n_labels`` > 0 and ``batch["labels"]``) or
    ``"ccs_phenotypes"`` (HALO's 25 CCS phenotypes, derived from each patient's codes).
    """

    def __init__(
        self,
        vocabulary: list[str],
        n_layer: int = 12,
        n_embd: int = 768,
        n_head: int = 12,
        n_ctx: int = 48,
        n_positions: int = 56,
        labels: str = "none",
        n_labels: int = 0,
        dropout: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        optimizer: Any = None,
        early_stopping_patience: int | None = None,
    ):
        """``n_ctx`` rows at most per patient (start, label row if any, visits: see the module
        docstring for how many visits that is); ``n_positions`` rows in the position table
        (F.4: 48 and 56). The training batch (F.4: 48) is ``data.batch_size``, which
        conf/model/halo.yaml sets.
        """
        super().__init__(vocabulary, optimizer=optimizer, early_stopping_patience=early_stopping_patience)
        self.save_hyperparameters(ignore=["vocabulary", "optimizer", "scheduler"])
        if n_ctx > n_positions:
            raise ValueError(f"n_ctx ({n_ctx}) cannot exceed n_positions ({n_positions})")
        if labels not in LABEL_SOURCES:
            raise UserInputError(f"model.labels={labels!r}: choose one of {list(LABEL_SOURCES)}.")
        if labels == "ccs_phenotypes":
            if n_labels not in (0, len(PHENOTYPES)):
                raise UserInputError(f"model.labels=ccs_phenotypes sets {len(PHENOTYPES)} labels; drop model.n_labels "
                                     f"(got {n_labels}).")
            n_labels = len(PHENOTYPES)
            self.label_names = PHENOTYPES
            # Code id -> phenotypes; derived from the vocabulary, so not part of the checkpoint.
            self.register_buffer("code_phenotypes", torch.from_numpy(phenotype_matrix(self.vocabulary).copy()),
                                 persistent=False)
        elif n_labels:
            self.label_names = tuple(f"label_{i}" for i in range(n_labels))
        self.label_source = labels
        self.n_labels = n_labels
        self.label_columns = slice(self.vocab_size, self.vocab_size + n_labels)
        self.start_column = self.vocab_size + n_labels
        self.end_column = self.start_column + 1
        self.pad_column = 0
        self.row_width = self.vocab_size + n_labels + 2
        self.first_visit_row = 2 if n_labels else 1
        self.max_visits = n_ctx - self.first_visit_row
        # Columns a generated visit row never sets (see sample_row); a label row sets label columns only.
        self.never_sampled = [self.pad_column, self.start_column] + [
            column for column, code in enumerate(self.vocabulary) if code == UNKNOWN_CODE]
        visit_columns = torch.ones(self.row_width, dtype=torch.bool)
        visit_columns[self.never_sampled + list(range(self.row_width))[self.label_columns]] = False
        label_row_columns = torch.zeros(self.row_width, dtype=torch.bool)
        label_row_columns[self.label_columns] = True
        self.register_buffer("visit_columns", visit_columns, persistent=False)
        self.register_buffer("label_row_columns", label_row_columns, persistent=False)
        self.coarse = CoarseTransformer(
            self.row_width, n_layer, n_embd, n_head, n_positions, dropout, layer_norm_epsilon, initializer_range
        )
        self.fine = FineAutoregressiveHead(n_embd, self.row_width)
        self._initialise_row_prior(n_embd)
        #: key/value cache in generation (the uncached path is kept for the equivalence test)
        self._kv_cache = True

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

    def batch_labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The label row's label part, float [B, n_labels]: with ``labels=ccs_phenotypes`` the
        OR over the patient's codes of the code-to-phenotype matrix; else ``batch["labels"]``."""
        if self.label_source == "ccs_phenotypes":
            return patient_phenotypes(batch["codes"], self.code_phenotypes).float()
        if "labels" not in batch:
            raise ValueError(f"HALO with n_labels={self.n_labels} needs batch['labels'] [B, n_labels]")
        return batch["labels"].float()

    def record_labels(self, records):
        """With ``labels=ccs_phenotypes``: the phenotypes each subject's codes carry (what the
        label row of a real patient with these codes would hold); else None (hand-set labels
        cannot be read from codes)."""
        return table_phenotypes(records) if self.label_source == "ccs_phenotypes" else None

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
            head[:, 1, self.label_columns] = self.batch_labels({**batch, "codes": codes})
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

    def sample_row(
        self, history: torch.Tensor, generator: torch.Generator, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One multi-hot row per history vector [P, n_embd], sampled column by column.

        ``allowed`` (bool [row_width]) lists the columns the row may set: by default a visit
        row's (codes and the end flag; never ``[PAD]``, ``[UNK]``, the start flag nor label
        columns), ``label_row_columns`` for the label row. The others are held at 0, which is
        what every training row of that kind shows, so this conditions exactly on them.

        Exact ancestral sampling with few fine-module calls: each pass draws every undecided
        column at once from the logits given the row so far (undecided columns still 0).
        Up to and including a patient's first drawn 1, those draws are exactly the
        conditionals (each saw only zeros after the last accepted column), so they are kept;
        the rest are redrawn next pass from that 1 onward. A pass per code in the row, plus
        one, batched over patients. (The reference keeps draws up to the first 1 over the
        whole batch; per patient needs fewer passes.)
        """
        allowed = self.visit_columns if allowed is None else allowed
        n_patients = history.shape[0]
        row = torch.zeros(n_patients, self.row_width, device=history.device)
        columns = torch.arange(self.row_width, device=history.device)
        first_undecided = torch.zeros(n_patients, dtype=torch.long, device=history.device)
        active = torch.arange(n_patients, device=history.device)  # patients with columns left to draw
        while active.numel():
            probabilities = torch.sigmoid(self.fine(history[active], row[active])) * allowed
            uniform = torch.rand(active.numel(), self.row_width, generator=generator, device=history.device)
            drawn = (uniform < probabilities) & (columns >= first_undecided[active, None])
            has_one = drawn.any(dim=1)
            first_one = drawn.float().argmax(dim=1)  # first True; 0 when none (not used then)
            row[active[has_one], first_one[has_one]] = 1.0
            first_undecided[active] = first_one + 1
            active = active[has_one & (first_one + 1 < self.row_width)]
        return row

    def sample_codes(
        self, n: int, generator: torch.Generator, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows from the start row until every patient has emitted the end flag or n_ctx rows.

        A label-conditioned model samples the label row first, or, given ``labels`` (float
        [n, n_labels]), takes it as the label row and samples the visits given it (F.4:
        conditional generation). Each new row costs one row's pass through the coarse
        transformer: the keys and values of the earlier rows are cached per layer, and the
        cache loses the rows of the patients that have finished.
        """
        if labels is not None and (not self.n_labels or tuple(labels.shape) != (n, self.n_labels)):
            raise ValueError(f"labels must be [n={n}, n_labels={self.n_labels}], got {tuple(labels.shape)}")
        rows = torch.zeros(n, self.hparams.n_ctx, self.row_width, device=self.device)
        rows[:, 0, self.start_column] = 1.0
        if labels is not None:
            rows[:, 1, self.label_columns] = labels.to(rows)
        active = torch.arange(n, device=self.device)  # unfinished patients, in order
        cache = None
        for position in range(1, self.hparams.n_ctx):
            # Finished patients keep all-zero rows and leave the batch (fewer rows to run).
            if self._kv_cache:
                history, cache = self.coarse.step(rows[active, position - 1], position - 1, cache)
            else:
                history = self.coarse(rows[active, :position])[:, -1]
            if position < self.first_visit_row:  # the label row
                if labels is None:
                    rows[active, position] = self.sample_row(history, generator, self.label_row_columns)
                continue
            row = self.sample_row(history, generator)
            rows[active, position] = row
            going_on = ~row[:, self.end_column].bool()
            active = active[going_on]
            if not active.numel():
                break
            if cache is not None:
                cache = [(keys[going_on], values[going_on]) for keys, values in cache]
        visit_codes = rows[:, self.first_visit_row :, 1 : self.vocab_size]
        patient, visit, column = visit_codes.nonzero(as_tuple=True)
        return patient, visit, column + 1
