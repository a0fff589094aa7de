"""LSAN (Ye et al., CIKM 2020): code attention, the global/local pathways and visit attention."""

import torch
from risk_batches import random_risk_batch

from ehrlab.models.risk.lsan import LSANBackbone

VOCAB = 30


def small_backbone(**kwargs) -> LSANBackbone:
    torch.manual_seed(0)
    return LSANBackbone(VOCAB, visit_dim=16, hidden_dim=32, dropout=0.0, embedding_dropout=0.0, **kwargs).eval()


def test_visit_embedding_is_the_code_attention_average():
    """e_k = Σ_j softmax_j(MLP_c(x_kj)) x_kj over the visit's real codes, by hand."""
    backbone = small_backbone()
    batch = random_risk_batch(VOCAB, n_patients=3, n_visits=4, n_codes=4, seed=0, pad_last_code=True)
    with torch.no_grad():
        visits = backbone.embed_visits(batch)
        b, k = 0, 1
        codes = batch["codes"][b, k]
        real = backbone.code_embedding.weight[codes[codes != 0]]
        weights = torch.softmax(backbone.code_attention(real).squeeze(-1), dim=0)
        expected = (weights[:, None] * real).sum(dim=0)
    torch.testing.assert_close(visits[b, k], expected)


def test_local_pathway_sees_neighbours_only_and_global_pathway_sees_all():
    """Changing visit 1 moves the Transformer half of every h_k, but the Conv1d half (kernel 3)
    only at visits 1 and 2; the visit weights β sum to 1 over the real visits."""
    backbone = small_backbone()
    batch = random_risk_batch(VOCAB, n_patients=2, n_visits=6, n_codes=3, seed=1)
    changed = dict(batch, codes=batch["codes"].clone())
    changed["codes"][0, 0] = torch.tensor([5, 6, 7])
    with torch.no_grad():
        before = backbone.encode(backbone.embed_visits(batch), batch)[0]
        after = backbone.encode(backbone.embed_visits(changed), changed)[0]
        beta = backbone.visit_weights(before[None], {"visit_mask": batch["visit_mask"][:1]})
    half = backbone.hidden_dim // 2
    global_moved = (after[:, :half] - before[:, :half]).abs().amax(dim=-1) > 1e-6
    local_moved = (after[:, half:] - before[:, half:]).abs().amax(dim=-1) > 1e-6
    assert global_moved.all()
    assert local_moved.tolist() == [True, True, False, False, False, False]
    torch.testing.assert_close(beta.sum(), torch.tensor(1.0))
