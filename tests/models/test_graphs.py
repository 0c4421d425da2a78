"""Graphs that are not complete (k nearest neighbours, given by the data) and node / pair attributes:
E(n) and permutation equivariance in float64, k = N - 1 equals the complete graph, the checks' errors."""

from __future__ import annotations

import pytest
import torch
from model_helpers import TINY_SET, random_inputs, random_orthogonal

from set_lightning.errors import UserError
from set_lightning.models import EGNN, SET
from set_lightning.models.graph import Graph

TOL = 1e-10
N = 7


def _inputs(seed=0, n=N, node_dim=2, edge_dim=2):
    """x, v, charges and node attributes ``(B, N, node_dim)`` and a pair tensor ``(B, N, N, edge_dim)`` whose
    channel 0 is a symmetric 0/1 graph (about half of the pairs)."""
    x, v, q = random_inputs(n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    node = torch.cat([q, torch.rand(q.shape[0], n, node_dim - 1, generator=g, dtype=q.dtype)], dim=-1)
    upper = torch.rand(q.shape[0], n, n, generator=g).triu(1) < 0.5
    adj = (upper | upper.transpose(1, 2)).to(q.dtype)
    pair = torch.cat([adj.unsqueeze(-1), torch.randn(q.shape[0], n, n, edge_dim - 1, generator=g, dtype=q.dtype)], -1)
    return x, v, q, node, (pair + pair.transpose(1, 2)) / 2 if edge_dim > 1 else pair


def _make(name, **kw):
    torch.manual_seed(0)
    if name == "set":
        return SET(**TINY_SET, **kw).double().eval()
    return EGNN(hidden=8, n_layers=2, attention=kw.pop("attention", False), n_heads=2, **kw).double().eval()


GRAPH_CASES = [
    ("set", dict(graph="knn", k=3)),
    ("set", dict(graph="knn", k=3, spatial_attention=False)),
    ("set", dict(graph="given", edge_dim=2, node_dim=2)),
    ("set", dict(graph="complete", edge_dim=2, node_dim=2)),
    ("egnn", dict(graph="knn", k=2)),
    ("egnn", dict(graph="given", node_dim=2, attention=True)),
    ("egnn", dict(graph="given", edge_dim=2)),
]


def _call(model, x, v, q, node, pair):
    uses_pair = model.edge_dim > 0 or model.graph == "given"
    node_attr = node[..., : model.node_dim] if model.node_dim > 1 else None
    return model(x, v, q, node_attr=node_attr, edge_attr=pair[..., : max(model.edge_dim, 1)] if uses_pair else None)


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
@pytest.mark.parametrize("name,kw", GRAPH_CASES, ids=lambda c: str(c))
def test_sparse_graphs_are_e3_equivariant(name, kw, det):
    model = _make(name, **kw)
    for seed in (0, 1):
        x, v, q, node, pair = _inputs(seed)
        rot = random_orthogonal(det, seed=seed + 3)
        shift = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 4)) * 3
        with torch.no_grad():
            xp, vp = _call(model, x, v, q, node, pair)
            xt, vt = _call(model, x @ rot.T + shift, v @ rot.T, q, node, pair)
        assert (xt - (xp @ rot.T + shift)).abs().max() < TOL
        assert (vt - vp @ rot.T).abs().max() < TOL


@pytest.mark.parametrize("name,kw", GRAPH_CASES, ids=lambda c: str(c))
def test_sparse_graphs_are_permutation_equivariant(name, kw):
    model = _make(name, **kw)
    x, v, q, node, pair = _inputs(2)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        xp, vp = _call(model, x, v, q, node, pair)
        xs, vs = _call(model, x[:, :, perm], v[:, :, perm], q[:, perm], node[:, perm], pair[:, perm][:, :, perm])
    assert (xs - xp[:, perm]).abs().max() < TOL and (vs - vp[:, perm]).abs().max() < TOL


@pytest.mark.parametrize("name", ["set", "egnn"])
@pytest.mark.parametrize("attention", [True, False])
def test_knn_with_all_neighbours_and_a_full_given_graph_equal_the_complete_graph(name, attention):
    kw = {"spatial_attention": attention} if name == "set" else {"attention": attention}
    x, v, q, _, _ = _inputs(3)
    with torch.no_grad():
        ref = _make(name, **kw)(x, v, q)
        knn = _make(name, graph="knn", k=N - 1, **kw)(x, v, q)
        full = _make(name, graph="given", **kw)(x, v, q, edge_attr=torch.ones(x.shape[0], N, N, dtype=x.dtype))
    for a, b in ((knn, ref), (full, ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_sparse_graph_changes_the_answer_and_parameters_do_not_depend_on_n():
    """k < N - 1 really drops edges (the graph option is not ignored); the parameter count is the same
    for every N, graph and k."""
    x, v, q, _, _ = _inputs(4)
    with torch.no_grad():
        dense, sparse = _make("set")(x, v, q)[0], _make("set", graph="knn", k=2)(x, v, q)[0]
    assert (dense - sparse).abs().max() > 1e-6
    counts = {_make("set", graph=g, k=2).n_params for g in ("complete", "knn", "given")}
    assert len(counts) == 1


def test_knn_graph_picks_the_nearest_nodes():
    x = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0]]])
    index = Graph.knn(x, 2).index[0]
    assert [sorted(r) for r in index.tolist()] == [[1, 2], [0, 2], [0, 1], [1, 2]]


def test_given_graph_pads_and_masks():
    adj = torch.tensor([[[0, 1, 1], [1, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    graph = Graph.given(adj, repeat=2)
    assert graph.index.shape == (2, 3, 2) and graph.mask.shape == (2, 3, 2, 1)
    assert graph.mask[0, :, :, 0].tolist() == [[True, True], [True, False], [False, False]]
    assert graph.index[1, 0].tolist() == [1, 2]
    assert torch.equal(graph.degree()[0, :, 0], torch.tensor([2, 1, 1]))  # at least 1: no division by zero


@pytest.mark.parametrize("kw,match", [
    (dict(graph="star"), "graph must be one of"),
    (dict(graph="knn", k=0), "k and node_dim"),
    (dict(graph="knn", adjacency=True), "adjacency=True .* needs graph='complete'"),
])
def test_bad_graph_options_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        SET(**TINY_SET, **kw)


@pytest.mark.parametrize("kw,call,match", [
    (dict(graph="knn", k=N), {}, "k=7 nearest neighbours need N >= 8"),
    (dict(graph="given"), {}, "graph='given' reads the graph from the samples' edge_attr"),
    ({}, {"edge_attr": "pair"}, "edge_dim=0 but the samples carry 1 pair attribute"),
    (dict(edge_dim=2), {"edge_attr": "pair"}, "edge_dim=2 but the samples carry 1 pair attribute"),
    ({}, {"node_attr": "node"}, "node_dim=1 but the samples' node_attr have 2 column"),
])
def test_attribute_mismatches_name_the_option(kw, call, match):
    x, v, q, node, pair = _inputs(0, edge_dim=1)
    values = {"pair": pair, "node": node}
    with pytest.raises(UserError, match=match):
        _make("egnn", **kw)(x, v, q, **{k: values[name] for k, name in call.items()})


@pytest.mark.parametrize("per_graph", [False, True], ids=["shared table", "table per graph"])
def test_scatter_add_nodes_is_the_adjoint_of_gather_nodes(per_graph):
    """<gather(z), y> = <z, scatter(y)> for every z, y: the hand-written backward of the fused edge MLP adds
    the neighbours' gradients where gather_nodes read them."""
    from set_lightning.models.graph import gather_nodes, neighbour_index, scatter_add_nodes_

    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    index = Graph.knn(torch.randn(4, 6, 3, generator=g, dtype=torch.float64), 3).index if per_graph else neighbour_index(6)
    y = torch.randn(*gather_nodes(z, index).shape, generator=g, dtype=torch.float64)
    out = torch.zeros_like(z)
    scatter_add_nodes_(out, y, index)
    assert torch.allclose((gather_nodes(z, index) * y).sum(), (z * out).sum(), rtol=1e-12)
    assert out.abs().sum() > 0
