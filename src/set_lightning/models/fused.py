"""Fused kernels with a hand-written backward: the same functions as their readable forms in
:mod:`set_lightning.models.reference` (held equal in float64 by the tests), computed in fewer passes
over the edge and pair tensors or storing less for the backward.

- :func:`add_outer_`: ``base + cat(cols) @ weight.T`` for a few columns, as fused multiply-adds;
- :func:`silu_linear`: ``SiLU(x) @ weight.T + bias`` keeping only ``x`` on large tensors;
- :func:`pair_silu_gates`: ETAL's equivariant gates from the ``(R, T, T, H)`` pair tensor, chunk by chunk,
  without storing it.
- :func:`edge_messages`: EGCL's messages ``phi_e`` (pair layer, SiLU, linear layer, SiLU) on large edge
  tensors, chunk by chunk, storing no edge tensor;
- :func:`linear_silu_linear`: a two-layer MLP with few outputs (EGCL's coordinate gate) storing only its input.

Axis symbols as in :mod:`.layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import gather_nodes, scatter_add_nodes_


class _AddOuter(torch.autograd.Function):
    """``base += sum_c cols[c] * weight[:, c]`` in place; see :func:`add_outer_`."""

    @staticmethod
    def forward(ctx, base, weight, *cols):  # type: ignore[override]
        ctx.mark_dirty(base)
        rows = weight.t().contiguous()
        ctx.save_for_backward(rows, *cols)
        for c, col in enumerate(cols):
            base.addcmul_(col, rows[c])
        return base

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, *cols = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grads: list[torch.Tensor | None] = [grad, None]
        for c, col in enumerate(cols):
            grads.append((g2 @ rows[c]).view(grad.shape[:-1] + (1,)).sum_to_size(col.shape)
                         if ctx.needs_input_grad[2 + c] else None)
        if ctx.needs_input_grad[1]:
            stacked = torch.cat([col.expand(grad.shape[:-1] + (1,)).reshape(-1, 1) for col in cols], dim=-1)
            grads[1] = (stacked.t() @ g2).t()  # (k, R) @ (R, d): a fast GEMM shape on CPU
        return tuple(grads)


def add_outer_(base: torch.Tensor, weight: torch.Tensor, cols: list[torch.Tensor]) -> torch.Tensor:
    """``base + cat(cols, -1) @ weight.T``, written into ``base`` (which must be a fresh, unshared tensor);
    readable form: :func:`set_lightning.models.reference.add_outer`.

    The same function as ``base + nn.functional.linear(cat(cols), weight)``, computed for a few (``k``)
    input columns as ``k`` fused multiply-adds, with a backward of matrix-vector products: on CPU a GEMM
    with inner size ``k <= 3`` and a broadcast ``addcmul`` backward both cost several passes over ``base``.
    Each multiply-add reads its weight column as a contiguous row of ``weight.T``: with a strided ``(d,)``
    operand ``addcmul_`` takes a scalar path, 8x slower on an ``(1000, 5, 4, 64)`` edge tensor (0.81 against
    0.10 ms, AVX-512, one thread), for bit-identical results.

    Shapes:
        base: ``(*, d)``, weight: ``(d, k)``, cols: ``k`` tensors broadcastable to ``(*, 1)`` -> ``(*, d)``.
    """
    same_dtype = all(t.dtype == base.dtype for t in [weight, *cols])
    if not same_dtype or base.numel() == 0:  # autocast or empty: plain ops
        return base + nn.functional.linear(torch.cat([c.expand(base.shape[:-1] + (1,)) for c in cols], -1)
                                           .to(base.dtype), weight.to(base.dtype))
    return _AddOuter.apply(base, weight, *cols)


#: from this many elements on, an edge tensor's SiLU output is recomputed in the backward instead of stored
#: (:func:`silu_linear`): at N = 20 (24M elements per EGCL edge tensor) memory is what limits the batch, and
#: the extra elementwise pass is ~1% of the step; at N = 5 (1.3M) storing it is ~4% faster per EGCL
STORE_LESS_ELEMENTS = 1 << 22


def store_less(numel: int) -> bool:
    """Whether a tensor of ``numel`` elements takes the store-less functions of this module (from
    :data:`STORE_LESS_ELEMENTS` on). Never under ``torch.compile``: dynamo unrolls their chunk loops (SET at
    N = 20: a first, compiling step of 320 s at B = 20 and 630 s at B = 100, the chunks growing with B), and
    inductor fuses the plain path instead (compiled 1.14x faster than the eager step after 172 s at B = 20;
    the chunked functions traced: 1.12x; kept out of the graph: 0.99x; traced as one chunk each: 1.03x
    at B = 100, saving 1.88 GiB; by hand, side by side, Zen 4), at the price of the memory the store-less
    path saves (B = 100: 2.26 GiB saved for the backward against 0.87)."""
    return numel >= STORE_LESS_ELEMENTS and not torch.compiler.is_compiling()


class _SiluLinear(torch.autograd.Function):
    """``linear(silu(x), weight, bias)`` saving only ``x``; see :func:`silu_linear`."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False):
            s = nn.functional.silu(x)
            if weight.shape[0] == 1:  # a matrix-vector product: an (R, 1) GEMM is several times slower on CPU
                out = (s @ weight[0]).unsqueeze(-1)
                return out if bias is None else out + bias
            return nn.functional.linear(s, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        d, k = x.shape[-1], weight.shape[0]
        x2, g2 = x.reshape(-1, d), grad.reshape(-1, k)
        g_w = g2.t() @ nn.functional.silu(x2) if ctx.needs_input_grad[1] else None
        g_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        g_x = None
        if ctx.needs_input_grad[0]:
            g_s = _times_rows(g2, weight)
            g_x = torch.ops.aten.silu_backward(g_s, x2).view(x.shape)
        return g_x, g_w, g_b


def _times_rows(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight``; for a few rows ``k <= 4`` as ``k`` rank-1 updates (a GEMM with inner size ``k`` is slow on CPU).

    Shapes: g ``(R, k)``, weight ``(k, d)`` -> ``(R, d)``.
    """
    k = weight.shape[0]
    if k > 4:
        return g @ weight
    out = g[:, :1] * weight[0]
    for j in range(1, k):
        out.addcmul_(g[:, j:j + 1], weight[j])
    return out


def silu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.functional.linear(silu(x), weight, bias)`` that keeps only ``x`` for the backward when ``x`` is large.

    The same function as the two modules ``SiLU -> Linear`` (readable form:
    :func:`~set_lightning.models.reference.silu_linear`). From :data:`STORE_LESS_ELEMENTS` elements on,
    the backward recomputes ``silu(x)`` (one elementwise pass) instead of storing it, which halves the
    activation memory of the pair; smaller inputs take the plain path. Used on EGCL's edge tensors
    (``edge_out`` and the ``phi_x`` gate), ``(G, N, K, H)`` each.

    Shapes:
        x: ``(*, d)``, weight: ``(k, d)``, bias: ``(k,)`` or None -> ``(*, k)``.
    """
    dtype = x.dtype
    if not store_less(x.numel()):
        return nn.functional.linear(nn.functional.silu(x), weight.to(dtype), None if bias is None else bias.to(dtype))
    return _SiluLinear.apply(x, weight.to(dtype), None if bias is None else bias.to(dtype))


#: elements of one chunk of a pair tensor in :func:`pair_silu_gates` (2 MiB in fp32): the chunks bound the
#: memory of the recomputation; ETAL's step time was the same for 2^17 to 2^21 and 9% slower at 2^15
#: (per-chunk overhead), measured at N = 5, L = 10, B = 100 on one thread
CHUNK_ELEMENTS = 1 << 19


def _rows(n_rows: int, per_row: int) -> int:
    """Rows per chunk so that a chunk holds about :data:`CHUNK_ELEMENTS` elements (at least one row)."""
    return max(1, CHUNK_ELEMENTS // max(per_row, 1))


def _chunk_col(col: torch.Tensor, n_rows: int, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of a column broadcastable to ``(R, P, Q, 1)`` (one without the row axis is shared)."""
    return col[r0:r1] if col.dim() == 4 and col.shape[0] == n_rows else col


def _add_col_grads(g_pre: torch.Tensor, cols: list[torch.Tensor], wrows: torch.Tensor, g_wc: torch.Tensor | None,
                   g_cols: list[torch.Tensor | None], n_rows: int, r0: int, r1: int) -> None:
    """Add one chunk's share to the gradients of the edge columns (``g_cols``, None where not needed) and of
    their weight rows (``g_wc``, or None), given the gradient of the chunk's pre-activations.

    Shapes: g_pre ``(r1 - r0, P, Q, d)``, cols broadcastable to ``(n_rows, P, Q, 1)``, wrows, g_wc ``(c, d)``.
    """
    g2 = g_pre.reshape(-1, g_pre.shape[-1])
    for c, col in enumerate(cols):
        part = _chunk_col(col, n_rows, r0, r1)
        if g_wc is not None:
            g_wc[c] += (part.expand(*g_pre.shape[:-1], 1).reshape(1, -1) @ g2).squeeze(0)
        if g_cols[c] is not None:
            g_col = (g2 @ wrows[c]).view(*g_pre.shape[:-1], 1).sum_to_size(part.shape)
            if part is col:
                g_cols[c] += g_col
            else:
                g_cols[c][r0:r1] = g_col


class _PairSiluGates(torch.autograd.Function):
    """``silu(za_p + zb_q + cols_pq @ wcols.T) @ weight.T`` chunk by chunk over the rows (:func:`pair_silu_gates`)."""

    @staticmethod
    def _pre(za, zb, wrows, cols, r0, r1):  # type: ignore[no-untyped-def]
        """The pair pre-activations of rows ``r0:r1``; ``wrows = wcols.T`` (contiguous, see :func:`add_outer_`)."""
        pre = za[r0:r1].unsqueeze(-2) + zb[r0:r1].unsqueeze(-3)
        for c, col in enumerate(cols):
            pre.addcmul_(_chunk_col(col, za.shape[0], r0, r1), wrows[c])
        return pre

    @staticmethod
    def forward(ctx, za, zb, wcols, weight, *cols):  # type: ignore[override]
        r, p, d = za.shape
        q, k = zb.shape[1], weight.shape[0]
        out = za.new_empty(r, p, q, k)
        step = _rows(r, p * q * d)
        wrows = wcols.t().contiguous()
        with torch.autocast(za.device.type, enabled=False):
            for r0 in range(0, r, step):
                pre = _PairSiluGates._pre(za, zb, wrows, cols, r0, r0 + step)
                torch.mm(nn.functional.silu(pre, inplace=True).view(-1, d), weight.t(),
                         out=out[r0:r0 + step].view(-1, k))
        ctx.save_for_backward(za, zb, wrows, weight, *cols)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        za, zb, wrows, weight, *cols = ctx.saved_tensors
        need_za, need_zb, need_wc, need_w, *need_cols = ctx.needs_input_grad
        r, p, d = za.shape
        q, k = zb.shape[1], weight.shape[0]
        g_za = torch.empty_like(za) if need_za else None
        g_zb = torch.empty_like(zb) if need_zb else None
        g_w = torch.zeros_like(weight) if need_w else None
        g_wc = torch.zeros(len(cols), d, dtype=za.dtype, device=za.device) if need_wc else None
        g_cols = [torch.zeros_like(col) if need else None for col, need in zip(cols, need_cols)]
        step = _rows(r, p * q * d)
        for r0 in range(0, r, step):
            r1 = min(r0 + step, r)
            pre = _PairSiluGates._pre(za, zb, wrows, cols, r0, r1).view(-1, d)
            g = grad[r0:r1].reshape(-1, k)
            if need_w:
                g_w.addmm_(g.t(), nn.functional.silu(pre))
            g_pre = torch.ops.aten.silu_backward(_times_rows(g, weight), pre)
            g4 = g_pre.view(r1 - r0, p, q, d)
            if need_za:
                torch.sum(g4, 2, out=g_za[r0:r1])
            if need_zb:
                torch.sum(g4, 1, out=g_zb[r0:r1])
            _add_col_grads(g4, cols, wrows, g_wc, g_cols, r, r0, r1)
        return (g_za, g_zb, None if g_wc is None else g_wc.t(), g_w, *g_cols)


def pair_silu_gates(
    za: torch.Tensor, zb: torch.Tensor, cols: list[torch.Tensor], wcols: torch.Tensor | None, weight: torch.Tensor,
) -> torch.Tensor:
    """``silu(za_p + zb_q + cat(cols)_pq @ wcols.T) @ weight.T``: a few linear outputs of the SiLU of a
    :class:`PairLinear` on all pairs ``(p, q)`` of each row, without storing the pair tensor.

    The same function as ``nn.functional.linear(silu(PairLinear(...)), weight)`` (the readable form:
    :func:`~set_lightning.models.reference.pair_silu_gates`), computed over chunks of rows that fit a
    core's cache; the backward recomputes each chunk's pair tensor instead of keeping it (activation
    memory of the outputs only), and takes ``grad @ weight`` as ``k`` rank-1 updates. Used for ETAL's
    equivariant gates (``k = 2`` outputs of an ``(R, T, T, H)`` pair tensor).

    Shapes:
        za: ``(R, P, d)``, zb: ``(R, Q, d)``, cols: ``c`` tensors broadcastable to ``(R, P, Q, 1)``,
        wcols: ``(d, c)`` (None without cols), weight: ``(k, d)`` -> ``(R, P, Q, k)``.
    """
    dtype = za.dtype
    if wcols is None:
        wcols, cols = za.new_zeros(za.shape[-1], 0), []
    cols = [c.to(dtype) for c in cols]
    return _PairSiluGates.apply(za, zb.to(dtype), wcols.to(dtype), weight.to(dtype), *cols)


def _chunk_index(index: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """The neighbour table of graphs ``r0:r1``: the shared ``(N, K)`` one, or their rows of a ``(G, N, K)`` one."""
    return index if index.dim() == 2 else index[r0:r1]


def _edge_pre(za, zb, index, wrows, cols, r0, r1):  # type: ignore[no-untyped-def]
    """The edge pre-activations ``za_i + zb_{index[i, k]} + cols_ik @ wcols.T`` of graphs ``r0:r1``.

    Shapes: za, zb ``(G, N, d)``, index ``(N, K)`` or ``(G, N, K)``, wrows ``(c, d)``, cols broadcastable to
    ``(G, N, K, 1)`` -> ``(r1 - r0, N, K, d)``.
    """
    pre = gather_nodes(zb[r0:r1], _chunk_index(index, r0, r1))
    pre += za[r0:r1].unsqueeze(-2)
    for c, col in enumerate(cols):
        pre.addcmul_(_chunk_col(col, za.shape[0], r0, r1), wrows[c])
    return pre


class _EdgeMessages(torch.autograd.Function):
    """``silu(linear(silu(za_i + zb_j + cols_ij @ wcols.T), w2, b2))`` on the edges, storing no edge tensor
    (see :func:`edge_messages`)."""

    @staticmethod
    def forward(ctx, za, zb, index, wcols, w2, b2, *cols):  # type: ignore[override]
        g, n, d = za.shape
        k, e = index.shape[-1], w2.shape[0]
        out = za.new_empty(g, n, k, e)
        step = _rows(g, n * k * max(d, e))
        wrows = wcols.t().contiguous()
        with torch.autocast(za.device.type, enabled=False):
            for r0 in range(0, g, step):
                r1 = min(r0 + step, g)
                s1 = nn.functional.silu(_edge_pre(za, zb, index, wrows, cols, r0, r1), inplace=True)
                chunk = out[r0:r1].view(-1, e)
                torch.addmm(b2, s1.view(-1, d), w2.t(), out=chunk)
                nn.functional.silu(chunk, inplace=True)
        ctx.save_for_backward(za, zb, index, wrows, w2, b2, *cols)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        za, zb, index, wrows, w2, b2, *cols = ctx.saved_tensors
        need_za, need_zb, _, need_wc, need_w2, need_b2, *need_cols = ctx.needs_input_grad
        g, n, d = za.shape
        k, e = index.shape[-1], w2.shape[0]
        g_za = torch.empty_like(za) if need_za else None
        g_zb = torch.zeros_like(zb) if need_zb else None
        g_w2 = torch.zeros_like(w2) if need_w2 else None
        g_b2 = torch.zeros_like(b2) if need_b2 else None
        g_wc = torch.zeros(len(cols), d, dtype=za.dtype, device=za.device) if need_wc else None
        g_cols = [torch.zeros_like(col) if need else None for col, need in zip(cols, need_cols)]
        step = _rows(g, n * k * max(d, e))
        for r0 in range(0, g, step):
            r1 = min(r0 + step, g)
            pre = _edge_pre(za, zb, index, wrows, cols, r0, r1).view(-1, d)
            s1 = nn.functional.silu(pre)
            g_l = torch.ops.aten.silu_backward(grad[r0:r1].reshape(-1, e), torch.addmm(b2, s1, w2.t()))
            if need_w2:
                g_w2.addmm_(g_l.t(), s1)
            if need_b2:
                g_b2 += g_l.sum(0)
            g_pre = torch.ops.aten.silu_backward(g_l @ w2, pre)
            g4 = g_pre.view(r1 - r0, n, k, d)
            if need_za:
                torch.sum(g4, 2, out=g_za[r0:r1])
            if need_zb:
                scatter_add_nodes_(g_zb[r0:r1], g4, _chunk_index(index, r0, r1))
            _add_col_grads(g4, cols, wrows, g_wc, g_cols, g, r0, r1)
        return (g_za, g_zb, None, None if g_wc is None else g_wc.t(), g_w2, g_b2, *g_cols)


def edge_messages(
    za: torch.Tensor, zb: torch.Tensor, index: torch.Tensor, cols: list[torch.Tensor], wcols: torch.Tensor | None,
    w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """EGCL's messages ``m_ij = SiLU(W_2 SiLU(za_i + zb_j + cols_ij @ wcols.T) + b_2)`` on the edges
    ``(i, j = index[i, k])``, computed graph chunk by graph chunk, storing no edge tensor for the backward.

    The same function as ``SiLU(Linear(SiLU(PairLinear(...))))`` (the readable form:
    :func:`~set_lightning.models.reference.edge_messages`). The backward recomputes each chunk's
    pre-activations and its first layer (one more ``(E, H) @ (H, H)`` product than storing them) instead
    of keeping two edge tensors. Used by EGCL from :data:`STORE_LESS_ELEMENTS` edge elements on.

    Shapes:
        za, zb: ``(G, N, d)``, index: ``(N, K)`` or ``(G, N, K)``, cols: ``c`` tensors broadcastable to
        ``(G, N, K, 1)``, wcols: ``(d, c)`` (None without cols), w2: ``(e, d)``, b2: ``(e,)`` -> ``(G, N, K, e)``.
    """
    dtype = za.dtype
    if wcols is None:
        wcols, cols = za.new_zeros(za.shape[-1], 0), []
    cols = [c.to(dtype) for c in cols]
    return _EdgeMessages.apply(za, zb.to(dtype), index, wcols.to(dtype), w2.to(dtype), b2.to(dtype), *cols)


class _LinearSiluLinear(torch.autograd.Function):
    """``linear(silu(linear(x, w1, b1)), w2, b2)`` storing only ``x`` (see :func:`linear_silu_linear`)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):  # type: ignore[override]
        d, k = x.shape[-1], w2.shape[0]
        x2 = x.reshape(-1, d)
        out = x.new_empty(x2.shape[0], k)
        step = _rows(x2.shape[0], max(d, w1.shape[0]))
        with torch.autocast(x.device.type, enabled=False):
            for r0 in range(0, x2.shape[0], step):
                s = nn.functional.silu(nn.functional.linear(x2[r0:r0 + step], w1, b1), inplace=True)
                torch.mm(s, w2.t(), out=out[r0:r0 + step])
            if b2 is not None:
                out += b2
        ctx.save_for_backward(x, w1, b1, w2)
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        return out.view(*x.shape[:-1], k)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, w1, b1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        d, k = x.shape[-1], w2.shape[0]
        x2, g2 = x.reshape(-1, d), grad.reshape(-1, k)
        g_x = torch.empty_like(x2) if need_x else None
        g_w1 = torch.zeros_like(w1) if need_w1 else None
        g_b1 = torch.zeros_like(b1) if ctx.has_b1 and need_b1 else None
        g_w2 = torch.zeros_like(w2) if need_w2 else None
        step = _rows(x2.shape[0], max(d, w1.shape[0]))
        for r0 in range(0, x2.shape[0], step):
            xc, gc = x2[r0:r0 + step], g2[r0:r0 + step]
            pre = nn.functional.linear(xc, w1, b1)
            if need_w2:
                g_w2.addmm_(gc.t(), nn.functional.silu(pre))
            g_pre = torch.ops.aten.silu_backward(_times_rows(gc, w2), pre)
            if need_w1:
                g_w1.addmm_(g_pre.t(), xc)
            if g_b1 is not None:
                g_b1 += g_pre.sum(0)
            if need_x:
                torch.mm(g_pre, w1, out=g_x[r0:r0 + step])
        g_b2 = g2.sum(0) if ctx.has_b2 and need_b2 else None
        return None if g_x is None else g_x.view(x.shape), g_w1, g_b1, g_w2, g_b2


def linear_silu_linear(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
) -> torch.Tensor:
    """A two-layer MLP ``Linear -> SiLU -> Linear`` with few outputs, storing only its input ``x``.

    The same function as the three modules (the readable form:
    :func:`~set_lightning.models.reference.linear_silu_linear`), computed by chunks of rows; the backward
    recomputes each chunk's hidden layer (one more ``(R, d) @ (d, h)`` product) instead of keeping the
    hidden pre-activations, and takes ``grad @ w2`` as ``k`` rank-1 updates. Used for EGCL's coordinate gate
    ``phi_x(m_ij)`` on large edge tensors, whose input (the messages) is stored by the layer anyway.

    Shapes:
        x: ``(*, d)``, w1: ``(h, d)``, b1: ``(h,)`` or None, w2: ``(k, h)``, b2: ``(k,)`` or None -> ``(*, k)``.
    """
    dtype = x.dtype
    cast = [None if t is None else t.to(dtype) for t in (w1, b1, w2, b2)]
    return _LinearSiluLinear.apply(x, *cast)
