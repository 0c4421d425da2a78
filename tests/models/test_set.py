"""SET: every flag combination trains, deep stacks stay finite, tiny models overfit, N-independence."""

from __future__ import annotations

import pytest
import torch

from model_helpers import ALL_FLAG_COMBOS, TINY_SET, combo_id, random_inputs, tiny_models
from set_lightning.models import EGNN, SET


def _loss(model, x, v, q):
    xp, vp = model(x, v, q)
    return (xp**2).mean() + (vp**2).mean(), xp, vp


@pytest.mark.parametrize("flags", ALL_FLAG_COMBOS, ids=combo_id)
def test_every_flag_combination_trains(flags):
    torch.manual_seed(0)
    model = SET(**TINY_SET, **flags).train()
    x, v, q = random_inputs(b=3, ell=4, n=5, dtype=torch.float32)
    loss, xp, vp = _loss(model, x, v, q)
    assert xp.shape == vp.shape == (3, 5, 3)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.step()
    assert torch.isfinite(_loss(model, x, v, q)[0])


@pytest.mark.parametrize("flags", ALL_FLAG_COMBOS, ids=combo_id)
def test_deep_stack_stays_finite(flags):
    torch.manual_seed(0)
    model = SET(hidden=16, n_blocks=10, n_spatial_layers=2, n_heads=2, norm_diff=True, tanh=True, **flags)
    x, v, q = random_inputs(b=2, ell=3, n=6, dtype=torch.float32, scale=10.0)
    loss, xp, vp = _loss(model, x, v, q)
    assert torch.isfinite(xp).all() and torch.isfinite(vp).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _physics_targets(x, v, q):
    """A smooth, equivariant function of the last frame: one step of softened Coulomb dynamics."""
    x0, v0 = x[:, -1], v[:, -1]
    d = x0.unsqueeze(-2) - x0.unsqueeze(-3)
    f = (q.unsqueeze(-2) * q.unsqueeze(-3) * d / ((d**2).sum(-1, keepdim=True) + 0.5) ** 1.5).sum(-2)
    return x0 + v0 + 0.05 * f, v0 + 0.1 * f


@pytest.mark.parametrize(
    "make",
    [lambda: SET(hidden=16, n_blocks=1, n_spatial_layers=1, n_heads=2, dropout=0.0),
     lambda: EGNN(hidden=16, n_layers=2)],
    ids=["set", "egnn"],
)
def test_tiny_model_overfits(make):
    torch.manual_seed(0)
    model = make()
    x, v, q = random_inputs(b=4, ell=3, n=5, dtype=torch.float32, seed=5)
    xt, vt = _physics_targets(x, v, q)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        xp, vp = model(x, v, q)
        loss = ((xp - xt) ** 2).mean() + ((vp - vt) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


@pytest.mark.parametrize("name", list(tiny_models()))
def test_parameter_count_independent_of_n_and_l(name):
    torch.manual_seed(0)
    model = tiny_models()[name]()
    count = sum(p.numel() for p in model.parameters())
    for n, ell in [(2, 2), (7, 3), (12, 2)] + ([] if name == "mlp" else [(3, 1)]):  # MLP(n_frames=2) needs L >= 2
        xp, vp = model(*random_inputs(b=2, ell=ell, n=n, dtype=torch.float32))
        assert xp.shape == vp.shape == (2, n, 3)
    assert sum(p.numel() for p in model.parameters()) == count
    # a freshly built model has the same count: no N-dependent (lazy) parameters
    torch.manual_seed(0)
    assert sum(p.numel() for p in tiny_models()[name]().parameters()) == count


@pytest.mark.parametrize("name", list(tiny_models()))
def test_bf16_autocast_forward(name):
    torch.manual_seed(0)
    model = tiny_models()[name]()
    x, v, q = random_inputs(b=2, ell=3, n=4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xp, vp = model(x, v, q)
    assert xp.shape == vp.shape == (2, 4, 3)
    assert torch.isfinite(xp.float()).all() and torch.isfinite(vp.float()).all()


def test_bf16_autocast_all_set_flags():
    x, v, q = random_inputs(b=2, ell=3, n=4, dtype=torch.float32)
    for flags in ALL_FLAG_COMBOS:
        model = SET(**TINY_SET, **flags)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xp, vp = model(x, v, q)
        assert torch.isfinite(xp.float()).all() and torch.isfinite(vp.float()).all(), flags


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = SET(**{**TINY_SET, "dropout": 0.5})
    x, v, q = random_inputs(dtype=torch.float32)
    model.eval()
    a, b = model(x, v, q)[0], model(x, v, q)[0]
    assert torch.equal(a, b)
    model.train()
    assert not torch.equal(model(x, v, q)[0], model(x, v, q)[0])


def test_set_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="n_heads"):
        SET(hidden=10, n_heads=4)
    with pytest.raises(ValueError):
        SET(n_blocks=0)


def test_default_set_flags():
    model = SET()
    assert model.equivariant and len(model.blocks) == 2 and len(model.blocks[0].egcls) == 2
    assert model.blocks[0].etal is not None and not model.blocks[0].etal.adjacency
    assert model.blocks[0].egcls[0].att is not None
    assert SET(equivariant=False).equivariant is False and SET.equivariant is True
