"""MedSkim (Cui et al., ICDM 2022): code selection, visit skipping, the BPRNN and the skip rate."""

import pytest
import torch
from risk_batches import random_risk_batch

from ehrlab.models.risk.medskim import MedSkimBackbone

VOCAB = 30


def small_backbone() -> MedSkimBackbone:
    torch.manual_seed(0)
    return MedSkimBackbone(VOCAB, visit_dim=16, hidden_dim=16, probe_dim=4, time_dim=8, dropout=0.0,
                           embedding_dropout=0.0).eval()


def make_batch(seed=0):
    return random_risk_batch(VOCAB, n_patients=4, n_visits=5, n_codes=4, seed=seed, pad_last_code=True)


def force(gate_mlp: torch.nn.Sequential, choice: int):
    """Make a two-way gate always pick ``choice`` (0 = keep/read, 1 = skip)."""
    with torch.no_grad():
        gate_mlp[-1].weight.zero_()
        gate_mlp[-1].bias.copy_(torch.tensor([10.0, -10.0] if choice == 0 else [-10.0, 10.0]))


def other_codes(batch):
    changed = dict(batch, codes=batch["codes"].clone())
    changed["codes"] = torch.where(changed["codes"] != 0, (changed["codes"] + 7) % (VOCAB - 2) + 2, 0)
    return changed


def test_skipped_visits_and_deselected_codes_contribute_nothing():
    batch = make_batch()
    backbone = small_backbone()
    force(backbone.visit_skip, 0)
    force(backbone.code_selection, 0)
    with torch.no_grad():
        assert not torch.allclose(backbone(other_codes(batch)), backbone(batch))
        assert backbone.skip_rate(batch) == 0.0  # every real code read
        regulariser = backbone.auxiliary_losses(batch)["skip_regulariser"]
    torch.testing.assert_close(regulariser, torch.tensor(0.1 * 0.3**2))

    for name in ("visit_skip", "code_selection"):  # skip every visit, or drop every code
        backbone = small_backbone()
        force(backbone.visit_skip, 0)
        force(backbone.code_selection, 0)
        force(getattr(backbone, name), 1)
        with torch.no_grad():
            torch.testing.assert_close(backbone(other_codes(batch)), backbone(batch))
            assert backbone.skip_rate(batch) == 1.0


def test_gates_are_random_in_training_and_deterministic_in_eval():
    batch = make_batch(seed=1)
    backbone = small_backbone()
    with torch.no_grad():
        torch.testing.assert_close(backbone(batch), backbone(batch))
        backbone.train()
        torch.manual_seed(1)
        draws = [backbone(batch) for _ in range(4)]
    assert any(not torch.allclose(draws[0], other) for other in draws[1:])


def test_backward_probe_reads_each_patients_real_visits_in_reverse():
    """f_k = the LSTM over u_K..u_k of the patient alone, whatever padding follows."""
    batch = make_batch(seed=2)
    backbone = small_backbone()
    inputs = torch.randn(4, 5, 16)
    with torch.no_grad():
        probes = backbone._backward_probe(inputs, batch["visit_mask"])
        for b, n in enumerate(batch["n_visits"].tolist()):
            expected, _ = backbone.probe(inputs[b, :n].flip(0)[None])
            torch.testing.assert_close(probes[b, :n], expected[0].flip(0))


def test_the_skip_regulariser_is_part_of_the_training_loss_alone_and_under_diffusion():
    """RiskPredictor and MedDiffusion add the backbone's auxiliary loss to their CE terms."""
    import functools

    from ehrlab.models.risk.base import RiskPredictor
    from ehrlab.models.risk.denoiser import ConvDenoiser
    from ehrlab.models.risk.meddiffusion import MedDiffusion

    vocabulary = ["[PAD]", "[UNK]"] + [f"C{i}" for i in range(2, VOCAB)]
    backbone = functools.partial(MedSkimBackbone, visit_dim=16, hidden_dim=16, probe_dim=4, time_dim=8)
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    batch = make_batch(seed=3)
    plain = RiskPredictor(vocabulary, backbone, adam)
    force(plain.backbone.visit_skip, 0)
    force(plain.backbone.code_selection, 0)  # every code read: ρ = 0, regulariser λ ρ*²
    losses = plain.training_loss(batch)
    assert losses["skip_regulariser"].item() == pytest.approx(0.1 * 0.3**2)
    torch.testing.assert_close(losses["loss"], losses["ce"] + losses["skip_regulariser"])

    augmented = MedDiffusion(vocabulary, backbone, adam, diffusion_steps=10, attention_dim=4,
                             denoiser=functools.partial(ConvDenoiser, channels=4))
    losses = augmented.training_loss(batch)
    expected = losses["ce"] + losses["skip_regulariser"] + 0.1 * losses["diffusion_loss"] + 0.5 * losses["synthetic_ce"]
    torch.testing.assert_close(losses["loss"], expected)
