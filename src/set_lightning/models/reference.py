"""Readable reference forms of the fast paths: the same functions, written the plain way.

Each fast path in :mod:`~set_lightning.models.layers`, :mod:`~set_lightning.models.egcl` and
:mod:`~set_lightning.models.etal` (fused multiply-adds, chunked pair tensors, gates without their
hidden layer stored, neighbour gathers instead of masked dense pairs) computes exactly one of the
functions below; ``tests/models/test_fast_paths.py`` holds them equal in float64 (outputs and
gradients to 1e-10). These forms are for reading and testing: they materialise every pair tensor and
the concatenated features, and are slower and larger.

* :func:`pair_linear` — :class:`~set_lightning.models.layers.PairLinear` (``Linear`` of the concatenation);
* :func:`add_outer` — :func:`~set_lightning.models.fused.add_outer_`;
* :func:`gate_heads` — :func:`~set_lightning.models.layers.gate_heads`;
* :func:`vector_gate` — :meth:`VectorOut.gate <set_lightning.models.layers.VectorOut.gate>`;
* :func:`silu_linear` — :func:`~set_lightning.models.fused.silu_linear`;
* :func:`pair_silu_gates` — :func:`~set_lightning.models.fused.pair_silu_gates`;
* :func:`edge_messages` — :func:`~set_lightning.models.fused.edge_messages`;
* :func:`linear_silu_linear` — :func:`~set_lightning.models.fused.linear_silu_linear`;
* :func:`egcl` — :class:`~set_lightning.models.egcl.EGCL` on dense ``N x N`` pairs with a mask;
* :func:`etal` — :class:`~set_lightning.models.etal.ETAL` with the concatenated pair features.

SET with ``readout="last"`` computes its last block on the last frame only; its readable form is the
same model computing every frame (:func:`~set_lightning.models.base.every_output_computed`).

Axis symbols as in :mod:`set_lightning.models.layers`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .egcl import TRANS_CLAMP
from .layers import EPS, PairLinear, VectorOut, sinusoidal_encoding


def pair_linear(
    module: PairLinear, a: torch.Tensor, b: torch.Tensor, cols: list[torch.Tensor | float] = (),
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Linear([a_i, b_j, e_ij])`` on the concatenated features of all pairs ``(i, j)`` (then the pairs
    ``(i, index[i, k])`` if ``index`` is given), with ``module``'s weights.

    Shapes: a ``(*, P, d_a)``, b ``(*, Q, d_b)``, cols numbers or ``(*, P, Q, 1)`` (broadcastable) ->
    ``(*, P, Q, d_out)``; with index ``(P, K)`` or ``(G, P, K)``: cols ``(*, P, K, 1)`` -> ``(*, P, K, d_out)``.
    """
    if index is not None:  # the far end of every edge: pairs_b[..., i, k, :] = b[..., index[..., i, k], :]
        full = b.unsqueeze(-3).expand(*b.shape[:-2], a.shape[-2], b.shape[-2], b.shape[-1])
        idx = index.expand(*b.shape[:-2], *index.shape[-2:])
        pairs_b = torch.gather(full, -2, idx.unsqueeze(-1).expand(*idx.shape, b.shape[-1]))
    else:
        pairs_b = b.unsqueeze(-3).expand(*b.shape[:-2], a.shape[-2], b.shape[-2], b.shape[-1])
    pairs_a = a.unsqueeze(-2).expand(*pairs_b.shape[:-1], a.shape[-1])
    edge = [torch.as_tensor(c, dtype=a.dtype).expand(*pairs_b.shape[:-1], 1) for c in cols]
    weight = torch.cat([module.lin_a.weight, module.lin_b.weight]
                       + ([module.lin_e.weight] if module.lin_e is not None else []), dim=1)
    return nn.functional.linear(torch.cat([pairs_a, pairs_b, *edge], dim=-1), weight, module.lin_a.bias)


def add_outer(base: torch.Tensor, weight: torch.Tensor, cols: list[torch.Tensor]) -> torch.Tensor:
    """``base + cat(cols) @ weight.T``.

    Shapes: base ``(*, d)``, weight ``(d, k)``, cols ``k`` x ``(*, 1)`` (broadcastable) -> ``(*, d)``.
    """
    return base + nn.functional.linear(torch.cat([c.expand(base.shape[:-1] + (1,)) for c in cols], -1), weight)


def gate_heads(f: torch.Tensor, heads: list[VectorOut]) -> torch.Tensor:
    """Each head's last layer on ``f``, side by side.  Shapes: f ``(*, d)`` -> ``(*, len(heads))``."""
    return torch.cat([head.net[-1](f) for head in heads], dim=-1)


def vector_gate(head: VectorOut, f: torch.Tensor) -> torch.Tensor:
    """The bounded scalar gate of a one-vector equivariant head: its whole MLP.  Shapes: f ``(*, d_in)`` -> ``(*)``."""
    return head.bound(head.net(f)).squeeze(-1)


def silu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``Linear(SiLU(x))``.  Shapes: x ``(*, d)``, weight ``(k, d)`` -> ``(*, k)``."""
    return nn.functional.linear(nn.functional.silu(x), weight, bias)


def pair_silu_gates(
    za: torch.Tensor, zb: torch.Tensor, cols: list[torch.Tensor], wcols: torch.Tensor | None, weight: torch.Tensor,
) -> torch.Tensor:
    """``Linear(SiLU(za_p + zb_q + cat(cols)_pq @ wcols.T))`` on the materialised pair tensor.

    Shapes: za ``(R, P, d)``, zb ``(R, Q, d)``, cols ``c`` x ``(R, P, Q, 1)`` (broadcastable), wcols ``(d, c)``,
    weight ``(k, d)`` -> ``(R, P, Q, k)``.
    """
    pre = za.unsqueeze(-2) + zb.unsqueeze(-3)
    if cols:
        shape = pre.shape[:-1] + (1,)
        pre = pre + nn.functional.linear(torch.cat([c.expand(shape) for c in cols], -1), wcols)
    return nn.functional.linear(nn.functional.silu(pre), weight)


def edge_messages(za, zb, index, cols, wcols, w2, b2):  # type: ignore[no-untyped-def]
    """``SiLU(Linear(SiLU(za_i + zb_{index[i, k]} + cat(cols) @ wcols.T)))`` with every edge tensor kept.

    Shapes: za, zb ``(G, N, d)``, index ``(N, K)`` or ``(G, N, K)``, cols ``c`` x broadcastable to
    ``(G, N, K, 1)``, wcols ``(d, c)`` or None, w2 ``(e, d)``, b2 ``(e,)`` -> ``(G, N, K, e)``.
    """
    graphs = torch.arange(zb.shape[0], device=zb.device).view(-1, 1, 1)
    zj = zb[:, index] if index.dim() == 2 else zb[graphs, index]  # (G, N, K, d)
    pre = za.unsqueeze(-2) + zj
    if cols:
        pre = pre + nn.functional.linear(torch.cat([c.expand(pre.shape[:-1] + (1,)) for c in cols], -1), wcols)
    return nn.functional.silu(nn.functional.linear(nn.functional.silu(pre), w2, b2))


def linear_silu_linear(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
    """``Linear(SiLU(Linear(x)))``.  Shapes: x ``(*, d)``, w1 ``(h, d)``, w2 ``(k, h)`` -> ``(*, k)``."""
    return nn.functional.linear(nn.functional.silu(nn.functional.linear(x, w1, b1)), w2, b2)


def egcl(layer, h, x, v, edge_attr, adj=None):  # type: ignore[no-untyped-def]
    """:class:`~set_lightning.models.egcl.EGCL` on dense ``(G, N, N)`` pair tensors; the edges are those of
    ``adj`` (default: all ``i != j``), the rest masked out.

    Shapes: h ``(G, N, H)``, x, v ``(G, N, 3)``, edge_attr ``(G, N, N, edge_features)`` (dense), adj ``(G, N, N)``
    bool or None -> h ``(G, N, H)``, x ``(G, N, 3)``.
    """
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
    mask = ~torch.eye(n, dtype=torch.bool, device=x.device).unsqueeze(-1)
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
    trans = layer.phi_x(m, diff.unsqueeze(-2))
    trans = trans * (TRANS_CLAMP / torch.linalg.vector_norm(trans, dim=-1, keepdim=True).clamp(min=TRANS_CLAMP))
    x = x + layer.coords_weight * (w * trans).sum(-2)
    if layer.phi_v is not None:
        x = x + layer.phi_v(hn, v.unsqueeze(-2))
    out = layer.node_mlp(torch.cat([hn, agg], dim=-1))
    return (h + out if layer.residual else out), x


def etal(layer, h, x, u, batch):  # type: ignore[no-untyped-def]
    """:class:`~set_lightning.models.etal.ETAL` with the pair features concatenated and every head a ``Linear``.

    Shapes: h ``(G, N, H)``, x, u ``(G, N, 3)`` with ``G = B * L``, batch ``B`` -> the same three shapes.
    """
    g, n, d = h.shape
    b, ell = batch, g // batch
    if layer.adjacency:
        fold = lambda z: z.reshape(b, ell * n, z.shape[-1])  # noqa: E731
        unfold = lambda z: z.reshape(g, n, z.shape[-1])  # noqa: E731
        t_idx = torch.arange(ell, device=h.device).repeat_interleave(n)
        n_idx = torch.arange(n, device=h.device).repeat(ell)
    else:
        fold = lambda z: (z.reshape(b, ell, n, z.shape[-1]).transpose(1, 2)  # noqa: E731
                          .reshape(b * n, ell, z.shape[-1]))
        unfold = lambda z: z.reshape(b, n, ell, z.shape[-1]).transpose(1, 2).reshape(g, n, z.shape[-1])  # noqa: E731
        t_idx = torch.arange(ell, device=h.device)
        n_idx = torch.zeros(ell, dtype=torch.long, device=h.device)
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

