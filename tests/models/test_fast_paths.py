"""The optimised EGCL / ETAL compute exactly the straightforward dense formulas (forward and gradients).

The references are the plain implementations in :mod:`set_lightning.models.reference` (dense ``N x N``
edges with a masked diagonal, concatenated pair features, one ``Linear`` per head, every pair tensor
materialised), evaluated with the same modules' parameters; in float64 outputs and gradients agree to
1e-10.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from model_helpers import random_inputs
from torch import nn

from set_lightning.models import EGCL, ETAL, SET, egcl, etal, fused, layers, reference
from set_lightning.models.fused import add_outer_, pair_silu_gates, silu_linear
from set_lightning.models.graph import Graph, gather_nodes, neighbour_index
from set_lightning.models.layers import PairLinear, VectorOut, gate_heads

TOL = dict(rtol=1e-10, atol=1e-10)


reference_egcl, reference_etal = reference.egcl, reference.etal


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
        torch.testing.assert_close(a, b, **TOL)
    w = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype) for i, o in enumerate(out_f)]
    gf = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out_f, w)), leaves)
    gr = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out_r, w)), leaves)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, **TOL)


EGCL_FLAGS = [dict(zip(("attention", "equivariant", "pre_norm", "norm_diff", "tanh"), c))
              for c in itertools.product([True, False], repeat=5)]


@pytest.mark.parametrize("flags", EGCL_FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
@pytest.mark.parametrize("n", [2, 5])
def test_egcl_matches_dense_reference(store_less, flags, n):
    torch.manual_seed(0)
    layer = EGCL(hidden=8, edge_features=2, n_heads=2, coords_range=3.0, **flags).double()
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
def test_egcl_on_sparse_graphs_matches_the_masked_dense_reference(store_less, kind, attention):
    """k-NN and given (padded, masked; one node without edges) graphs: values and gradients equal the
    dense layer with the non-edges masked out."""
    torch.manual_seed(0)
    layer = EGCL(hidden=8, edge_features=2, n_heads=2, attention=attention, pre_norm=True).double()
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


# --- each fast path against its readable form in set_lightning.models.reference (float64, 1e-10) ---------------

def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def _same_function(fast, ref, leaves):
    """Equal outputs and equal gradients (of a random projection) with respect to every leaf."""
    _compare(lambda: (fast(),), lambda: (ref(),), leaves)


@pytest.mark.parametrize("chunk", [None, 700])  # one chunk, or a few rows per chunk (and a partial last one)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_pair_silu_gates_equals_reference(monkeypatch, chunk, k):
    if chunk is not None:
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)
    za, zb, lr2, same, wcols, weight = _leaves((7, 4, 6), (7, 3, 6), (7, 4, 3, 1), (4, 3, 1), (6, 2), (k, 6))
    leaves = [za, zb, lr2, same, wcols, weight]
    _same_function(lambda: pair_silu_gates(za, zb, [lr2, same], wcols, weight),
                   lambda: reference.pair_silu_gates(za, zb, [lr2, same], wcols, weight), leaves)
    _same_function(lambda: pair_silu_gates(za, zb, [], None, weight),  # no edge columns
                   lambda: reference.pair_silu_gates(za, zb, [], None, weight), [za, zb, weight])


@pytest.mark.parametrize("chunk", [None, 700])  # one chunk, or a few graphs per chunk (and a partial last one)
@pytest.mark.parametrize("kind", ["complete", "knn"])
def test_edge_messages_equals_reference(monkeypatch, chunk, kind):
    """EGCL's chunked, store-nothing message MLP: outputs and every gradient (node terms, edge columns, their
    weights, the second layer) equal the plain form, for a shared and a per-graph neighbour table."""
    if chunk is not None:
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)
    g, n, d, e = 7, 5, 6, 4
    index = neighbour_index(n) if kind == "complete" else Graph.knn(torch.randn(g, n, 3, dtype=torch.float64), 3).index
    k = index.shape[-1]
    za, zb, r, a, wcols, w2, b2 = _leaves((g, n, d), (g, n, d), (g, n, k, 1), (g, n, k, 1), (d, 2), (e, d), (e,))
    leaves = [za, zb, r, a, wcols, w2, b2]
    _same_function(lambda: fused.edge_messages(za, zb, index, [r, a], wcols, w2, b2),
                   lambda: reference.edge_messages(za, zb, index, [r, a], wcols, w2, b2), leaves)
    _same_function(lambda: fused.edge_messages(za, zb, index, [], None, w2, b2),  # no edge columns
                   lambda: reference.edge_messages(za, zb, index, [], None, w2, b2), [za, zb, w2, b2])


@pytest.mark.parametrize("chunk", [None, 40])  # one chunk, or a few rows per chunk (and a partial last one)
@pytest.mark.parametrize("k,biases", [(1, (True, False)), (2, (True, True)), (5, (False, True))])
def test_linear_silu_linear_equals_reference(monkeypatch, chunk, k, biases):
    if chunk is not None:
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)
    x, w1, b1, w2, b2 = _leaves((3, 5, 6), (7, 6), (7,), (k, 7), (k,))
    b1, b2 = (b if keep else None for b, keep in zip((b1, b2), biases))
    leaves = [t for t in (x, w1, b1, w2, b2) if t is not None]
    _same_function(lambda: fused.linear_silu_linear(x, w1, b1, w2, b2),
                   lambda: reference.linear_silu_linear(x, w1, b1, w2, b2), leaves)


@pytest.fixture(params=["store less", "plain"])
def store_less(request, monkeypatch):
    """Both paths of EGCL's edge MLPs (edge_messages, silu_linear): store nothing and recompute in the
    backward (every size, as at N = 20), or the plain layers (as at N = 5)."""
    monkeypatch.setattr(fused, "STORE_LESS_ELEMENTS", 0 if request.param == "store less" else 1 << 62)
    return request.param


@pytest.mark.parametrize("k,bias", [(1, False), (2, True), (8, True)])
def test_silu_linear_equals_reference(store_less, k, bias):
    x, weight, b = _leaves((3, 5, 6), (k, 6), (k,))
    b = b if bias else None
    leaves = [x, weight] + ([b] if bias else [])
    _same_function(lambda: silu_linear(x, weight, b), lambda: reference.silu_linear(x, weight, b), leaves)


@pytest.mark.parametrize("n_layers,last_bias,tanh",
                         [(2, False, True), (2, True, False), (1, True, True), (3, True, False)])
def test_vector_gate_equals_reference(store_less, n_layers, last_bias, tanh):
    torch.manual_seed(0)
    head = VectorOut(d_in=6, n_vectors=1, d_hidden=8, tanh=tanh, scale=2.0, last_bias=last_bias,
                     n_layers=n_layers).double()
    _randomise(head)
    (f,) = _leaves((4, 5, 6))
    _same_function(lambda: head.gate(f), lambda: reference.vector_gate(head, f), [f, *head.parameters()])


def test_gate_heads_and_add_outer_equal_reference():
    torch.manual_seed(0)
    heads = [VectorOut(d_in=6, n_vectors=1, d_hidden=6, n_layers=1, last_bias=b).double() for b in (False, True)]
    f, base, w, c1, c2 = _leaves((4, 5, 6), (2, 3, 3, 4), (4, 2), (2, 3, 3, 1), (3, 3, 1))
    params = [p for h in heads for p in h.parameters()]
    _same_function(lambda: gate_heads(f, heads), lambda: reference.gate_heads(f, heads), [f, *params])
    _same_function(lambda: add_outer_(base * 1, w, [c1, c2]), lambda: reference.add_outer(base, w, [c1, c2]),
                   [base, w, c1, c2])


@pytest.mark.parametrize("kind", ["dense", "complete", "knn"])
def test_pair_linear_equals_reference(kind):
    torch.manual_seed(0)
    pair = PairLinear(d_a=3, d_b=3, d_e=2, d_out=5).double()
    _randomise(pair)
    a, b = _leaves((2, 6, 3), (2, 6, 3))
    index = {"dense": None, "complete": neighbour_index(6),
             "knn": Graph.knn(torch.randn(2, 6, 3, dtype=torch.float64), 3).index}[kind]
    k = 6 if index is None else index.shape[-1]
    (e,) = _leaves((2, 6, k, 1), seed=1)
    _same_function(lambda: pair(a, b, [e, 0.5], index), lambda: reference.pair_linear(pair, a, b, [e, 0.5], index),
                   [a, b, e, *pair.parameters()])


@pytest.mark.parametrize("flags", ETAL_FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_etal_in_several_chunks_matches_dense_reference(monkeypatch, flags):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 150)  # 1-2 rows per chunk
    test_etal_matches_dense_reference(flags)


def _reference_paths(monkeypatch):
    """Every fast path of the model code replaced by its readable form."""
    monkeypatch.setattr(PairLinear, "forward", lambda self, a, b, cols=(), index=None:
                        reference.pair_linear(self, a, b, cols, index))
    monkeypatch.setattr(VectorOut, "gate", lambda self, f: reference.vector_gate(self, f))
    for module in (layers, egcl):
        monkeypatch.setattr(module, "silu_linear", reference.silu_linear)
    monkeypatch.setattr(etal, "pair_silu_gates", reference.pair_silu_gates)


SET_FLAGS = [dict(zip(("equivariant", "spatial_attention", "temporal_attention", "adjacency", "norm_diff", "tanh"), c))
             for c in itertools.product([True, False], repeat=6)]
GRAPH_KINDS = [dict(graph="complete"), dict(graph="knn", k=2),
               dict(graph="given", node_dim=2, edge_dim=1), dict(graph="complete", node_dim=2, edge_dim=2)]


@pytest.mark.parametrize("kind", GRAPH_KINDS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_set_fast_paths_equal_reference_paths(monkeypatch, store_less, kind):
    """The whole SET (and its gradients) with every fast path equals the model with the readable forms,
    for every flag combination (adjacency: complete graph only), in float64 to 1e-10."""
    b, ell, n = 2, 3, 4
    x, v, q = random_inputs(b=b, ell=ell, n=n)
    g = torch.Generator().manual_seed(3)
    node_attr = torch.cat([q, torch.randn(b, n, 1, generator=g, dtype=torch.float64)], -1)
    edge_attr = torch.randn(b, n, n, kind.get("edge_dim", 1), generator=g, dtype=torch.float64)
    edge_attr[..., 0] = (edge_attr[..., 0] > 0).double()  # channel 0: the given graph's adjacency
    extra = {}
    if kind.get("node_dim"):
        extra["node_attr"] = node_attr
    if kind.get("edge_dim"):
        extra["edge_attr"] = edge_attr
    x.requires_grad_(True)
    v.requires_grad_(True)
    for flags in SET_FLAGS:
        if flags["adjacency"] and kind["graph"] != "complete":
            continue
        torch.manual_seed(0)
        model = SET(hidden=8, n_blocks=2, n_spatial_layers=1, n_heads=2, dropout=0.0, coords_range=3.0,
                    **flags, **kind).double()
        _randomise(model)
        params = list(model.parameters())
        out_fast = model(x, v, q, **extra)
        grads_fast = torch.autograd.grad(sum((o * (i + 1.5)).sum() for i, o in enumerate(out_fast)), [x, v, *params],
                                         allow_unused=True)
        with monkeypatch.context() as mp:
            _reference_paths(mp)
            out_ref = model(x, v, q, **extra)
            grads_ref = torch.autograd.grad(sum((o * (i + 1.5)).sum() for i, o in enumerate(out_ref)),
                                            [x, v, *params], allow_unused=True)
        for a, r in zip(out_fast, out_ref):
            torch.testing.assert_close(a, r, **TOL, msg=lambda m: f"{flags} {kind}: {m}")
        for a, r in zip(grads_fast, grads_ref):
            assert (a is None) == (r is None)
            if a is not None:
                torch.testing.assert_close(a, r, **TOL, msg=lambda m: f"{flags} {kind}: {m}")
