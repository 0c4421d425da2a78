"""E(n)-equivariant graph convolution (Satorras et al. 2021) on dense, fully connected graphs."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .layers import EPS, PairLinear, VectorOut, gather_edges, gather_nodes, neighbour_index


TRANS_CLAMP = 100.0


class EGCL(nn.Module):
    r"""One E(n)-equivariant graph convolutional layer with optional multi-head edge attention.

    For every graph (the batch and time axes are folded together, ``G = B * L``), all pairs ``i != j``::

        m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)
        x_i' = x_i + C * sum_j w_ij * (x_i - x_j) * phi_x(m_ij) + phi_v(h_i) * v_i
        h_i' = h_i + phi_h(h_i, sum_j w_ij m_ij)

    With ``attention`` the weights are a softmax over ``j`` of an invariant score ``Linear(m_ij)`` (one per
    head; the message channels are split across heads, coordinates use the head-mean weight). Without
    it, messages are summed and coordinate updates averaged over neighbours (exactly EGNN's choice).
    ``equivariant=False`` feeds the coordinate differences to ``phi_e`` and predicts ``phi_x`` and
    ``phi_v`` as raw 3-vectors (``MLP([m_ij, x_i - x_j])``, ``MLP([h_i, v_i])``): no longer rotation
    equivariant, still translation invariant. As in EGNN, the last layer of ``phi_x`` has no bias and is
    xavier-initialised with gain 0.001.

    Implementation (same function, fewer passes over the edge tensors, which dominate the cost): edges
    are dense ``(G, N, N - 1, .)`` tensors holding only the real edges ``(i, (i + k + 1) % N)`` (no
    masked diagonal, 20 % less work at ``N = 5``); ``phi_e``'s first layer is computed per node and
    broadcast (``W [h_i; h_j; e] = W_1 h_i + W_2 h_j + W_3 e``, the few edge attributes added by fused
    multiply-adds); ``phi_x``'s scalar last layer is a matrix-vector product.

    Args:
        hidden: width ``H`` of node features and messages.
        edge_dim: number of edge attributes ``a_ij``.
        attention: softmax attention over neighbours (True) or plain sum / mean (False).
        n_heads: attention heads (must divide ``hidden``).
        equivariant: keep E(n) equivariance (see above).
        velocity: add the velocity term ``phi_v(h_i) v_i`` to the coordinate update.
        norm_diff: use ``(x_i - x_j) / (|x_i - x_j| + 1)`` in the coordinate update.
        tanh: bound ``phi_x`` by ``coords_range * tanh``.
        coords_range: bound used with ``tanh``.
        coords_weight: constant ``C`` multiplying the aggregated coordinate update.
        recurrent: residual node update ``h + phi_h`` (EGNN's ``recurrent``).
        pre_norm: feed ``LayerNorm(h)`` (instead of ``h``) to ``phi_e``, ``phi_h`` and ``phi_v``; the residual
            stream stays un-normalised. Keeps deep stacks bounded (not in the EGNN reference).

    Shapes:
        h: ``(G, N, H)``, x: ``(G, N, 3)``, v: ``(G, N, 3)``, edge_attr: ``(G, N, N, edge_dim)`` (the
        diagonal is ignored) -> h ``(G, N, H)``, x ``(G, N, 3)``.
    """

    def __init__(
        self, hidden: int = 64, edge_dim: int = 2, attention: bool = True, n_heads: int = 4,
        equivariant: bool = True, velocity: bool = True, norm_diff: bool = True, tanh: bool = True,
        coords_range: float = 15.0, coords_weight: float = 1.0, recurrent: bool = True, pre_norm: bool = False,
    ) -> None:
        super().__init__()
        if attention and hidden % n_heads:
            raise UserError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.attention, self.n_heads, self.equivariant = attention, n_heads, equivariant
        self.norm_diff, self.coords_weight, self.recurrent = norm_diff, coords_weight, recurrent
        d_e = 1 + edge_dim + (0 if equivariant else 3)
        self.edge_in = PairLinear(hidden, hidden, d_e, hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.phi_x = VectorOut(hidden, 1, hidden, equivariant, tanh, coords_range, last_gain=0.001, last_bias=False)
        self.phi_v = VectorOut(hidden, 1, hidden, equivariant) if velocity else None
        self.att = nn.Linear(hidden, n_heads) if attention else None
        self.norm = nn.LayerNorm(hidden) if pre_norm else None

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, v: torch.Tensor | None, edge_attr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[-2]
        hn = h if self.norm is None else self.norm(h)
        nb = neighbour_index(n, x.device)  # (N, N-1): the edges (i, nb[i, k])
        diff = x.unsqueeze(-2) - gather_nodes(x, nb)  # (G, N, N-1, 3): x_i - x_j
        radial = diff.square().sum(-1, keepdim=True)
        if self.norm_diff:
            diff = diff / (torch.sqrt(radial + EPS) + 1.0)
        e = [radial, gather_edges(edge_attr, nb)] + ([] if self.equivariant else [diff])
        m = self.edge_out(self.edge_in(hn, hn, torch.cat([t.to(radial.dtype) for t in e], dim=-1), nb))
        d = m.shape[-1]
        logits = self.att(m) if self.att is not None else None  # (G, N, N-1, heads)
        if self.equivariant:
            # phi_x(m) = bound(w . SiLU(Linear(m))): the last layer as a matrix-vector product (a (R, 1)
            # GEMM and its rank-1 backward are several times slower on CPU)
            last = self.phi_x.net[-1]  # Linear(H, 1), no bias in EGNN's phi_x
            hx = self.phi_x.features(m)
            raw = hx @ last.weight[0].to(hx.dtype)  # (G, N, N-1)
            gx = self.phi_x.bound(raw if last.bias is None else raw + last.bias[0].to(raw.dtype))
            trans = gx.unsqueeze(-1) * diff
        else:
            trans = self.phi_x(m, diff.unsqueeze(-2))
        # EGNN's reference clamps every coordinate message to +-100 ("never activated but just in
        # case it explodes"); it keeps a diverging early step from producing inf
        trans = trans.clamp(-TRANS_CLAMP, TRANS_CLAMP)
        if logits is not None:
            a = logits.softmax(dim=-2)  # (G, N, N-1, heads): softmax over the neighbours
            g, _, k, _ = m.shape
            agg = (a.unsqueeze(-1) * m.view(g, n, k, self.n_heads, d // self.n_heads)).sum(-3).flatten(-2)
            x = x + self.coords_weight * (a.mean(-1, keepdim=True) * trans).sum(-2)
        else:
            agg = m.sum(-2)
            x = x + (self.coords_weight / max(n - 1, 1)) * trans.sum(-2)
        if self.phi_v is not None:
            x = x + self.phi_v(hn, v.unsqueeze(-2))
        out = self.node_mlp(torch.cat([hn, agg.to(hn.dtype)], dim=-1))
        return (h + out if self.recurrent else out), x
