"""The optimised EGCL / ETAL compute exactly the straightforward dense formulas (forward and gradients).

The references below are the plain implementations (dense ``N x N`` edges with a masked diagonal,
concatenated pair features, one ``Linear`` per head), evaluated with the same modules' parameters.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from model_helpers import random_inputs
from set_lightning.models import EGCL, ETAL, SET
from set_lightning.models.layers import (
    EPS, Graph, PairLinear, VectorOut, add_outer_, gather_nodes, neighbour_index, sinusoidal_encoding,
)


def reference_egcl(layer: EGCL, h, x, v, edge_attr, adj=None):
    """EGCL on dense (G, N, N) pair tensors, the edges those of ``adj`` (default: all i != j) by masking."""
    n = x.shape[-2]
    hn = h if layer.norm is None else layer.norm(h)
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    radial = (diff**2).sum(-1, keepdim=True)
    if layer.norm_diff:
        diff = diff / (torch.sqrt(radial + EPS) + 1.0)
    e = torch.cat([radial, edge_attr] + ([] if layer.equivariant else [diff]), dim=-1)
    pair = layer.edge_in
    pre = pair.lin_a(hn).unsqueeze(-2) + pair.lin_b(hn).unsqueeze(-3) + pair.lin_e(e)
    m = layer.edge_out(pre)
    mask = ~torch.eye(n, dtype=torch.bool).unsqueeze(-1)
    if adj is not None:
        mask = mask & adj.unsqueeze(-1)
    degree = mask.sum(-2, keepdim=True).clamp(min=1)
    if layer.att is not None:
        a = layer.att(m).masked_fill(~mask, float("-inf")).softmax(dim=-2).nan_to_num(0.0)  # no edges: no weight
        g, _, _, d = m.shape
        agg = (a.unsqueeze(-1) * m.view(g, n, n, layer.n_heads, d // layer.n_heads)).sum(-3).flatten(-2)
        w = a.mean(-1, keepdim=True)
    else:
        agg = (m * mask).sum(-2)
        w = mask.to(m.dtype) / degree
    x = x + layer.coords_weight * (w * layer.phi_x(m, diff.unsqueeze(-2))).sum(-2)
    if layer.phi_v is not None:
        x = x + layer.phi_v(hn, v.unsqueeze(-2))
    out = layer.node_mlp(torch.cat([hn, agg], dim=-1))
    return (h + out if layer.recurrent else out), x


def reference_etal(layer: ETAL, h, x, u, batch):
    g, n, d = h.shape
    b, ell = batch, g // batch
    if layer.adjacency:
        fold = lambda z: z.reshape(b, ell * n, z.shape[-1])  # noqa: E731
        unfold = lambda z: z.reshape(g, n, z.shape[-1])  # noqa: E731
        t_idx = torch.arange(ell).repeat_interleave(n)
        n_idx = torch.arange(n).repeat(ell)
    else:
        fold = lambda z: z.reshape(b, ell, n, z.shape[-1]).transpose(1, 2).reshape(b * n, ell, z.shape[-1])  # noqa: E731
        unfold = lambda z: z.reshape(b, n, ell, z.shape[-1]).transpose(1, 2).reshape(g, n, z.shape[-1])  # noqa: E731
        t_idx = torch.arange(ell)
        n_idx = torch.zeros(ell, dtype=torch.long)
    ht, xt, ut = fold(h), fold(x), fold(u)
    bt, t = ht.shape[:2]
    hn = layer.norm(ht)
    hq = hn + sinusoidal_encoding(ell - 1 - t_idx, d).to(hn.dtype)
    rel = xt.unsqueeze(-3) - xt.unsqueeze(-2)
    r2 = (rel**2).sum(-1, keepdim=True)
    same = (n_idx[:, None] == n_idx[None, :]).to(r2.dtype).unsqueeze(-1).expand_as(r2)
    geo = torch.cat([torch.log1p(r2), same], dim=-1)
    q, k = layer.qk(hq).view(bt, t, 2, layer.n_heads, d // layer.n_heads).permute(2, 0, 3, 1, 4)
    val = layer.val(hn).view(bt, t, layer.n_heads, d // layer.n_heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // layer.n_heads)
    a = (scores + layer.geo(geo).permute(0, 3, 1, 2)).softmax(-1)
    o = (a @ val).transpose(1, 2).reshape(bt, t, d)
    ht = ht + layer.drop(layer.out(o))
    abar = a.mean(1).unsqueeze(-1)
    pair = layer.pair
    p = nn.functional.silu(pair.lin_a(hq).unsqueeze(-2) + pair.lin_b(hq).unsqueeze(-3) + pair.lin_e(geo))
    if layer.norm_diff:
        rel = rel / (torch.sqrt(r2 + EPS) + 1.0)
    xt = xt + (abar * layer.phi_x(p, rel.unsqueeze(-2))).sum(-2)
    us = ut.unsqueeze(-3).expand(bt, t, t, 3).unsqueeze(-2)
    ut = ut + (abar * layer.phi_u(p, us)).sum(-2)
    return unfold(ht), unfold(xt), unfold(ut)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial values for every parameter (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _compare(fast, ref, inputs):
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    out_f, out_r = fast(), ref()
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    w = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype) for i, o in enumerate(out_f)]
    gf = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out_f, w)), leaves)
    gr = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out_r, w)), leaves)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


EGCL_FLAGS = [dict(zip(("attention", "equivariant", "pre_norm", "norm_diff", "tanh"), c))
              for c in itertools.product([True, False], repeat=5)]


@pytest.mark.parametrize("flags", EGCL_FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
@pytest.mark.parametrize("n", [2, 5])
def test_egcl_matches_dense_reference(flags, n):
    torch.manual_seed(0)
    layer = EGCL(hidden=8, edge_dim=2, n_heads=2, coords_range=3.0, **flags).double()
    _randomise(layer)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(3, n, n, 2, generator=g, dtype=torch.float64)
    params = list(layer.parameters())
    complete = Graph.complete(n)
    _compare(lambda: layer(h, x, v, complete.pick(ea)), lambda: reference_egcl(layer, h, x, v, ea),
             [h, x, v, *params])


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("kind", ["knn", "given"])
def test_egcl_on_sparse_graphs_matches_the_masked_dense_reference(kind, attention):
    """k-NN and given (padded, masked; one node without edges) graphs: values and gradients equal the
    dense layer with the non-edges masked out."""
    torch.manual_seed(0)
    layer = EGCL(hidden=8, edge_dim=2, n_heads=2, attention=attention, pre_norm=True).double()
    _randomise(layer)
    g = torch.Generator().manual_seed(2)
    n = 6
    h = torch.randn(3, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(3, n, n, 2, generator=g, dtype=torch.float64)
    if kind == "knn":
        graph = Graph.knn(x.detach(), 2)
        adj = torch.zeros(3, n, n, dtype=torch.bool).scatter_(-1, graph.index, True)
        assert (adj.sum(-1) == 2).all() and not adj.diagonal(dim1=-2, dim2=-1).any()
    else:
        adj = torch.rand(3, n, n, generator=g) < 0.5
        adj[:, 0, :] = False  # node 0 receives no message
        graph = Graph.given(adj)
        assert graph.k == int((adj & ~torch.eye(n, dtype=torch.bool)).sum(-1).max())
    params = list(layer.parameters())
    _compare(lambda: layer(h, x, v, graph.pick(ea), graph), lambda: reference_egcl(layer, h, x, v, ea, adj),
             [h, x, v, *params])


ETAL_FLAGS = [dict(zip(("equivariant", "adjacency", "norm_diff", "tanh"), c))
              for c in itertools.product([True, False], repeat=4)]


@pytest.mark.parametrize("flags", ETAL_FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_etal_matches_dense_reference(flags):
    torch.manual_seed(0)
    layer = ETAL(hidden=8, n_heads=2, dropout=0.0, coords_range=3.0, **flags).double()
    _randomise(layer)
    b, ell, n = 2, 4, 3
    g = torch.Generator().manual_seed(1)
    h = torch.randn(b * ell, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(b * ell, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(b * ell, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    _compare(lambda: layer(h, x, u, b), lambda: reference_etal(layer, h, x, u, b), [h, x, u, *params])


def test_add_outer_gradients_and_fallback():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c1 = torch.randn(2, 3, 3, 1, generator=g, dtype=torch.float64, requires_grad=True)
    c2 = torch.randn(3, 3, 1, generator=g, dtype=torch.float64)  # broadcast, constant
    assert torch.autograd.gradcheck(lambda b, w, c: add_outer_(b * 1, w, [c, c2]), (base, w, c1))
    expected = base + torch.cat([c1, c2.expand_as(c1)], -1) @ w.T
    torch.testing.assert_close(add_outer_(base.detach().clone(), w.detach(), [c1.detach(), c2]), expected.detach())
    # mixed dtypes (autocast) take the plain path
    out = add_outer_(base.detach().float(), w.detach(), [c1.detach(), c2])
    torch.testing.assert_close(out, expected.detach().float())


def test_pair_linear_is_a_linear_map_of_the_concatenation():
    """Tensor columns, a constant column (folded into the node term) and neighbour pairs all equal
    ``nn.Linear`` applied to ``[a_i, b_j, e_ij]``."""
    torch.manual_seed(0)
    pair = PairLinear(d_a=3, d_b=4, d_e=2, d_out=5).double()
    lin = nn.Linear(3 + 4 + 2, 5).double()
    with torch.no_grad():
        lin.weight.copy_(torch.cat([pair.lin_a.weight, pair.lin_b.weight, pair.lin_e.weight], dim=1))
        lin.bias.copy_(pair.lin_a.bias)
    a, b = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 6, 4, dtype=torch.float64)
    e = torch.randn(2, 6, 6, 1, dtype=torch.float64)

    def dense(e2):
        cat = torch.cat([a.unsqueeze(-2).expand(2, 6, 6, 3), b.unsqueeze(-3).expand(2, 6, 6, 4), e, e2], dim=-1)
        return lin(cat)

    torch.testing.assert_close(pair(a, b, [e, 2 * e]), dense(2 * e), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pair(a, b, [e, 0.5]), dense(torch.full_like(e, 0.5)), rtol=1e-12, atol=1e-12)
    graph = Graph.complete(6)
    torch.testing.assert_close(pair(a, b, [graph.pick(e), 0.5], graph.index),
                               graph.pick(dense(torch.full_like(e, 0.5))), rtol=1e-12, atol=1e-12)
    knn = Graph.knn(torch.randn(2, 6, 3, dtype=torch.float64), 3)  # one table per graph
    torch.testing.assert_close(pair(a, b, [knn.pick(e), 0.5], knn.index),
                               knn.pick(dense(torch.full_like(e, 0.5))), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2 edge feature"):
        pair(a, b, [e])


def test_vector_gate_is_the_head_of_one_vector():
    torch.manual_seed(0)
    head = VectorOut(d_in=6, n_vectors=1, d_hidden=8, tanh=True, scale=2.0, last_bias=False).double()
    f, vec = torch.randn(4, 5, 6, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(head.gate(f).unsqueeze(-1) * vec, head(f, vec.unsqueeze(-2)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one vector"):
        VectorOut(d_in=6, n_vectors=2, d_hidden=8).gate(f)


def test_neighbour_gathers():
    n = 5
    nb = neighbour_index(n)
    assert nb.shape == (n, n - 1)
    for i in range(n):
        assert sorted(nb[i].tolist()) == [j for j in range(n) if j != i]
    z = torch.randn(2, n, 3)
    assert torch.equal(gather_nodes(z, nb)[:, 1, 2], z[:, nb[1, 2]])
    e = torch.randn(2, n, n, 3)
    assert torch.equal(Graph.complete(n).pick(e)[:, 3, 1], e[:, 3, nb[3, 1]])
    assert torch.equal(Graph.complete(n).pick(e, repeat=3)[5, 3, 1], e[1, 3, nb[3, 1]])  # graph 5: sample 5 // 3


@pytest.mark.parametrize("spatial_attention", [True, False])
def test_single_particle_is_finite(spatial_attention):
    """N=1 has no edges: the EGCL aggregation is empty (zero), not a softmax over nothing (NaN)."""
    torch.manual_seed(0)
    model = SET(hidden=8, n_blocks=1, n_spatial_layers=1, n_heads=2, spatial_attention=spatial_attention)
    x, v, q = random_inputs(b=2, ell=3, n=1, dtype=torch.float32)
    xp, vp = model(x, v, q)
    assert torch.isfinite(xp).all() and torch.isfinite(vp).all()
    (xp.sum() + vp.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
