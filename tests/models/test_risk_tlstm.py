"""T-LSTM (Baytas et al., KDD 2017): the elapsed-time discount of the short-term memory."""

import math

import torch

from ehrlab.models.risk.tlstm import TLSTMBackbone, elapsed_time_discount


def _reference(backbone, visits, gaps_in_days):
    """The T-LSTM equations of §3.1 written out per visit, g(Δt) = 1/log(e + Δt) of days."""
    hidden_dim = backbone.hidden_dim
    W, b = backbone.input_gates.weight, backbone.input_gates.bias
    U = backbone.recurrent_gates.weight
    W_d, b_d = backbone.decomposition.weight, backbone.decomposition.bias
    h = c = torch.zeros(visits.shape[0], hidden_dim)
    states = []
    for k in range(visits.shape[1]):
        short = torch.tanh(c @ W_d.T + b_d)
        adjusted = (c - short) + short / torch.log(math.e + gaps_in_days[:, k : k + 1])
        z = visits[:, k] @ W.T + b + h @ U.T
        f, i, o, candidate = (z[:, n * hidden_dim : (n + 1) * hidden_dim] for n in range(4))
        c = torch.sigmoid(f) * adjusted + torch.sigmoid(i) * torch.tanh(candidate)
        h = torch.sigmoid(o) * torch.tanh(c)
        states.append(h)
    return torch.stack(states, dim=1)


def test_discount_function():
    gaps = torch.tensor([0.0, math.e**2 - math.e, 30.0, 365.0])
    torch.testing.assert_close(elapsed_time_discount(gaps)[:2], torch.tensor([1.0, 0.5]))
    assert (elapsed_time_discount(gaps).diff() < 0).all()


def test_encode_matches_the_paper_equations_with_days():
    torch.manual_seed(0)
    backbone = TLSTMBackbone(vocab_size=10, visit_dim=6, hidden_dim=5).eval()
    visits = torch.randn(3, 4, 6)
    gaps = torch.tensor([[0.0, 1.0, 40.0, 400.0], [0.0, 0.0, 7.0, 2.0], [0.0, 90.0, 0.0, 0.0]])
    with torch.no_grad():
        got = backbone.encode(visits, {"time_delta": gaps})
        torch.testing.assert_close(got, _reference(backbone, visits, gaps))
        # time_unit_days rescales the gap that g sees.
        months = TLSTMBackbone(vocab_size=10, visit_dim=6, hidden_dim=5, time_unit_days=30.0).eval()
        months.load_state_dict(backbone.state_dict())
        torch.testing.assert_close(months.encode(visits, {"time_delta": gaps}), _reference(backbone, visits, gaps / 30))


def test_zero_gaps_give_a_plain_lstm_and_longer_gaps_forget_more_short_term_memory():
    """With Δt = 0, g = 1 and C* = C: T-LSTM is a standard LSTM. With a longer gap the adjusted
    memory carried into the visit keeps less of the short-term part."""
    torch.manual_seed(1)
    backbone = TLSTMBackbone(vocab_size=10, visit_dim=6, hidden_dim=5).eval()
    lstm = torch.nn.LSTM(6, 5, batch_first=True)
    f, i, o, g = backbone.input_gates.weight.chunk(4)
    fb, ib, ob, gb = backbone.input_gates.bias.chunk(4)
    uf, ui, uo, ug = backbone.recurrent_gates.weight.chunk(4)
    with torch.no_grad():  # PyTorch's gate order is i, f, g, o
        lstm.weight_ih_l0.copy_(torch.cat([i, f, g, o]))
        lstm.bias_ih_l0.copy_(torch.cat([ib, fb, gb, ob]))
        lstm.weight_hh_l0.copy_(torch.cat([ui, uf, ug, uo]))
        lstm.bias_hh_l0.zero_()
        visits = torch.randn(2, 5, 6)
        same_day = backbone.encode(visits, {"time_delta": torch.zeros(2, 5)})
        torch.testing.assert_close(same_day, lstm(visits)[0])
        # Second visit after 0, 30 or 3,000 days: only h_2 onwards moves, and the change grows with the gap.
        hs = [backbone.encode(visits, {"time_delta": torch.tensor([[0.0, gap, 0, 0, 0]] * 2)}) for gap in (0, 30, 3000)]
    torch.testing.assert_close(hs[1][:, 0], hs[0][:, 0])
    change_30 = (hs[1][:, 1] - hs[0][:, 1]).norm()
    change_3000 = (hs[2][:, 1] - hs[0][:, 1]).norm()
    assert 0 < change_30 < change_3000
