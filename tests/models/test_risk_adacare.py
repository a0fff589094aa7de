"""AdaCare (Ma et al., AAAI 2020): the multi-scale causal receptive field, the recalibration and sparsemax."""

import torch

from ehrlab.models.risk.adacare import AdaCareBackbone, Recalibration, sparsemax


def test_dilated_causal_convolutions_see_visits_k_and_k_minus_each_dilation():
    """ξ_k of dilation d depends on e_k and e_{k−d} only (kernel 2): perturbing visit j moves
    exactly the outputs k ∈ {j, j+d} of that scale."""
    torch.manual_seed(0)
    backbone = AdaCareBackbone(vocab_size=10, visit_dim=8, hidden_dim=8, kernel_num=4, dropout=0.0).eval()
    visits = torch.randn(1, 12, 8)
    perturbed = visits.clone()
    j = 2
    perturbed[0, j] += 3.0
    with torch.no_grad():
        before = backbone.multiscale_features(visits)[0]
        after = backbone.multiscale_features(perturbed)[0]
    for scale, dilation in enumerate((1, 3, 5)):
        channels = slice(4 * scale, 4 * (scale + 1))
        moved = {k for k in range(12) if not torch.allclose(after[k, channels], before[k, channels])}
        assert moved <= {j, j + dilation} and j in moved, (dilation, moved)
    # Before the kernel reaches back past the first visit, zero padding: ξ_0 = ReLU(W_1 e_0 + b).
    convolution = backbone.convolutions[2]
    expected = torch.relu(visits[0, 0] @ convolution.weight[:, :, 1].T + convolution.bias)
    torch.testing.assert_close(before[0, 8:12], expected.detach())


def test_recalibration_is_squeeze_excitation_of_the_current_visit():
    torch.manual_seed(1)
    layer = Recalibration(channels=8, reduction=4)
    features = torch.randn(3, 5, 8)
    hidden = torch.relu(features @ layer.compress.weight.T + layer.compress.bias)
    scales = torch.sigmoid(hidden @ layer.excite.weight.T + layer.excite.bias)
    torch.testing.assert_close(layer(features), features * scales)


def test_sparsemax_is_the_projection_onto_the_simplex():
    scores = torch.tensor([[2.0, 1.0, -1.0], [0.1, 0.1, 0.1], [5.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(sparsemax(scores), expected)
    close = sparsemax(torch.tensor([0.6, 0.4, -2.0]))
    torch.testing.assert_close(close, torch.tensor([0.6, 0.4, 0.0]))
    random = sparsemax(torch.randn(50, 16) * 3)
    assert (random >= 0).all()
    torch.testing.assert_close(random.sum(-1), torch.ones(50))
