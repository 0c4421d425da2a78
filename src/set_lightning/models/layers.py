"""Small building blocks shared by the models: MLPs, vector heads, pair features, positional codes.
The fused kernels with their own backward live in :mod:`.fused`, the graphs in :mod:`.graph`.

Axis symbols (the same in every model file): ``B`` batch, ``L`` history frames, ``N`` particles,
``H`` hidden width, ``G = B * L`` graphs (the frames folded into the batch), ``K`` neighbours of a
node (``N - 1`` in the complete graph), ``R`` rows of ``T`` tokens in ETAL; generic helpers name the two
sides of a pair tensor ``P`` and ``Q``; ``*`` any leading axes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import fused
from .fused import add_outer_, linear_silu_linear, silu_linear
from .graph import gather_nodes

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
        its rank-1 backward are several times slower on CPU. On a large ``f`` a two-layer MLP is
        :func:`linear_silu_linear` (only ``f`` stored), a deeper one ends in :func:`silu_linear` (the SiLU's
        output is not stored). Readable form: :func:`~set_lightning.models.reference.vector_gate`.

        Shapes:
            f: ``(*, d_in)`` -> ``(*)``.
        """
        if not self.equivariant or self.k != 1:
            raise ValueError("gate() needs an equivariant head with one vector")
        weight, bias = self.last_layer()
        layers = list(self.net)
        large = fused.store_less(f.numel())
        if large and len(layers) == 3 and isinstance(layers[1], nn.SiLU):
            first = layers[0]  # Linear -> SiLU -> Linear storing only f: see linear_silu_linear
            return self.bound(linear_silu_linear(f, first.weight, first.bias, weight, bias).squeeze(-1))
        if large and len(layers) >= 3 and isinstance(layers[-2], nn.SiLU):
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


def dropout_part(
    x: torch.Tensor, p: float, training: bool, full_shape: tuple[int, ...], part: tuple[slice | int, ...],
) -> torch.Tensor:
    """``nn.functional.dropout(full, p, training)[part]`` where only ``x = full[part]`` is computed.

    The mask is drawn for the whole tensor, as the dropout of the whole tensor draws it, and only its
    ``part`` is applied: the same random numbers (bit for bit), the same generator state after, and a
    fraction of the multiply. Used where only the last frame of a layer's output is read
    (:class:`~set_lightning.models.set.SET`'s last block with ``readout="last"``). On CPU, dropout is
    ``input * empty_like(input).bernoulli_(1 - p).div_(1 - p)``, followed here on the part; other devices
    (a fused kernel) take the mask as the dropout of a tensor of ones.

    Shapes:
        x: ``full[part]`` of a tensor of ``full_shape`` -> the same shape as ``x``.
    """
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p == 1:
        return x * nn.functional.dropout(x.new_ones(full_shape), p, training)[part]
    noise = x.new_empty(full_shape).bernoulli_(1 - p)[part]
    return x * noise.div_(1 - p)
