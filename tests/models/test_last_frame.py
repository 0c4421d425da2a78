"""``readout="last"`` reads only the last frame, so SET's last block computes only the last frame
(ETAL's last-frame queries, the feed-forward on the last frame): the same numbers as the full model's
last frame, dropout masks and random state included."""

from __future__ import annotations

import itertools

import pytest
import torch
from model_helpers import random_inputs

from set_lightning.models import ETAL, SET
from set_lightning.models.base import every_output_computed
from set_lightning.models.layers import dropout_part

TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_part_draws_the_full_mask(dtype, p):
    """Bit for bit ``dropout(full)[part]``, and the generator is left where the full dropout leaves it."""
    full = torch.randn(6, 10, 5, 8).to(dtype)
    part = (slice(None), -1)
    torch.manual_seed(3)
    want = torch.nn.functional.dropout(full, p, True)[part]
    after_full = torch.rand(4)
    torch.manual_seed(3)
    got = dropout_part(full[part].clone(), p, True, tuple(full.shape), part)
    assert torch.equal(got, want)
    assert torch.equal(torch.rand(4), after_full)
    assert 0 < (got == 0).sum() < got.numel()  # some units dropped, not all


def test_dropout_part_without_dropout_is_the_identity():
    x = torch.randn(4, 3)
    state = torch.get_rng_state()
    assert dropout_part(x, 0.3, False, (4, 2, 3), (slice(None), -1)) is x
    assert dropout_part(x, 0.0, True, (4, 2, 3), (slice(None), -1)) is x
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn


@pytest.mark.parametrize("equivariant, adjacency", list(itertools.product([True, False], repeat=2)))
def test_etal_last_frame_is_the_last_frame_of_the_full_layer(equivariant, adjacency):
    b, ell, n, d = 3, 4, 5, 8
    torch.manual_seed(0)
    layer = ETAL(hidden=d, n_heads=2, dropout=0.3, equivariant=equivariant, adjacency=adjacency).double().train()
    g = torch.Generator().manual_seed(1)
    h, x, u = (torch.randn(b * ell, n, c, generator=g, dtype=torch.float64, requires_grad=True) for c in (d, 3, 3))
    outs = []
    for last_frame in (True, False):
        torch.manual_seed(7)
        out = layer(h, x, u, b, last_frame=last_frame)
        if not last_frame:
            out = tuple(z.view(b, ell, n, -1)[:, -1] for z in out)
        grads = torch.autograd.grad(sum((z * (i + 1.5)).sum() for i, z in enumerate(out)), [h, x, u])
        outs.append((out, grads, torch.rand(2)))
    (o1, g1, s1), (o2, g2, s2) = outs
    assert o1[0].shape == (b, n, d) and o1[1].shape == (b, n, 3)
    for a, r in zip((*o1, *g1), (*o2, *g2)):
        torch.testing.assert_close(a, r, **TOL)
    assert torch.equal(s1, s2)


SET_FLAGS = [dict(zip(("equivariant", "temporal_attention", "adjacency", "activation_checkpointing"), c))
             for c in itertools.product([True, False], repeat=4) if c[1] or not c[2]]


@pytest.mark.parametrize("graph", [dict(graph="complete"), dict(graph="knn", k=2), dict(graph="given")],
                         ids=["complete", "knn", "given"])
@pytest.mark.parametrize("flags", SET_FLAGS, ids=lambda f: "-".join(k[:4] for k, v in f.items() if v) or "none")
def test_set_last_readout_equals_every_frame_computed(flags, graph):
    """In training (dropout 0.3), float64: predictions and every gradient equal the readout of the model
    that runs its last block on every frame (:func:`every_output_computed`) to 1e-10, with the same
    random numbers drawn (the generator state after the step is the same)."""
    if flags["adjacency"] and graph["graph"] != "complete":
        pytest.skip("adjacency needs the complete graph")
    torch.manual_seed(0)
    model = SET(hidden=8, n_blocks=2, n_spatial_layers=1, n_heads=2, dropout=0.3, readout="last",
                **flags, **graph).double().train()
    x, v, q = random_inputs(b=3, ell=4, n=5)
    x.requires_grad_(True)
    extra = {}
    if graph["graph"] == "given":
        adj = (torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(2)) < 0.5).double()
        extra["edge_attr"] = adj * (1 - torch.eye(5, dtype=torch.float64))
    params = [p for p in model.parameters()]
    results = []
    for skip in (True, False):
        torch.manual_seed(11)
        model.skip_unread = skip
        out = model(x, v, q, **extra)
        grads = torch.autograd.grad((out[0] ** 2).sum() + (out[1] * 1.5).sum(), [x, *params], allow_unused=True)
        results.append((out, grads, torch.rand(2)))
    (o1, g1, s1), (o2, g2, s2) = results
    for a, r in zip(o1, o2):
        torch.testing.assert_close(a, r, **TOL)
    for a, r in zip(g1, g2):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, **TOL)
    assert torch.equal(s1, s2)


def test_every_output_computed_restores_the_shortcut():
    model = SET(hidden=8, n_blocks=1, n_spatial_layers=1, n_heads=2, readout="last")
    with every_output_computed(model):
        assert model.skip_unread is False
    assert model.skip_unread is True


def test_the_compute_unit_counts_every_frame_and_the_shortcut_saves_work():
    """``training_flops`` (the study's budget unit) counts the defined function, so a budget buys the same
    steps as before the shortcut; the shortcut's own step does fewer matmul FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from set_lightning.compute import training_flops

    shape = dict(batch=4, history=5, n=4)
    last = SET(hidden=16, n_blocks=2, n_spatial_layers=1, n_heads=2, readout="last")
    mean = SET(hidden=16, n_blocks=2, n_spatial_layers=1, n_heads=2, readout="mean")
    counted = training_flops(last, **shape)
    assert counted == training_flops(mean, **shape)  # same layers on every frame; the heads read (B, N, H) alike
    x, v, q = random_inputs(b=4, ell=5, n=4, dtype=torch.float32)
    with FlopCounterMode(display=False) as step:
        out = last(x, v, q)
        (out[0].square().mean() + out[1].square().mean()).backward()
    assert step.get_total_flops() < 0.9 * counted


def test_a_block_takes_the_last_frame_the_way_its_layers_allow():
    """With ETAL a block computes the last frame from every frame (``last_frame``); without, it is given
    the last frame itself (``n_frames``); the other pairing is refused rather than computed wrongly."""
    from set_lightning.models import SETBlock

    h, x, u = torch.randn(6, 4, 8), torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    edges = torch.randn(6, 4, 3, 2)
    with pytest.raises(ValueError, match="last_frame needs the block's ETAL"):
        SETBlock(hidden=8, n_spatial_layers=1, n_heads=2, temporal_attention=False)(h, x, u, edges, 2, last_frame=True)
    with pytest.raises(ValueError, match="last_frame needs the block's ETAL"):
        SETBlock(hidden=8, n_spatial_layers=1, n_heads=2)(h, x, u, edges, 2, n_frames=3)
