"""HALO's pieces: the masked fine module, the causal coarse model, the row layout, the sampler."""

from __future__ import annotations

import itertools

import pytest
import torch

from ehrlab.errors import UserInputError
from ehrlab.models.generative.halo import HALO, CoarseTransformer, FineAutoregressiveHead

# A task's vocabulary: [PAD] at 0, [UNK] at 1, then codes.
VOCABULARY = ["[PAD]", "[UNK]", "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//250.00"]


def small_halo(**kwargs) -> HALO:
    return HALO(VOCABULARY, **{"n_layer": 1, "n_embd": 8, "n_head": 2, "n_ctx": 6, "n_positions": 6, **kwargs})


def test_fine_module_output_j_depends_on_history_and_columns_before_j_only():
    torch.manual_seed(0)
    n_embd, width = 5, 7
    fine = FineAutoregressiveHead(n_embd, width)
    history, row = torch.randn(n_embd), torch.rand(width)
    wrt_row = torch.autograd.functional.jacobian(lambda r: fine(history, r), row)  # [out j, in k]
    wrt_history = torch.autograd.functional.jacobian(lambda h: fine(h, row), history)
    assert torch.all(torch.triu(wrt_row) == 0)  # k >= j: no influence, the diagonal included
    assert torch.tril(wrt_row, diagonal=-1).abs().sum() > 0  # k < j: some influence
    assert (wrt_history.abs().sum(dim=1) > 0).any()


def test_masked_weights_receive_no_gradient():
    fine = FineAutoregressiveHead(3, 4)
    fine(torch.randn(2, 3), torch.rand(2, 4)).sum().backward()
    above_diagonal = ~fine.layer1.mask.bool()
    assert torch.all(fine.layer1.weight.grad[above_diagonal] == 0)
    assert torch.all(fine.layer2.weight.grad[above_diagonal] == 0)


def test_coarse_model_is_causal_over_visits():
    torch.manual_seed(0)
    coarse = CoarseTransformer(
        row_width=6, n_layer=2, n_embd=8, n_head=2, n_positions=10, dropout=0.0, layer_norm_epsilon=1e-5,
        initializer_range=0.02,
    ).eval()
    rows = torch.rand(3, 7, 6).round()
    changed = rows.clone()
    changed[:, 4:] = 1 - changed[:, 4:]  # alter visits 4.. only
    before, after = coarse(rows), coarse(changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_rows_follow_the_reference_layout():
    model = small_halo()
    codes = torch.tensor([[[2, 4], [3, 0]], [[3, 0], [0, 0]]])
    rows, carries_loss = model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([2, 1])})
    start, end = model.start_column, model.end_column
    assert rows.shape == (2, 3, len(VOCABULARY) + 2)
    assert rows[:, 0].nonzero().tolist() == [[0, start], [1, start]]
    assert rows[0, 1].nonzero().squeeze(1).tolist() == [2, 4]
    assert rows[0, 2].nonzero().squeeze(1).tolist() == [3, end]  # the end flag rides on the last visit
    assert rows[1, 1].nonzero().squeeze(1).tolist() == [3, end]
    assert rows[1, 2].nonzero().squeeze(1).tolist() == [model.pad_column]  # padding row
    assert carries_loss.tolist() == [[True, True], [True, False]]


def test_label_row_is_present_only_with_labels():
    model = small_halo(n_labels=2)
    codes = torch.tensor([[[2, 3]]])
    rows, carries_loss = model.rows_from_batch(
        {"codes": codes, "n_visits": torch.tensor([1]), "labels": torch.tensor([[0.0, 1.0]])}
    )
    assert rows[0, 1].nonzero().squeeze(1).tolist() == [len(VOCABULARY) + 1]
    assert rows[0, 2].nonzero().squeeze(1).tolist() == [2, 3, model.end_column]
    assert carries_loss.tolist() == [[True, True]]
    with pytest.raises(ValueError, match="labels"):
        model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([1])})


def test_context_holds_n_ctx_minus_the_head_rows_and_longer_records_are_refused():
    assert small_halo(n_ctx=48, n_positions=56).max_visits == 47  # F.4's n_ctx: start row + 47 visits
    assert small_halo(n_ctx=48, n_positions=56, n_labels=2).max_visits == 46
    model = small_halo(n_ctx=3, n_positions=3)  # start row + 2 visits
    fits = {"codes": torch.tensor([[[2], [3], [0]], [[4], [0], [0]]]), "n_visits": torch.tensor([2, 1])}
    rows, _ = model.rows_from_batch(fits)  # padded one visit wider than the context: fine
    assert rows.shape[1] == 3 and rows[0, 2, 3] == 1 and rows[0, 2, model.end_column] == 1
    too_long = {"codes": torch.tensor([[[2], [3], [4]], [[4], [0], [0]]]), "n_visits": torch.tensor([3, 1])}
    with pytest.raises(UserInputError, match=r"holds 2 visits.*task\.max_visits=2"):
        model.rows_from_batch(too_long)


def test_loss_ignores_padded_visit_slots():
    torch.manual_seed(0)
    model = small_halo(dropout=0.0).eval()
    codes = torch.tensor([[[2, 4], [3, 0]], [[3, 0], [0, 0]]])
    n_visits = torch.tensor([2, 1])
    padded = torch.cat([codes, torch.zeros(2, 2, 2, dtype=torch.long)], dim=1)
    tight = model.training_loss({"codes": codes, "n_visits": n_visits})
    assert torch.allclose(tight, model.training_loss({"codes": padded, "n_visits": n_visits}))


def test_row_sampler_draws_from_the_exact_autoregressive_distribution():
    """Compare sample_row's row frequencies with the probability of every possible row: each
    column from its conditional, the never-sampled ones ([PAD], [UNK], start) held at 0."""
    torch.manual_seed(0)
    model = small_halo()
    width, n_embd = model.row_width, model.hparams.n_embd
    # Hand-set strong within-row dependencies: layer 1 passes [h; x] through, layer 2 makes
    # logit_j = sum_{k<j} A[j, k] x_k with |A| = 2.5, so column 0 is a fair coin and every
    # later column is nearly decided by the ones before it.
    dependence = 2.5 * torch.sign(torch.randn(width, width)).tril(diagonal=-1)
    with torch.no_grad():
        model.fine.layer1.weight.copy_(torch.eye(n_embd + width))
        model.fine.layer1.bias.zero_()
        model.fine.layer2.weight.zero_()
        model.fine.layer2.weight[n_embd - 1 : -1, n_embd:] = dependence
        model.fine.layer2.bias.zero_()
    history = torch.randn(1, n_embd)
    all_rows = torch.tensor(list(itertools.product([0.0, 1.0], repeat=width)))
    never = torch.zeros(width, dtype=torch.bool)
    never[[0, 1, model.start_column]] = True
    assert sorted(model.never_sampled) == never.nonzero().squeeze(1).tolist()
    with torch.no_grad():
        log_p = torch.nn.functional.logsigmoid(model.fine(history.expand(len(all_rows), -1), all_rows))
        log_not_p = torch.nn.functional.logsigmoid(-model.fine(history.expand(len(all_rows), -1), all_rows))
        log_terms = (all_rows * log_p + (1 - all_rows) * log_not_p).masked_fill(never, 0.0)
        exact = torch.exp(log_terms.sum(dim=1)) * (all_rows[:, never] == 0).all(dim=1)
        n = 20000
        generator = torch.Generator().manual_seed(1)
        drawn = model.sample_row(history.expand(n, -1), generator)
    assert torch.isclose(exact.sum(), torch.tensor(1.0), atol=1e-5)
    powers = 2 ** torch.arange(width - 1, -1, -1)
    empirical = torch.bincount((drawn.long() * powers).sum(dim=1), minlength=len(all_rows)).float() / n
    total_variation = 0.5 * (empirical - exact).abs().sum()
    assert total_variation < 0.03  # codes drawn independently give ~0.69


def test_generated_records_never_hold_unknown_or_padding_even_where_the_model_favours_them():
    torch.manual_seed(0)
    model = small_halo(n_ctx=4, n_positions=4)
    with torch.no_grad():  # the fine head's logit of column j is output n_embd - 1 + j of layer 2
        for column in (0, 1):  # [PAD], [UNK]: near-certain without the mask
            model.fine.layer2.bias[model.hparams.n_embd - 1 + column] = 10.0
    table = model.generate(64, seed=0, progress=False)
    assert len(table) > 0
    assert set(table["code"]) <= set(VOCABULARY[2:])


def test_fit_refuses_a_task_longer_than_the_context_before_any_step(tmp_path):
    import lightning.pytorch as pl
    from support import MIMIC3_TINY

    from ehrlab.data.datamodules import EHRDataModule
    from ehrlab.data.sources.mimic3 import MIMIC3Source
    from ehrlab.data.tasks.generation import GenerationTask

    data = GenerationTask(split=[0.4, 0.2, 0.4]).build(MIMIC3Source(MIMIC3_TINY).read(), seed=0)
    longest = max(int(part.visits_per_patient().max()) for part in data.splits.values())
    model = HALO(data.vocabulary, n_layer=1, n_embd=8, n_head=2, n_ctx=longest, n_positions=longest,
                 optimizer=lambda params: torch.optim.Adam(params))
    steps = []

    class CountSteps(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[CountSteps()],
                         default_root_dir=tmp_path)
    with pytest.raises(UserInputError, match=f"task.max_visits={longest - 1}"):
        trainer.fit(model, datamodule=EHRDataModule(data, batch_size=64))
    assert not steps
