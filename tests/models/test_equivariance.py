"""E(n) and permutation equivariance in float64 (eval mode), and its absence in non-equivariant models."""

from __future__ import annotations

import pytest
import torch

from model_helpers import ALL_FLAG_COMBOS, TINY_SET, combo_id, random_inputs, random_orthogonal, tiny_models
from set_lightning.models import SET

TOL = 1e-10


def _model(make, seed=0):
    torch.manual_seed(seed)
    return make().double().eval()


def _transform_errors(model, det, seed=0):
    """(position error, velocity error) of f(Rx + t, Rv) vs R f(x, v) + t."""
    x, v, q = random_inputs(seed=seed)
    rot = random_orthogonal(det, seed=seed + 1)
    shift = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 2)) * 3
    with torch.no_grad():
        xp, vp = model(x, v, q)
        xt, vt = model(x @ rot.T + shift, v @ rot.T, q)
    return (xt - (xp @ rot.T + shift)).abs().max().item(), (vt - vp @ rot.T).abs().max().item()


def _perm_error(model, seed=0):
    x, v, q = random_inputs(n=5, seed=seed)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        xp, vp = model(x, v, q)
        xs, vs = model(x[:, :, perm], v[:, :, perm], q[:, perm])
    return max((xs - xp[:, perm]).abs().max().item(), (vs - vp[:, perm]).abs().max().item())


EQUIVARIANT = [c for c in ALL_FLAG_COMBOS if c["equivariant"]]
NON_EQUIVARIANT = [c for c in ALL_FLAG_COMBOS if not c["equivariant"]]


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
@pytest.mark.parametrize("flags", EQUIVARIANT, ids=combo_id)
def test_set_is_e3_equivariant(flags, det):
    model = _model(lambda: SET(**TINY_SET, **flags))
    assert model.equivariant
    for seed in (0, 1):
        ex, ev = _transform_errors(model, det, seed)
        assert ex < TOL and ev < TOL, (ex, ev)


@pytest.mark.parametrize("flags", NON_EQUIVARIANT, ids=combo_id)
def test_set_non_equivariant_breaks_rotations_but_not_translations(flags):
    model = _model(lambda: SET(**TINY_SET, **flags))
    assert not model.equivariant
    ex, ev = _transform_errors(model, 1.0)
    assert max(ex, ev) > 1e-3
    # translation alone is still exact: inputs enter as differences or centred coordinates
    x, v, q = random_inputs()
    with torch.no_grad():
        xp, vp = model(x, v, q)
        xt, vt = model(x + torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype), v, q)
    assert (xt - xp - torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)).abs().max() < 1e-9
    assert (vt - vp).abs().max() < 1e-9


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
@pytest.mark.parametrize("name", ["egnn", "egnn_opts", "linear"])
def test_equivariant_baselines(name, det):
    model = _model(tiny_models()[name])
    if name == "linear":
        with torch.no_grad():
            model.time.fill_(0.83)
    assert model.equivariant
    ex, ev = _transform_errors(model, det)
    assert ex < TOL and ev < TOL, (ex, ev)


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_non_equivariant_baselines_break_rotations(name):
    model = _model(tiny_models()[name])
    assert not model.equivariant
    ex, ev = _transform_errors(model, 1.0)
    assert max(ex, ev) > 1e-3


@pytest.mark.parametrize("name", list(tiny_models()))
def test_permutation_equivariance_all_models(name):
    assert _perm_error(_model(tiny_models()[name])) < TOL


@pytest.mark.parametrize("flags", ALL_FLAG_COMBOS, ids=combo_id)
def test_set_permutation_equivariance_all_flags(flags):
    assert _perm_error(_model(lambda: SET(**TINY_SET, **flags))) < TOL


def test_random_orthogonal_helper():
    for det in (1.0, -1.0):
        r = random_orthogonal(det, seed=3)
        assert torch.allclose(r @ r.T, torch.eye(3, dtype=r.dtype), atol=1e-12)
        assert abs(torch.linalg.det(r).item() - det) < 1e-12


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
@pytest.mark.parametrize("name", ["egnn", "set"])
def test_clamped_coordinate_update_stays_equivariant(name, det, monkeypatch):
    """The coordinate-message clamp bounds each message's norm, so it keeps E(3) equivariance when active."""
    from set_lightning.models import egcl

    model = _model(tiny_models()[name])
    x, v, q = random_inputs(seed=0)
    with torch.no_grad():
        free = model(x, v, q)
    monkeypatch.setattr(egcl, "TRANS_CLAMP", 1e-6)  # every coordinate message is longer than this: all clamped
    with torch.no_grad():
        clamped = model(x, v, q)
    assert (clamped[0] - free[0]).abs().max() > 1e-4  # the clamp is active
    ex, ev = _transform_errors(model, det)
    assert ex < TOL and ev < TOL, (ex, ev)
