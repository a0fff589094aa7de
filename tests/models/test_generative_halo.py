"""HALO's pieces: the masked fine module (blocked and dense), the causal coarse model and its
key/value cache, the row layout, the sampler, the CCS phenotype label row."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch

from ehrlab.data.phenotypes import PHENOTYPES, table_phenotypes
from ehrlab.errors import UserInputError
from ehrlab.models.generative.halo import (
    HALO,
    CoarseTransformer,
    FineAutoregressiveHead,
    MaskedLinear,
)

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


# -- blocked lower-triangular fine head --------------------------------------------------------


@pytest.mark.parametrize(("features", "block_size"), [(13, 4), (13, 13), (37, 8), (600, 512)])
def test_blocked_masked_linear_is_the_dense_masked_product_with_the_same_gradients(features, block_size):
    torch.manual_seed(0)
    blocked = MaskedLinear(features, block_size=block_size).double()
    dense = MaskedLinear(features, block_size=block_size).double()
    dense.load_state_dict(blocked.state_dict())
    dense._dense = True
    inputs = torch.randn(3, 5, features, dtype=torch.double, requires_grad=True)
    dense_inputs = inputs.detach().clone().requires_grad_()
    upstream = torch.randn(3, 5, features, dtype=torch.double)
    out, dense_out = blocked(inputs), dense(dense_inputs)
    (out * upstream).sum().backward()
    (dense_out * upstream).sum().backward()
    assert torch.allclose(out, dense_out, atol=1e-12)
    assert torch.allclose(inputs.grad, dense_inputs.grad, atol=1e-12)
    assert torch.allclose(blocked.weight.grad, dense.weight.grad, atol=1e-12)
    assert torch.allclose(blocked.bias.grad, dense.bias.grad, atol=1e-12)
    assert torch.all(blocked.weight.grad.triu(diagonal=1) == 0)  # masked entries: exactly no gradient


def test_fine_head_keeps_the_dense_layers_parameters_so_old_checkpoints_load():
    fine = FineAutoregressiveHead(5, 7)
    assert {k: tuple(v.shape) for k, v in fine.state_dict().items()} == {
        "layer1.weight": (12, 12), "layer1.bias": (12,), "layer2.weight": (12, 12), "layer2.bias": (12,)}
    dense_era = {k: torch.randn_like(v) for k, v in fine.state_dict().items()}  # above-diagonal entries too
    fine.load_state_dict(dense_era)
    history, row = torch.randn(4, 5), torch.rand(4, 7)
    expected = torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(torch.cat([history, row], 1), dense_era["layer1.weight"].tril(),
                                              dense_era["layer1.bias"])),
        dense_era["layer2.weight"].tril(), dense_era["layer2.bias"])[:, 4:-1]
    assert torch.allclose(fine(history, row), expected, atol=1e-5)


# -- key/value cache ---------------------------------------------------------------------------


def test_cached_coarse_step_matches_the_full_forward_at_every_position():
    torch.manual_seed(0)
    coarse = CoarseTransformer(row_width=6, n_layer=2, n_embd=8, n_head=2, n_positions=10, dropout=0.1,
                               layer_norm_epsilon=1e-5, initializer_range=0.02).eval()
    rows = torch.rand(3, 7, 6).round()
    full = coarse(rows)
    cache = None
    with torch.no_grad():
        for position in range(7):
            history, cache = coarse.step(rows[:, position], position, cache)
            assert torch.allclose(history, full[:, position], atol=1e-5)
    assert cache[0][0].shape == (3, 2, 7, 4)


@pytest.mark.parametrize("labels", [None, ["congestive_heart_failure"]])
def test_cached_and_uncached_sampling_give_identical_tables(labels):
    torch.manual_seed(0)
    model = HALO(LABEL_VOCABULARY, n_layer=2, n_embd=16, n_head=2, n_ctx=8, n_positions=8,
                 labels="none" if labels is None else "ccs_phenotypes")
    with torch.no_grad():  # end flag less likely: longer records, patients finishing at different rows
        model.fine.layer2.bias[model.hparams.n_embd - 1 + model.end_column] = -1.5
    cached = model.generate(64, seed=5, batch_size=32, progress=False, labels=labels)
    model._kv_cache = False
    uncached = model.generate(64, seed=5, batch_size=32, progress=False, labels=labels)
    assert cached["visit_id"].max() >= 3 and cached["subject_id"].nunique() > 50
    pd.testing.assert_frame_equal(cached, uncached)


# -- CCS phenotype labels ----------------------------------------------------------------------

CHF, SEPSIS = "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//038.9"
# Background codes without a phenotype (liveborn, joint pain, syncope, anticoagulant use).
BACKGROUND = ["DIAGNOSIS//ICD//9//V30.00", "DIAGNOSIS//ICD//9//719.46", "DIAGNOSIS//ICD//9//780.2",
              "DIAGNOSIS//ICD//9//V58.61"]
LABEL_VOCABULARY = ["[PAD]", "[UNK]", CHF, SEPSIS, *BACKGROUND]


def planted_phenotype_batches(n_patients: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Half the patients have heart failure: 428.0 in every visit; a quarter septicemia; the
    rest of each visit is background codes."""
    generator = torch.Generator().manual_seed(seed)
    n_visits = torch.randint(1, 3, (n_patients,), generator=generator)
    codes = torch.zeros(n_patients, 2, 4, dtype=torch.long)
    background = torch.randint(4, len(LABEL_VOCABULARY), (n_patients, 2, 2), generator=generator)
    codes[:, :, 2:] = background
    codes[: n_patients // 2, :, 0] = LABEL_VOCABULARY.index(CHF)
    codes[::4, :, 1] = LABEL_VOCABULARY.index(SEPSIS)
    codes[n_visits == 1, 1] = 0
    order = torch.randperm(n_patients, generator=generator)
    codes, n_visits = codes[order], n_visits[order]
    return [{"codes": codes[i : i + batch_size], "n_visits": n_visits[i : i + batch_size]}
            for i in range(0, n_patients, batch_size)]


def labelled_halo() -> HALO:
    return HALO(LABEL_VOCABULARY, n_layer=1, n_embd=16, n_head=2, n_ctx=4, n_positions=4, dropout=0.0,
                labels="ccs_phenotypes", optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


def test_label_row_is_the_or_of_the_patients_phenotypes():
    model = labelled_halo()
    assert model.label_names == PHENOTYPES and model.n_labels == 25 and model.max_visits == 2
    chf, sepsis = LABEL_VOCABULARY.index(CHF), LABEL_VOCABULARY.index(SEPSIS)
    codes = torch.tensor([[[4, 0], [chf, 5]], [[sepsis, 4], [0, 0]]])
    rows, _ = model.rows_from_batch({"codes": codes, "n_visits": torch.tensor([2, 1])})
    label_part = rows[:, 1, model.label_columns]
    assert rows[:, 1, : model.vocab_size].sum() == 0 and rows[:, 1, model.start_column :].sum() == 0
    assert [PHENOTYPES[k] for k in label_part[0].nonzero().squeeze(1)] == ["congestive_heart_failure"]
    assert [PHENOTYPES[k] for k in label_part[1].nonzero().squeeze(1)] == ["septicemia"]


def test_labels_option_is_checked():
    with pytest.raises(UserInputError, match="model.labels"):
        small_halo(labels="icd_chapters")
    with pytest.raises(UserInputError, match="n_labels"):
        small_halo(labels="ccs_phenotypes", n_labels=3)
    assert small_halo().label_names == () and small_halo(n_labels=2).label_names == ("label_0", "label_1")


@pytest.fixture(scope="module")
def trained_labelled(tmp_path_factory):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    model = labelled_halo()
    data = planted_phenotype_batches(256, 64, seed=0)
    trainer = pl.Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path_factory.mktemp("halo"))
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return model, trainer


def phenotype_prevalence(table, name: str, n: int) -> float:
    return float(table_phenotypes(table)[name].sum()) / n


def test_generation_given_a_phenotype_has_it_far_more_often(trained_labelled):
    model, _ = trained_labelled
    n = 200
    asked = model.generate(n, seed=0, progress=False, labels=["congestive_heart_failure"])
    not_asked = model.generate(n, seed=0, progress=False, labels=[])
    free = model.generate(n, seed=0, progress=False)
    chf_asked = phenotype_prevalence(asked, "congestive_heart_failure", n)
    chf_not_asked = phenotype_prevalence(not_asked, "congestive_heart_failure", n)
    chf_free = phenotype_prevalence(free, "congestive_heart_failure", n)
    assert chf_asked > 0.85 and chf_not_asked < 0.15, (chf_asked, chf_not_asked)
    assert 0.3 < chf_free < 0.7  # the sampled label row follows the data (one half)
    assert phenotype_prevalence(asked, "septicemia", n) < 0.15  # not asked for: absent


def test_checkpoint_round_trip_keeps_the_labels(trained_labelled, tmp_path):
    model, trainer = trained_labelled
    path = tmp_path / "halo.ckpt"
    trainer.save_checkpoint(path)
    loaded = HALO.load_from_checkpoint(path, vocabulary=LABEL_VOCABULARY)
    assert loaded.hparams.labels == "ccs_phenotypes" and loaded.label_names == PHENOTYPES
    kwargs = {"seed": 1, "progress": False, "labels": ["septicemia"]}
    pd.testing.assert_frame_equal(loaded.generate(50, **kwargs), model.generate(50, **kwargs))
