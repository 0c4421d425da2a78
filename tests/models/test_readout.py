"""SET's readout option: ``mean`` (the time average) and ``last`` (the last frame)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import TINY_SET, random_inputs, random_orthogonal

from set_lightning.errors import UserError
from set_lightning.models import SET


def _set(seed=0, **kw):
    torch.manual_seed(seed)
    return SET(**{**TINY_SET, "dropout": 0.0, **kw}).double().eval()


@pytest.mark.parametrize("temporal_attention", [True, False])
@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
def test_last_readout_is_e3_equivariant(det, temporal_attention):
    model = _set(readout="last", temporal_attention=temporal_attention)
    x, v, q = random_inputs(seed=4)
    rot = random_orthogonal(det, seed=5)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    with torch.no_grad():
        xp, vp = model(x, v, q)
        xt, vt = model(x @ rot.T + shift, v @ rot.T, q)
    assert (xt - (xp @ rot.T + shift)).abs().max() < 1e-10
    assert (vt - vp @ rot.T).abs().max() < 1e-10
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        xs, vs = model(x[:, :, perm], v[:, :, perm], q[:, perm])
    assert (xs - xp[:, perm]).abs().max() < 1e-10 and (vs - vp[:, perm]).abs().max() < 1e-10


def test_readouts_agree_on_one_frame_and_differ_on_several():
    """With L = 1 the time average is the last frame (same weights, same function); with L > 1 not."""
    mean, last = _set(readout="mean"), _set(readout="last")
    last.load_state_dict(mean.state_dict())  # same parameters: the readout adds none
    one = random_inputs(ell=1, seed=1)
    many = random_inputs(ell=3, seed=1)
    with torch.no_grad():
        assert torch.allclose(mean(*one)[0], last(*one)[0], atol=1e-12, rtol=0)
        assert (mean(*many)[0] - last(*many)[0]).abs().max() > 1e-3


def _fit_loss(readout: str, steps: int = 150) -> float:
    """Train SET without temporal attention on a task that needs the last frame: ``x(L) + 0.5 v(L)``.

    The earlier frames are unrelated noise, so only a model that reads frame L can fit it.
    """
    torch.manual_seed(0)
    model = SET(hidden=16, n_blocks=1, n_spatial_layers=1, n_heads=2, dropout=0.0, temporal_attention=False,
                readout=readout)
    x, v, q = random_inputs(b=32, ell=4, n=4, dtype=torch.float32, seed=3)
    target = x[:, -1] + 0.5 * v[:, -1]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x, v, q)[0] - target).square().mean()
        loss.backward()
        opt.step()
    return loss.item()


def test_last_readout_fits_what_needs_x_L_without_temporal_attention():
    last, mean = _fit_loss("last"), _fit_loss("mean")
    # the mean readout cannot isolate v(L) from the frames' average: it stays near the task's variance
    assert last < 0.1 * mean, (last, mean)
    assert last < 5e-3, last


def test_unknown_readout_is_one_error_naming_the_allowed_values():
    with pytest.raises(UserError, match=r"readout must be one of \['mean', 'last'\]"):
        SET(**TINY_SET, readout="first")
