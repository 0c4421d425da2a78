"""Baselines' behaviour and input validation of every model."""

from __future__ import annotations

import pytest
import torch

from model_helpers import random_inputs, tiny_models
from set_lightning.models import EGNN, LSTM, MLP, Linear


def test_linear_is_constant_velocity():
    model = Linear(time=0.5)
    x, v, q = random_inputs(dtype=torch.float32)
    xp, vp = model(x, v, q)
    assert torch.allclose(xp, x[:, -1] + 0.5 * v[:, -1]) and torch.equal(vp, v[:, -1])
    assert [n for n, _ in model.named_parameters()] == ["time"]
    assert Linear().time.item() == pytest.approx(0.7)


def test_egnn_uses_only_last_frame():
    torch.manual_seed(0)
    model = EGNN(hidden=8, n_layers=2).double()
    x, v, q = random_inputs(ell=3)
    x2, v2 = x.clone(), v.clone()
    x2[:, :-1] += 5.0
    v2[:, :-1] *= -3.0
    for a, b in zip(model(x, v, q), model(x2, v2, q)):
        assert torch.equal(a, b)


def test_egnn_reference_parameter_count():
    # EGNN_vel(in_node_nf=1, in_edge_nf=2, hidden_nf=64, n_layers=4) has 134020 parameters;
    # the velocity head adds Linear(64, 64) + Linear(64, 2).
    assert sum(p.numel() for p in EGNN().parameters()) == 134020 + 64 * 64 + 64 + 64 * 2 + 2


def test_mlp_uses_last_n_frames():
    torch.manual_seed(0)
    model = MLP(hidden=8, n_frames=2)
    x, v, q = random_inputs(ell=4, dtype=torch.float32)
    x2 = x.clone()
    x2[:, :2] += 1.0  # frames the model does not see
    assert torch.equal(model(x, v, q)[0], model(x2, v, q)[0])
    with pytest.raises(ValueError, match="n_frames"):
        model(x[:, :1], v[:, :1], q)


def test_lstm_sees_whole_history():
    torch.manual_seed(0)
    model = LSTM(hidden=8, n_layers=2, dropout=0.1).eval()
    x, v, q = random_inputs(ell=4, dtype=torch.float32)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.equal(model(x, v, q)[0], model(x2, v, q)[0])


BAD = {
    "x": lambda x, v, q: (x[..., :2], v, q),
    "x ": lambda x, v, q: (x[:, 0], v[:, 0], q),
    "v": lambda x, v, q: (x, v[:, :, :-1], q),
    "charges": lambda x, v, q: (x, v, q[:, :-1]),
    "charges ": lambda x, v, q: (x, v, q[..., 0]),
}


@pytest.mark.parametrize("arg", list(BAD))
@pytest.mark.parametrize("name", list(tiny_models()))
def test_bad_shapes_raise_value_error_naming_argument(name, arg):
    model = tiny_models()[name]()
    x, v, q = random_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=rf"^{arg.strip()} "):
        model(*BAD[arg](x, v, q))
