"""Small building blocks shared by the models: MLPs, vector heads, pair features, positional codes,
graphs (complete, k nearest neighbours, given) without self-edges.

Axis symbols (the same in every model file): ``B`` batch, ``L`` history frames, ``N`` particles,
``H`` hidden width, ``G = B * L`` graphs (the frames folded into the batch), ``K`` neighbours of a
node (``N - 1`` in the complete graph), ``R`` rows of ``T`` tokens in ETAL; generic helpers name the two
sides of a pair tensor ``P`` and ``Q``; ``*`` any leading axes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-8


def mlp(
    *, d_in: int, d_hidden: int, d_out: int, n_layers: int = 2, act: type[nn.Module] = nn.SiLU,
    last_act: bool = False, bias: bool = True,
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` with ``n_layers`` linear maps (``last_act`` adds a final act)."""
    dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == n_layers - 1
        layers.append(nn.Linear(a, b, bias=bias or not last))
        if not last or last_act:
            layers.append(act())
    return nn.Sequential(*layers)


class VectorOut(nn.Module):
    r"""Maps invariant features ``f`` and ``k`` vectors ``V`` to one output vector.

    * ``equivariant=True``: :math:`\sum_k g_k(f)\, V_k` with scalar gates ``g = MLP(f)`` (``O(n)``-equivariant).
    * ``equivariant=False``: ``MLP([f, V_1, ..., V_k])`` predicts a raw 3-vector (breaks rotations).

    With ``tanh`` the gates (or the raw vector) are bounded: ``scale * tanh(.)``.

    Args:
        d_in: size of ``f``.
        n_vectors: number ``k`` of input vectors.
        d_hidden: hidden width of the MLP.
        equivariant: gate the vectors (True) or predict a raw vector (False).
        tanh: bound the output with ``scale * tanh``.
        scale: bound used with ``tanh``.
        last_gain: if given, xavier-init the last layer with this gain (EGNN uses 0.001 for ``phi_x``).
        last_bias: bias in the last linear layer.
        n_layers: linear layers in the MLP (1: a single ``Linear``, for inputs that are already hidden features).

    Shapes:
        f: ``(*, d_in)``, vecs: ``(*, k, 3)`` -> ``(*, 3)``.
    """

    def __init__(
        self, *, d_in: int, n_vectors: int, d_hidden: int, equivariant: bool = True, tanh: bool = False,
        scale: float = 1.0, last_gain: float | None = None, last_bias: bool = True, n_layers: int = 2,
    ) -> None:
        super().__init__()
        self.equivariant, self.tanh, self.scale, self.k = equivariant, tanh, scale, n_vectors
        d_mlp_in = d_in if equivariant else d_in + 3 * n_vectors
        self.net = mlp(d_in=d_mlp_in, d_hidden=d_hidden, d_out=n_vectors if equivariant else 3, n_layers=n_layers,
                       bias=last_bias)
        if last_gain is not None:
            nn.init.xavier_uniform_(self.net[-1].weight, gain=last_gain)

    def forward(self, f: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
        if self.equivariant:
            return (self.bound(self.net(f)).unsqueeze(-1) * vecs).sum(-2)
        out = self.net(torch.cat([f, vecs.flatten(-2).to(f.dtype)], dim=-1))
        return self.bound(out)

    def bound(self, g: torch.Tensor) -> torch.Tensor:
        """``scale * tanh(g)`` with ``tanh``, else ``g`` (applied to the raw MLP output)."""
        return self.scale * torch.tanh(g) if self.tanh else g

    def gate(self, f: torch.Tensor) -> torch.Tensor:
        """The bounded scalar gate ``g(f)`` of an equivariant one-vector head (``forward(f, V) = g(f) V``).

        The last layer is a matrix-vector product: for a large ``f`` (edges, pairs) a ``(R, 1)`` GEMM and
        its rank-1 backward are several times slower on CPU. After a SiLU it is :func:`silu_linear`
        (the SiLU's output is not stored). Readable form: :func:`~set_lightning.models.reference.vector_gate`.

        Shapes:
            f: ``(*, d_in)`` -> ``(*)``.
        """
        if not self.equivariant or self.k != 1:
            raise ValueError("gate() needs an equivariant head with one vector")
        weight, bias = self.last_layer()
        layers = list(self.net)
        if len(layers) >= 3 and isinstance(layers[-2], nn.SiLU) and f.numel() >= STORE_LESS_ELEMENTS:
            pre = f  # SiLU -> last Linear without storing the SiLU's output: see silu_linear
            for layer in layers[:-2]:
                pre = layer(pre)
            return self.bound(silu_linear(pre, weight, bias).squeeze(-1))
        hidden = self.features(f)
        raw = hidden @ weight[0].to(hidden.dtype)
        return self.bound(raw if bias is None else raw + bias[0].to(raw.dtype))

    def features(self, f: torch.Tensor) -> torch.Tensor:
        """The MLP up to (not including) its last linear layer."""
        for layer in list(self.net)[:-1]:
            f = layer(f)
        return f

    def last_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(k, d)`` and bias ``(k,)`` (or None) of the last linear layer of the MLP."""
        lin = self.net[-1]
        return lin.weight, lin.bias


def gate_heads(f: torch.Tensor, heads: list[VectorOut]) -> torch.Tensor:
    """Raw gates of several single-output equivariant heads whose last layer reads ``f``, in one matmul.

    Equal to ``torch.cat([head.net[-1](f) for head in heads], -1)`` (one output per head): the last
    layers' weights are stacked so that ``f`` (typically a large per-pair tensor) is read once and its
    gradient is one matmul instead of a sum of rank-1 products. Readable form:
    :func:`set_lightning.models.reference.gate_heads`.

    Shapes:
        f: ``(*, d)`` -> ``(*, len(heads))``.
    """
    return nn.functional.linear(f, *stacked_last_layers(heads))


def stacked_last_layers(heads: list[VectorOut]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last layers of several heads as one: weights stacked ``(sum k, d)``, biases ``(sum k,)`` (zeros
    for a head without bias; None if no head has one)."""
    ws, bs = zip(*(head.last_layer() for head in heads))
    if all(b is None for b in bs):
        return torch.cat(ws), None
    return torch.cat(ws), torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(ws, bs)])


class PairLinear(nn.Module):
    """``Linear([a_i, b_j, e_ij])`` for all pairs without materialising the concatenation.

    Equal (same parameter count) to ``nn.Linear(d_a + d_b + d_e, d_out)`` applied to the concatenation:
    the node terms are computed once per node and broadcast to the pairs, the few edge features are
    added in place by fused multiply-adds (:func:`add_outer_`), and an edge feature that is the same
    number for every pair is folded into the node term. Readable form (the concatenation):
    :func:`set_lightning.models.reference.pair_linear`.

    ``cols`` are the ``d_e`` edge features, one column each: a tensor broadcastable to the pairs or a
    number (constant over the pairs). With ``index`` ``(P, K)`` the pairs are ``(i, index[i, k])`` instead of
    all ``(i, j)`` (e.g. the ``K = N - 1`` neighbours of each node, see :func:`neighbour_index`).

    Args:
        d_a: size of ``a``.
        d_b: size of ``b``.
        d_e: number of edge features.
        d_out: output size.

    Shapes:
        a: ``(*, P, d_a)``, b: ``(*, Q, d_b)``, cols: ``d_e`` x ``(*, P, Q, 1)`` (broadcastable) or numbers
        -> ``(*, P, Q, d_out)``; with index ``(P, K)``: cols ``(*, P, K, 1)`` -> ``(*, P, K, d_out)``.
    """

    def __init__(self, *, d_a: int, d_b: int, d_e: int, d_out: int) -> None:
        super().__init__()
        self.lin_a = nn.Linear(d_a, d_out)
        self.lin_b = nn.Linear(d_b, d_out, bias=False)
        self.lin_e = nn.Linear(d_e, d_out, bias=False) if d_e > 0 else None

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, cols: list[torch.Tensor | float] = (),
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        za, zb, tensor_cols, weight = self.node_terms(a, b, cols)
        out = za.unsqueeze(-2) + (zb.unsqueeze(-3) if index is None else gather_nodes(zb, index))
        if not tensor_cols:
            return out
        return add_outer_(out, weight, tensor_cols)

    def node_terms(
        self, a: torch.Tensor, b: torch.Tensor, cols: list[torch.Tensor | float] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """The parts of the map before they meet on the pairs: node terms ``za = lin_a(a)`` (plus the
        constant columns' terms), ``zb = lin_b(b)``, the tensor edge columns and their weight columns
        ``(d_out, c)`` (None without tensor columns); ``forward = za_i + zb_j + cols_ij @ weight.T``.

        Shapes: a ``(*, P, d_a)``, b ``(*, Q, d_b)`` -> za ``(*, P, d_out)``, zb ``(*, Q, d_out)``, ``c``
        columns, weight ``(d_out, c)``.
        """
        n_e = 0 if self.lin_e is None else self.lin_e.in_features
        if len(cols) != n_e:
            raise ValueError(f"PairLinear takes {n_e} edge feature column(s), got {len(cols)}")
        za, zb = self.lin_a(a), self.lin_b(b)
        tensors = [c for c, col in enumerate(cols) if isinstance(col, torch.Tensor)]
        for c in sorted(set(range(n_e)) - set(tensors)):  # a constant column: part of the node term
            za = za + cols[c] * self.lin_e.weight[:, c].to(za.dtype)
        if not tensors:
            return za, zb, [], None
        weight = self.lin_e.weight if len(tensors) == n_e else self.lin_e.weight[:, tensors]
        return za, zb, [cols[c] for c in tensors], weight


class _AddOuter(torch.autograd.Function):
    """``base += sum_c cols[c] * weight[:, c]`` in place; see :func:`add_outer_`."""

    @staticmethod
    def forward(ctx, base, weight, *cols):  # type: ignore[override]
        ctx.mark_dirty(base)
        ctx.save_for_backward(weight, *cols)
        for c, col in enumerate(cols):
            base.addcmul_(col, weight[:, c])
        return base

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, *cols = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grads: list[torch.Tensor | None] = [grad, None]
        for c, col in enumerate(cols):
            grads.append((g2 @ weight[:, c]).view(grad.shape[:-1] + (1,)).sum_to_size(col.shape)
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
    if x.numel() < STORE_LESS_ELEMENTS:
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


class _PairSiluGates(torch.autograd.Function):
    """``silu(za_p + zb_q + cols_pq @ wcols.T) @ weight.T`` chunk by chunk over the rows (:func:`pair_silu_gates`)."""

    @staticmethod
    def _pre(za, zb, wcols, cols, r0, r1):  # type: ignore[no-untyped-def]
        pre = za[r0:r1].unsqueeze(-2) + zb[r0:r1].unsqueeze(-3)
        for c, col in enumerate(cols):
            pre.addcmul_(_chunk_col(col, za.shape[0], r0, r1), wcols[:, c])
        return pre

    @staticmethod
    def forward(ctx, za, zb, wcols, weight, *cols):  # type: ignore[override]
        r, p, d = za.shape
        q, k = zb.shape[1], weight.shape[0]
        out = za.new_empty(r, p, q, k)
        step = _rows(r, p * q * d)
        with torch.autocast(za.device.type, enabled=False):
            for r0 in range(0, r, step):
                pre = _PairSiluGates._pre(za, zb, wcols, cols, r0, r0 + step)
                torch.mm(nn.functional.silu(pre, inplace=True).view(-1, d), weight.t(),
                         out=out[r0:r0 + step].view(-1, k))
        ctx.save_for_backward(za, zb, wcols, weight, *cols)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        za, zb, wcols, weight, *cols = ctx.saved_tensors
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
            pre = _PairSiluGates._pre(za, zb, wcols, cols, r0, r1).view(-1, d)
            g = grad[r0:r1].reshape(-1, k)
            if need_w:
                g_w.addmm_(g.t(), nn.functional.silu(pre))
            g_pre = torch.ops.aten.silu_backward(_times_rows(g, weight), pre)
            g4 = g_pre.view(r1 - r0, p, q, d)
            if need_za:
                torch.sum(g4, 2, out=g_za[r0:r1])
            if need_zb:
                torch.sum(g4, 1, out=g_zb[r0:r1])
            for c, col in enumerate(cols):
                part = _chunk_col(col, r, r0, r1)
                if need_wc:
                    g_wc[c] += (part.expand(r1 - r0, p, q, 1).reshape(1, -1) @ g_pre).squeeze(0)
                if g_cols[c] is not None:
                    g_col = (g_pre @ wcols[:, c]).view(r1 - r0, p, q, 1).sum_to_size(part.shape)
                    if part is col:
                        g_cols[c] += g_col
                    else:
                        g_cols[c][r0:r1] = g_col
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


def neighbour_index(n: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n, n - 1)`` long tensor ``index[i, k] = (i + k + 1) % n``: the other nodes of a complete graph.

    Used to compute edge tensors on the ``n (n - 1)`` real edges only (no masked diagonal).
    """
    i = torch.arange(n, device=device)
    return (i.unsqueeze(-1) + torch.arange(1, n, device=device)) % n


def gather_nodes(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[..., i, k, :] = z[..., index[..., i, k], :]`` (one ``index_select``; its backward is an ``index_add``).

    ``index`` is one ``(P, K)`` table shared by every graph, or one table per graph ``(G, P, K)``.

    Shapes:
        z: ``(*, Q, D)``, index: ``(P, K)`` -> ``(*, P, K, D)``; z: ``(G, Q, D)``, index: ``(G, P, K)`` ->
        ``(G, P, K, D)``.
    """
    if index.dim() == 2:
        out = z.index_select(-2, index.flatten())
        return out.view(*z.shape[:-2], *index.shape, z.shape[-1])
    g, q, d = z.shape
    offsets = torch.arange(g, device=index.device).view(g, 1, 1) * q
    return z.reshape(g * q, d).index_select(0, (index + offsets).flatten()).view(*index.shape, d)


class Graph:
    """The edges ``(i, index[..., i, k])`` of ``G`` graphs of ``N`` nodes, ``K`` per node (no self-edges).

    * complete (:meth:`complete`): one ``(N, N - 1)`` table shared by every graph, no mask (the fast
      dense path);
    * k nearest neighbours (:meth:`knn`): a ``(G, N, k)`` table per graph, chosen by distance;
    * given by the data (:meth:`given`): each node's neighbours in an adjacency matrix, padded to the
      largest degree ``K`` and masked.

    Edge tensors hold ``(G, N, K, .)`` values; memory and time grow as ``N K``. Padded edges point at
    a real node (their values are finite) and are removed by :meth:`masked` and :meth:`softmax`, and not
    counted by :meth:`degree`.

    Shapes:
        index: ``(N, K)`` or ``(G, N, K)``; mask: ``(G, N, K, 1)`` (bool) or None.
    """

    def __init__(self, index: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.index, self.mask = index, mask
        self.k = index.shape[-1]

    @classmethod
    def complete(cls, n: int, device: torch.device | None = None) -> "Graph":
        """Every ordered pair ``i != j`` of ``n`` nodes."""
        return cls(neighbour_index(n, device))

    @classmethod
    def knn(cls, x: torch.Tensor, k: int) -> "Graph":
        """The ``k`` nearest other nodes of every node (by distance in ``x``; E(n)-invariant).

        The selection reads all ``N^2`` distances once, without gradient; the edge tensors hold ``N k``.

        Shapes: x ``(G, N, 3)`` -> index ``(G, N, k)``.
        """
        n = x.shape[-2]
        if not 1 <= k <= n - 1:
            raise ValueError(f"k={k} neighbours need 1 <= k <= N - 1 = {n - 1}")
        with torch.no_grad():
            d2 = (x.unsqueeze(-2) - x.unsqueeze(-3)).square().sum(-1)
            d2.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
            index = d2.topk(k, dim=-1, largest=False, sorted=True).indices
        return cls(index)

    @classmethod
    def given(cls, adjacency: torch.Tensor, repeat: int = 1) -> "Graph":
        """The neighbours ``j`` with ``adjacency[i, j]`` true (the diagonal is ignored), each graph
        ``repeat`` times in a row (the frames of one sample).

        Shapes: adjacency ``(S, N, N)`` -> index, mask ``(S * repeat, N, K, .)`` with ``K`` the largest degree.
        """
        n = adjacency.shape[-1]
        adj = adjacency.bool() & ~torch.eye(n, dtype=torch.bool, device=adjacency.device)
        degree = adj.sum(-1)
        k = max(int(degree.max()) if degree.numel() else 0, 1)
        order = torch.argsort((~adj).to(torch.uint8), dim=-1, stable=True)  # neighbours first, by j
        index = order[..., :k]
        mask = torch.arange(k, device=adj.device) < degree.unsqueeze(-1)
        if repeat > 1:
            index, mask = index.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        return cls(index, mask.unsqueeze(-1))

    def gather(self, z: torch.Tensor) -> torch.Tensor:
        """The far end's values on every edge: ``z[g, index[g, i, k]]``.

        Shapes: z ``(G, N, D)`` -> ``(G, N, K, D)``.
        """
        return gather_nodes(z, self.index)

    def pick(self, e: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """The values of a dense pair tensor on the edges; graph ``g`` reads sample ``g // repeat``.

        Shapes: e ``(S, N, N, D)`` -> ``(S * repeat, N, K, D)``.
        """
        s, n, _, d = e.shape
        index = self.index if self.index.dim() == 3 else self.index.expand(s * repeat, *self.index.shape)
        g = index.shape[0]
        rows = (torch.arange(g, device=index.device) // repeat).view(g, 1, 1) * n + torch.arange(
            n, device=index.device).view(1, n, 1)
        return e.reshape(s * n * n, d).index_select(0, (rows * n + index).flatten()).view(g, n, self.k, d)

    def masked(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with the padded edges set to zero.  Shapes: ``(G, N, K, D)`` -> the same."""
        return t if self.mask is None else t * self.mask.to(t.dtype)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax over each node's edges, padded edges excluded (weight 0; a node without edges gets none).

        Shapes: scores ``(G, N, K, C)`` -> the same.
        """
        if self.mask is None:
            return scores.softmax(dim=-2)
        low = torch.finfo(scores.dtype).min
        return self.masked(scores.masked_fill(~self.mask, low).softmax(dim=-2))

    def degree(self) -> torch.Tensor | float:
        """Number of real edges of each node, at least 1 (``N - 1`` for the complete graph).

        Shapes: -> a number or ``(G, N, 1)``.
        """
        if self.mask is None:
            return float(max(self.k, 1))
        return self.mask.sum(-2).clamp(min=1)


def sinusoidal_encoding(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal code of (float) positions, in float64.

    Shapes:
        pos: ``(*)`` -> ``(*, dim)``.
    """
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float64) / max(half, 1))
    ang = pos.to(torch.float64).unsqueeze(-1) * freq
    pe = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        pe = torch.cat([pe, torch.zeros_like(pe[..., :1])], dim=-1)
    return pe
