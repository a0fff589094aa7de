"""HALO's pieces: the masked fine module, the causal coarse model, the row layout, the sampler."""

from __future__ import annotations

import itertools

import pytest
import torch

from ehrlab.models.generative.halo import HALO, CoarseTransformer, FineAutoregressiveHead

VOCABULARY = ["[PAD]", "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//250.00"]


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
    codes = torch.tensor([[[1, 3], [2, 0]], [[2, 0], [0, 0]]])
    rows, carries_loss = model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([2, 1])})
    start, end = model.start_column, model.end_column
    assert rows.shape == (2, 3, len(VOCABULARY) + 2)
    assert rows[:, 0].nonzero().tolist() == [[0, start], [1, start]]
    assert rows[0, 1].nonzero().squeeze(1).tolist() == [1, 3]
    assert rows[0, 2].nonzero().squeeze(1).tolist() == [2, end]  # the end flag rides on the last visit
    assert rows[1, 1].nonzero().squeeze(1).tolist() == [2, end]
    assert rows[1, 2].nonzero().squeeze(1).tolist() == [model.pad_column]  # padding row
    assert carries_loss.tolist() == [[True, True], [True, False]]


def test_label_row_is_present_only_with_labels():
    model = small_halo(n_labels=2)
    codes = torch.tensor([[[1, 2]]])
    rows, carries_loss = model.rows_from_batch(
        {"codes": codes, "n_visits": torch.tensor([1]), "labels": torch.tensor([[0.0, 1.0]])}
    )
    assert rows[0, 1].nonzero().squeeze(1).tolist() == [len(VOCABULARY) + 1]
    assert rows[0, 2].nonzero().squeeze(1).tolist() == [1, 2, model.end_column]
    assert carries_loss.tolist() == [[True, True]]
    with pytest.raises(ValueError, match="labels"):
        model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([1])})


def test_long_records_keep_their_last_visits():
    model = small_halo(n_ctx=3, n_positions=3)  # start row + 2 visits
    codes = torch.tensor([[[1], [2], [3]], [[3], [0], [0]]])
    rows, _ = model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([3, 1])})
    assert rows.shape[1] == 3
    assert rows[0, 1, 2] == 1 and rows[0, 2, 3] == 1 and rows[0, 1, 1] == 0
    assert rows[1, 1, 3] == 1 and rows[1, 1, model.end_column] == 1


def test_loss_ignores_padded_visit_slots():
    torch.manual_seed(0)
    model = small_halo(dropout=0.0).eval()
    codes = torch.tensor([[[1, 3], [2, 0]], [[2, 0], [0, 0]]])
    n_visits = torch.tensor([2, 1])
    padded = torch.cat([codes, torch.zeros(2, 2, 2, dtype=torch.long)], dim=1)
    tight = model.training_loss({"codes": codes, "n_visits": n_visits})
    assert torch.allclose(tight, model.training_loss({"codes": padded, "n_visits": n_visits}))


def test_row_sampler_draws_from_the_exact_autoregressive_distribution():
    """Compare sample_row's row frequencies with the probability of every possible row."""
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
    with torch.no_grad():
        log_p = torch.nn.functional.logsigmoid(model.fine(history.expand(len(all_rows), -1), all_rows))
        log_not_p = torch.nn.functional.logsigmoid(-model.fine(history.expand(len(all_rows), -1), all_rows))
        exact = torch.exp((all_rows * log_p + (1 - all_rows) * log_not_p).sum(dim=1))
        n = 20000
        generator = torch.Generator().manual_seed(1)
        drawn = model.sample_row(history.expand(n, -1), generator)
    assert torch.isclose(exact.sum(), torch.tensor(1.0), atol=1e-5)
    powers = 2 ** torch.arange(width - 1, -1, -1)
    empirical = torch.bincount((drawn.long() * powers).sum(dim=1), minlength=len(all_rows)).float() / n
    total_variation = 0.5 * (empirical - exact).abs().sum()
    assert total_variation < 0.03  # codes drawn independently give ~0.69
