"""E(n)-equivariant graph convolution (Satorras et al. 2021) on complete, k-nearest-neighbour or given graphs."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import renamed_argument
from . import fused
from .fused import edge_messages, silu_linear
from .graph import Graph
from .layers import EPS, PairLinear, VectorOut

TRANS_CLAMP = 100.0


class EGCL(nn.Module):
    r"""One E(n)-equivariant graph convolutional layer with optional multi-head edge attention.

    For every graph (the batch and time axes are folded together, ``G = B * L``) and its edges ``(i, j)``
    (all pairs ``i != j`` of the complete graph, or a :class:`~set_lightning.models.graph.Graph`'s),
    in the steps of the forward (as EGNN's ``E_GCL``: ``edge_model``, ``coord_model``, ``node_model``)::

        coord2radial:    d_ij = x_i - x_j,  r_ij = |x_i - x_j|^2
        edge_model:      m_ij = phi_e(h_i, h_j, r_ij, a_ij)
        edge_attention:  w_ij = softmax_j Linear(m_ij)  (per head; or the plain sum / mean)
        coord_model:     x_i' = x_i + C * sum_j w_ij * d_ij * phi_x(m_ij) + phi_v(h_i) * v_i
        node_model:      h_i' = h_i + phi_h(h_i, sum_j w_ij m_ij)

    With ``attention`` the weights are a softmax over ``j`` of an invariant score ``Linear(m_ij)`` (one per
    head; the message channels are split across heads, coordinates use the head-mean weight). Without
    it, messages are summed and coordinate updates averaged over neighbours (exactly EGNN's choice; on a
    given graph, over each node's real neighbours).
    ``equivariant=False`` feeds the coordinate differences to ``phi_e`` and predicts ``phi_x`` and
    ``phi_v`` as raw 3-vectors (``MLP([m_ij, x_i - x_j])``, ``MLP([h_i, v_i])``): no longer rotation
    equivariant, still translation invariant. As in EGNN, the last layer of ``phi_x`` has no bias and is
    xavier-initialised with gain 0.001, and every coordinate message is clamped to norm <= 100.

    Implementation (same function, fewer passes over the edge tensors, which dominate the cost): edges
    are dense ``(G, N, K, .)`` tensors holding only the graph's edges (complete graph: ``K = N - 1``,
    ``(i, (i + k + 1) % N)``, no masked diagonal, 20 % less work at ``N = 5``; k-NN: ``K = k``, so the
    cost grows as ``N k``); ``phi_e``'s first layer is a :class:`PairLinear`
    (``W [h_i; h_j; e] = W_1 h_i + W_2 h_j + W_3 e``, computed per node and broadcast); ``phi_x``'s scalar
    gate is :meth:`VectorOut.gate` (its last layer a matrix-vector product); on large edge tensors (N = 20)
    ``phi_e`` (its first layer, SiLU, second layer and SiLU) is computed by chunks of graphs without
    storing an edge tensor (:func:`~set_lightning.models.fused.edge_messages`: the backward recomputes its
    inside, one more matrix product) and ``phi_x``'s two layers store only their input, the messages
    (:func:`~set_lightning.models.fused.linear_silu_linear`). The readable dense form of the whole layer is
    :func:`set_lightning.models.reference.egcl`.

    Args:
        hidden: width ``H`` of node features and messages.
        edge_features: number of edge features ``a_ij`` (``q_i q_j``, ``|x_i - x_j|^2`` and the samples' pair
            attributes; not the models' ``edge_features``, which counts the last only).
        attention: softmax attention over neighbours (True) or plain sum / mean (False).
        n_heads: attention heads (must divide ``hidden``).
        equivariant: keep E(n) equivariance (see above).
        velocity: add the velocity term ``phi_v(h_i) v_i`` to the coordinate update.
        norm_diff: use ``(x_i - x_j) / (|x_i - x_j| + 1)`` in the coordinate update.
        tanh: bound ``phi_x`` by ``coords_range * tanh``.
        coords_range: bound used with ``tanh``.
        coords_weight: constant ``C`` multiplying the aggregated coordinate update.
        residual: residual node update ``h + phi_h`` (False: ``h' = phi_h``; EGNN's ``recurrent``).
        pre_norm: feed ``LayerNorm(h)`` (instead of ``h``) to ``phi_e``, ``phi_h`` and ``phi_v``; the residual
            stream stays un-normalised. Keeps deep stacks bounded (not in the EGNN reference).
        recurrent: deprecated name of ``residual`` (EGNN's name for it).

    Shapes:
        h: ``(G, N, H)``, x: ``(G, N, 3)``, v: ``(G, N, 3)`` (None without ``velocity``), edge_attr:
        ``(G, N, K, edge_features)`` on the graph's edges (:meth:`Graph.pick` of a dense ``(G, N, N, edge_features)``),
        graph: a :class:`Graph` with ``K`` edges per node (default: complete) -> h ``(G, N, H)``, x ``(G, N, 3)``.
    """

    def __init__(
        self, *, hidden: int = 64, edge_features: int = 2, attention: bool = True, n_heads: int = 4,
        equivariant: bool = True, velocity: bool = True, norm_diff: bool = True, tanh: bool = True,
        coords_range: float = 15.0, coords_weight: float = 1.0, residual: bool = True, pre_norm: bool = False,
        recurrent: bool | None = None,
    ) -> None:
        super().__init__()
        residual = renamed_argument("EGCL", "residual", residual, True, "recurrent", recurrent)
        if attention and hidden % n_heads:
            raise UserError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.attention, self.n_heads, self.equivariant = attention, n_heads, equivariant
        self.norm_diff, self.coords_weight, self.residual = norm_diff, coords_weight, residual
        d_e = 1 + edge_features + (0 if equivariant else 3)
        self.edge_in = PairLinear(d_a=hidden, d_b=hidden, d_e=d_e, d_out=hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.phi_x = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant, tanh=tanh,
                               scale=coords_range, last_gain=0.001, last_bias=False)
        self.phi_v = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant) if velocity else None
        self.att = nn.Linear(hidden, n_heads) if attention else None
        self.norm = nn.LayerNorm(hidden) if pre_norm else None

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, v: torch.Tensor | None, edge_attr: torch.Tensor,
        graph: Graph | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        graph = Graph.complete(x.shape[-2], x.device) if graph is None else graph
        hn = h if self.norm is None else self.norm(h)
        diff, radial = self.coord2radial(x, graph)
        m = self.edge_model(hn, radial, edge_attr, diff, graph)
        w = self.edge_attention(m, graph)
        x = self.coord_model(x, v, hn, diff, m, w, graph)
        h = self.node_model(h, hn, m, w, graph)
        return h, x

    def coord2radial(self, x: torch.Tensor, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinate differences ``x_i - x_j`` (normalised with ``norm_diff``) and squared distances.

        Shapes: x ``(G, N, 3)`` -> diff ``(G, N, K, 3)``, radial ``(G, N, K, 1)``.
        """
        diff = x.unsqueeze(-2) - graph.gather(x)
        radial = diff.square().sum(-1, keepdim=True)
        if self.norm_diff:
            diff = diff / (torch.sqrt(radial + EPS) + 1.0)
        return diff, radial

    def edge_model(
        self, hn: torch.Tensor, radial: torch.Tensor, edge_attr: torch.Tensor, diff: torch.Tensor, graph: Graph
    ) -> torch.Tensor:
        """Messages ``m_ij = phi_e(h_i, h_j, r_ij, a_ij)`` (and ``d_ij`` with ``equivariant=False``).

        Shapes: hn ``(G, N, H)``, radial ``(G, N, K, 1)``, edge_attr ``(G, N, K, edge_features)``, diff
        ``(G, N, K, 3)`` -> ``(G, N, K, H)``.
        """
        cols = [radial, *edge_attr.split(1, dim=-1)]
        if not self.equivariant:
            cols += diff.split(1, dim=-1)
        cols = [c.to(radial.dtype) for c in cols]
        act, lin, act_out = self.edge_out  # SiLU -> Linear -> SiLU
        g, n, k = radial.shape[:3]
        if fused.store_less(g * n * k * self.edge_in.lin_a.out_features):
            # large edge tensors (N = 20): the whole chain by chunks of graphs, no edge tensor stored
            za, zb, tensor_cols, weight = self.edge_in.node_terms(hn, hn, cols)
            return edge_messages(za, zb, graph.index, tensor_cols, weight, lin.weight, lin.bias)
        pre = self.edge_in(hn, hn, cols, graph.index)
        return act_out(silu_linear(pre, lin.weight, lin.bias))

    def edge_attention(self, m: torch.Tensor, graph: Graph) -> torch.Tensor | None:
        """Attention weights over each node's edges, per head (None without ``attention``: plain sum / mean).

        Shapes: m ``(G, N, K, H)`` -> ``(G, N, K, n_heads)`` (zero on a given graph's padding).
        """
        return None if self.att is None else graph.softmax(self.att(m))

    def coord_model(
        self, x: torch.Tensor, v: torch.Tensor | None, hn: torch.Tensor, diff: torch.Tensor, m: torch.Tensor,
        w: torch.Tensor | None, graph: Graph,
    ) -> torch.Tensor:
        """``x_i + C sum_j w_ij d_ij phi_x(m_ij) + phi_v(h_i) v_i`` (mean over neighbours without attention).

        Shapes: x ``(G, N, 3)``, v ``(G, N, 3)``, hn ``(G, N, H)``, diff ``(G, N, K, 3)``, m ``(G, N, K, H)``,
        w ``(G, N, K, n_heads)`` or None -> ``(G, N, 3)``.
        """
        if self.equivariant:
            trans = self.phi_x.gate(m).unsqueeze(-1) * diff
        else:
            trans = self.phi_x(m, diff.unsqueeze(-2))
        # EGNN's reference clamps every coordinate message to +-100 ("never activated but just in
        # case it explodes"); it keeps a diverging early step from producing inf. Clamped by its norm (per
        # component would turn the vector: not rotation equivariant, and no gradient once clamped)
        trans = trans * (TRANS_CLAMP / torch.linalg.vector_norm(trans, dim=-1, keepdim=True).clamp(min=TRANS_CLAMP))
        if w is not None:
            x = x + self.coords_weight * (w.mean(-1, keepdim=True) * trans).sum(-2)
        else:
            x = x + self.coords_weight * graph.masked(trans).sum(-2) / graph.degree()
        if self.phi_v is not None:
            x = x + self.phi_v(hn, v.unsqueeze(-2))
        return x

    def node_model(
        self, h: torch.Tensor, hn: torch.Tensor, m: torch.Tensor, w: torch.Tensor | None, graph: Graph
    ) -> torch.Tensor:
        """``h_i + phi_h(h_i, sum_j w_ij m_ij)``: each head weighs its share of the message channels.

        Shapes: h, hn ``(G, N, H)``, m ``(G, N, K, H)``, w ``(G, N, K, n_heads)`` or None -> ``(G, N, H)``.
        """
        if w is not None:
            g, n, k, d = m.shape
            agg = (w.unsqueeze(-1) * m.view(g, n, k, self.n_heads, d // self.n_heads)).sum(-3).flatten(-2)
        else:
            agg = graph.masked(m).sum(-2)
        out = self.node_mlp(torch.cat([hn, agg.to(hn.dtype)], dim=-1))
        return h + out if self.residual else out
