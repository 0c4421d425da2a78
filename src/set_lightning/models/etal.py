"""Equivariant temporal attention layer (ETAL) of the Spacetime E(n)-Transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from .layers import EPS, PairLinear, VectorOut, add_outer_, gate_heads, sinusoidal_encoding


class ETAL(nn.Module):
    r"""Multi-head attention across the ``L`` frames of each node, equivariant in its vector outputs.

    Tokens are ``(node i, frame t)``. With ``adjacency=False`` token ``(i, t)`` attends to ``(i, s)`` for
    all ``s``; with ``adjacency=True`` to ``(j, s)`` for every node ``j`` and frame ``s``
    (spatio-temporal edges). With relative vectors ``r_ts = x_s - x_t`` (``x_j(s) - x_i(t)``)::

        a_h(t, s) = softmax_s( q_h(t) . k_h(s) / sqrt(d) + w_h . [log(1 + |r_ts|^2), same_node] )
        h~(t)     = h(t) + W_o concat_h( sum_s a_h(t, s) W_v LN(h)(s) )
        x~(t)     = x(t) + sum_s abar(t, s) phi_x(p_ts) r_ts
        u~(t)     = u(t) + sum_s abar(t, s) phi_u(p_ts) u_s

    with ``q, k`` from ``LN(h) + pe`` (``pe``: sinusoidal code of the number of frames before the input
    frame), ``abar`` the head mean and the pair feature ``p_ts = SiLU(Linear[LN(h)+pe](t), [LN(h)+pe](s),
    log(1 + |r_ts|^2), same_node])``. Scores, gates and ``h`` only see invariants, so ``x~`` is
    E(n)-equivariant and ``u~`` O(n)-equivariant. ``equivariant=False`` predicts the ``x`` and ``u``
    updates as raw 3-vectors ``MLP([p_ts, r_ts])``, ``MLP([p_ts, u_s])``.

    Implementation: the pair tensor ``p`` ``(B', T, S, H)`` dominates the cost. Its pre-activation is
    built from per-token terms broadcast to the pairs plus one fused multiply-add for the distance term
    (``same_node`` is constant without ``adjacency`` and folds into the bias); in the equivariant case
    ``phi_x`` and ``phi_u`` read ``p`` in one matmul, and the velocity update is a batched matmul.

    Args:
        hidden: feature width ``H``.
        n_heads: attention heads (must divide ``hidden``).
        dropout: dropout on the attention output.
        equivariant: keep E(n) equivariance (see above).
        adjacency: attend to all nodes at all frames (True) or to the node's own history (False).
        norm_diff: use ``r / (|r| + 1)`` in the coordinate update.
        tanh: bound the coordinate gate by ``coords_range * tanh`` and the velocity gate by ``tanh``.
        coords_range: bound used with ``tanh``.

    Shapes:
        h: ``(B * L, N, H)``, x: ``(B * L, N, 3)``, u: ``(B * L, N, 3)`` (frames folded into the batch,
        batch-major) -> the same three shapes.
    """

    def __init__(
        self, hidden: int = 64, n_heads: int = 4, dropout: float = 0.1, equivariant: bool = True,
        adjacency: bool = False, norm_diff: bool = True, tanh: bool = True, coords_range: float = 15.0,
    ) -> None:
        super().__init__()
        if hidden % n_heads:
            raise UserError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.hidden, self.n_heads, self.adjacency, self.norm_diff = hidden, n_heads, adjacency, norm_diff
        self.norm = nn.LayerNorm(hidden)
        self.qk = nn.Linear(hidden, 2 * hidden)
        self.val = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.geo = nn.Linear(2, n_heads, bias=False)
        nn.init.zeros_(self.geo.weight)
        self.pair = PairLinear(hidden, hidden, 2, hidden)
        # p_ts is already a hidden layer: phi_x, phi_u = Linear(p_ts) (a 2-layer MLP of the pair inputs)
        self.phi_x = VectorOut(hidden, 1, hidden, equivariant, tanh, coords_range, last_gain=0.001, last_bias=False,
                               n_layers=1)
        self.phi_u = VectorOut(hidden, 1, hidden, equivariant, tanh, 1.0, n_layers=1)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, u: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, n, d = h.shape
        b, ell = batch, g // batch
        # tokens: (B', T, .) with B' = B * N, T = L (own history) or B' = B, T = L * N (all nodes)
        if self.adjacency:
            fold = lambda z: z.reshape(b, ell * n, z.shape[-1])  # noqa: E731  token order (t, i)
            unfold = lambda z: z.reshape(g, n, z.shape[-1])  # noqa: E731
            t_idx = torch.arange(ell, device=h.device).repeat_interleave(n)
            n_idx = torch.arange(n, device=h.device).repeat(ell)
        else:
            fold = lambda z: z.reshape(b, ell, n, z.shape[-1]).transpose(1, 2).reshape(b * n, ell, z.shape[-1])  # noqa: E731
            unfold = lambda z: z.reshape(b, n, ell, z.shape[-1]).transpose(1, 2).reshape(g, n, z.shape[-1])  # noqa: E731
            t_idx = torch.arange(ell, device=h.device)
            n_idx = torch.zeros(ell, dtype=torch.long, device=h.device)
        ht, xt, ut = fold(h), fold(x), fold(u)
        bt, t = ht.shape[:2]

        hn = self.norm(ht)
        hq = hn + sinusoidal_encoding(ell - 1 - t_idx, d).to(hn.dtype)
        rel = xt.unsqueeze(-3) - xt.unsqueeze(-2)  # (B', T, S, 3): x_s - x_t
        r2 = rel.square().sum(-1, keepdim=True)
        lr2 = torch.log1p(r2)  # (B', T, S, 1); the other invariant is same = [node(t) == node(s)]
        same = (n_idx[:, None] == n_idx[None, :]).to(r2.dtype) if self.adjacency else None  # (T, S)

        nh, dh = self.n_heads, d // self.n_heads
        q, k = self.qk(hq).view(bt, t, 2, nh, dh).permute(2, 0, 3, 1, 4)
        val = self.val(hn).view(bt, t, nh, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        wg = self.geo.weight.to(scores.dtype)  # (heads, 2): Linear([log1p(r2), same]) without bias
        bias = lr2.squeeze(-1).unsqueeze(1).to(scores.dtype) * wg[:, 0, None, None]  # (B', heads, T, S)
        bias = bias + (same * wg[:, 1, None, None] if same is not None else wg[:, 1, None, None])
        a = (scores + bias).softmax(-1)  # (B', heads, T, S)
        o = (a.to(val.dtype) @ val).transpose(1, 2).reshape(bt, t, d)
        ht = ht + self.drop(self.out(o))

        abar = a.mean(1)  # (B', T, S)
        p = nn.functional.silu(self._pair_pre(hq, lr2, same))  # (B', T, S, H)
        if self.norm_diff:
            rel = rel / (torch.sqrt(r2 + EPS) + 1.0)
        if self.phi_x.equivariant:
            gx, gu = gate_heads(p, [self.phi_x, self.phi_u]).unbind(-1)  # (B', T, S) each
            wx = abar * self.phi_x.bound(gx)
            wu = abar * self.phi_u.bound(gu)
            xt = xt + (wx.unsqueeze(-1) * rel).sum(-2)
            ut = ut + wu.to(ut.dtype) @ ut  # sum_s abar phi_u u_s
        else:
            abar = abar.unsqueeze(-1)
            xt = xt + (abar * self.phi_x(p, rel.unsqueeze(-2))).sum(-2)
            us = ut.unsqueeze(-3).expand(bt, t, t, 3).unsqueeze(-2)  # u_s for every (t, s)
            ut = ut + (abar * self.phi_u(p, us)).sum(-2)
        return unfold(ht), unfold(xt), unfold(ut)

    def _pair_pre(self, hq: torch.Tensor, lr2: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
        """``self.pair(hq, hq, [lr2, same])`` in two passes over the pair tensor.

        Shapes: hq ``(B', T, H)``, lr2 ``(B', T, T, 1)``, same ``(T, T)`` or None (all ones) -> ``(B', T, T, H)``.
        """
        we = self.pair.lin_e.weight  # (H, 2)
        a = self.pair.lin_a(hq)
        if same is None:
            a = a + we[:, 1].to(a.dtype)  # same == 1 for every pair: a constant, folded into the node term
            cols, w = [lr2], we[:, :1]
        else:
            cols, w = [lr2, same.unsqueeze(-1).to(lr2.dtype)], we
        z = a.unsqueeze(-2) + self.pair.lin_b(hq).unsqueeze(-3)
        return add_outer_(z, w, cols)
