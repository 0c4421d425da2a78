"""Equivariant temporal attention layer (ETAL) of the Spacetime E(n)-Transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from .fused import pair_silu_gates
from .layers import EPS, PairLinear, VectorOut, dropout_part, sinusoidal_encoding, stacked_last_layers


class ETAL(nn.Module):
    r"""Multi-head attention across the ``L`` frames of each node, equivariant in its vector outputs.

    Tokens are ``(node i, frame t)``, in ``R`` rows of ``T`` tokens: with ``adjacency=False`` token ``(i, t)``
    attends to ``(i, s)`` for all ``s`` (``R = B N`` rows of ``T = L`` frames); with ``adjacency=True`` to
    ``(j, s)`` for every node ``j`` and frame ``s`` (spatio-temporal edges; ``R = B`` rows of ``T = L N``
    tokens). With relative vectors ``r_ts = x_s - x_t`` (``x_j(s) - x_i(t)``), in the steps of the
    forward::

        attention:        a_h(t, s) = softmax_s( q_h(t) . k_h(s) / sqrt(d) + w_h . [log(1 + |r_ts|^2), same_node] )
        feature_update:   h~(t)     = h(t) + W_o concat_h( sum_s a_h(t, s) W_v LN(h)(s) )
        vector_update:    x~(t)     = x(t) + sum_s abar(t, s) phi_x(p_ts) r_ts
                          u~(t)     = u(t) + sum_s abar(t, s) phi_u(p_ts) u_s

    with ``q, k`` from ``LN(h) + pe`` (``pe``: sinusoidal code of the number of frames before the input
    frame), ``abar`` the head mean and the pair feature ``p_ts = SiLU(Linear[LN(h)+pe](t), [LN(h)+pe](s),
    log(1 + |r_ts|^2), same_node])``. Scores, gates and ``h`` only see invariants, so ``x~`` is
    E(n)-equivariant and ``u~`` O(n)-equivariant. ``equivariant=False`` predicts the ``x`` and ``u``
    updates as raw 3-vectors ``MLP([p_ts, r_ts])``, ``MLP([p_ts, u_s])``.

    Implementation: the pair tensor ``p`` ``(R, T, T, H)`` dominates the cost. Its pre-activation is a
    :class:`PairLinear` (per-token terms broadcast to the pairs plus one fused multiply-add for the
    distance term; ``same_node`` is constant without ``adjacency`` and folds into the token term); in the
    equivariant case the two gates ``phi_x(p), phi_u(p)`` are computed chunk by chunk without storing
    ``p`` (:func:`~set_lightning.models.fused.pair_silu_gates`; readable form in
    :mod:`set_lightning.models.reference`), and the velocity update is a batched matmul.

    Args:
        hidden: feature width ``H``.
        n_heads: attention heads (must divide ``hidden``).
        dropout: dropout on the attention output.
        equivariant: keep E(n) equivariance (see above).
        adjacency: attend to all nodes at all frames (True) or to the node's own history (False).
        norm_diff: use ``r / (|r| + 1)`` in the coordinate update.
        tanh: bound the coordinate gate by ``coords_range * tanh`` and the velocity gate by ``tanh``.
        coords_range: bound used with ``tanh``.

    ``last_frame=True`` computes the outputs of the last frame only (the queries ``t = L``; keys and
    values are still every frame): the same numbers as the last frame of the full outputs (the dropout
    mask is drawn for all frames, :func:`~set_lightning.models.layers.dropout_part`), with the pair
    tensor ``(R, T', T, H)`` for ``T' = 1`` query token per row (``N`` with ``adjacency``) instead of ``T``.

    Shapes:
        h: ``(G, N, H)``, x: ``(G, N, 3)``, u: ``(G, N, 3)`` with ``G = B * L`` (frames folded into the
        batch, batch-major), batch: ``B`` -> the same three shapes; with ``last_frame`` ``(B, N, H)``,
        ``(B, N, 3)``, ``(B, N, 3)``. Inside, ``T'`` is the number of query tokens per row (``T``, or the
        last frame's).
    """

    def __init__(
        self, *, hidden: int = 64, n_heads: int = 4, dropout: float = 0.1, equivariant: bool = True,
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
        self.pair = PairLinear(d_a=hidden, d_b=hidden, d_e=2, d_out=hidden)
        # p_ts is already a hidden layer: phi_x, phi_u = Linear(p_ts) (a 2-layer MLP of the pair inputs)
        self.phi_x = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant, tanh=tanh,
                               scale=coords_range, last_gain=0.001, last_bias=False, n_layers=1)
        self.phi_u = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant, tanh=tanh,
                               scale=1.0, n_layers=1)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, u: torch.Tensor, batch: int, *, last_frame: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, n, d = h.shape
        ell = g // batch
        t_idx, n_idx = self.token_index(ell, n, h.device)
        ht, xt, ut = (self.to_tokens(z, batch) for z in (h, x, u))
        # the query tokens t: every token, or the last frame's (the last token of a row; the last N with adjacency)
        qs = slice(ht.shape[1] - (n if self.adjacency else 1), None) if last_frame else slice(None)
        hn = self.norm(ht)
        # h_t: the features with the temporal position code (what q, k and the pair features read)
        h_t = hn + sinusoidal_encoding(ell - 1 - t_idx, d).to(hn.dtype)
        rel = xt.unsqueeze(-3) - xt[:, qs].unsqueeze(-2)  # (R, T', T, 3): x_s - x_t
        r2 = rel.square().sum(-1, keepdim=True)
        lr2 = torch.log1p(r2)  # (R, T', T, 1); the other invariant is same = [node(t) == node(s)]
        same = (n_idx[qs, None] == n_idx[None, :]).to(r2.dtype) if self.adjacency else None  # (T', T)
        a = self.attention(h_t, lr2, same, qs)
        ht = self.feature_update(ht, hn, a, qs)
        xt, ut = self.vector_update(xt, ut, h_t, rel, r2, lr2, same, a.mean(1), qs)
        return tuple(self.from_tokens(z, batch, n) for z in (ht, xt, ut))

    def token_index(self, ell: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame and node of every token of a row: ``(T,)`` each (token order ``(t, i)`` with adjacency)."""
        if self.adjacency:
            return (torch.arange(ell, device=device).repeat_interleave(n), torch.arange(n, device=device).repeat(ell))
        return torch.arange(ell, device=device), torch.zeros(ell, dtype=torch.long, device=device)

    def to_tokens(self, z: torch.Tensor, batch: int) -> torch.Tensor:
        """Shapes: z ``(G, N, C)`` -> ``(R, T, C)``."""
        g, n, c = z.shape
        if self.adjacency:
            return z.reshape(batch, (g // batch) * n, c)
        return z.reshape(batch, g // batch, n, c).transpose(1, 2).reshape(batch * n, g // batch, c)

    def from_tokens(self, z: torch.Tensor, batch: int, n: int) -> torch.Tensor:
        """Shapes: z ``(R, T, C)`` -> ``(G, N, C)`` (the inverse of :meth:`to_tokens`)."""
        c = z.shape[-1]
        if self.adjacency:
            return z.reshape(-1, n, c)
        ell = z.shape[1]
        return z.reshape(batch, n, ell, c).transpose(1, 2).reshape(batch * ell, n, c)

    def attention(
        self, h_t: torch.Tensor, lr2: torch.Tensor, same: torch.Tensor | None, qs: slice = slice(None),
    ) -> torch.Tensor:
        """``a_h(t, s)``: softmax over ``s`` of ``q_h(t) . k_h(s) / sqrt(d) + w_h . [log(1 + r^2), same]``,
        for the query tokens ``t`` in ``qs``.

        Shapes: h_t ``(R, T, H)``, lr2 ``(R, T', T, 1)``, same ``(T', T)`` or None (all ones) ->
        ``(R, n_heads, T', T)``.
        """
        r, t, d = h_t.shape
        nh, dh = self.n_heads, d // self.n_heads
        q, k = self.qk(h_t).view(r, t, 2, nh, dh).permute(2, 0, 3, 1, 4)
        q = q[:, :, qs]
        # the scores are built as (R, heads, s, t) and normalised over s (dim -2); the result is returned as
        # its (t, s) view. The same numbers as a softmax over the last axis of (t, s) scores, but CPU softmax
        # over a short last axis (T = 10 frames) is several times slower than over a non-last one: ETAL
        # forward + backward about 1.1x faster, the SET step 1.04x, at N = 5, L = 10 (AVX-512, one thread)
        scores_st = k @ q.transpose(-1, -2) / math.sqrt(dh)
        wg = self.geo.weight.to(scores_st.dtype)  # (heads, 2): Linear([log1p(r2), same]) without bias
        bias = lr2.squeeze(-1).unsqueeze(1).to(scores_st.dtype) * wg[:, 0, None, None]  # (R, heads, T, T)
        bias = bias + (same * wg[:, 1, None, None] if same is not None else wg[:, 1, None, None])
        return (scores_st + bias.transpose(-1, -2)).softmax(-2).transpose(-1, -2)

    def feature_update(
        self, ht: torch.Tensor, hn: torch.Tensor, a: torch.Tensor, qs: slice = slice(None),
    ) -> torch.Tensor:
        """``h + W_o concat_h(sum_s a_h(t, s) W_v LN(h)(s))`` (dropout on the attention output), for the
        query tokens ``t`` in ``qs``.

        Shapes: ht, hn ``(R, T, H)``, a ``(R, n_heads, T', T)`` -> ``(R, T', H)``.
        """
        r, t, d = ht.shape
        val = self.val(hn).view(r, t, self.n_heads, d // self.n_heads).transpose(1, 2)
        o = (a.to(val.dtype) @ val).transpose(1, 2).reshape(r, a.shape[-2], d)
        out = self.out(o)
        if qs == slice(None):
            return ht + self.drop(out)
        return ht[:, qs] + dropout_part(out, self.drop.p, self.training, (r, t, d), (slice(None), qs))

    def vector_update(
        self, xt: torch.Tensor, ut: torch.Tensor, h_t: torch.Tensor, rel: torch.Tensor, r2: torch.Tensor,
        lr2: torch.Tensor, same: torch.Tensor | None, abar: torch.Tensor, qs: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + sum_s abar phi_x(p) r`` and ``u + sum_s abar phi_u(p) u_s``, with the pair feature ``p``,
        for the query tokens ``t`` in ``qs``.

        Shapes: xt, ut ``(R, T, 3)``, h_t ``(R, T, H)``, rel ``(R, T', T, 3)``, r2, lr2 ``(R, T', T, 1)``,
        same ``(T', T)`` or None, abar ``(R, T', T)`` -> ``(R, T', 3)`` x2.
        """
        cols = [lr2, 1.0 if same is None else same.unsqueeze(-1)]
        if self.norm_diff:
            rel = rel / (torch.sqrt(r2 + EPS) + 1.0)
        if self.phi_x.equivariant:
            weight, bias = stacked_last_layers([self.phi_x, self.phi_u])
            gates = pair_silu_gates(*self.pair.node_terms(h_t[:, qs], h_t, cols), weight)  # p never stored
            if bias is not None:
                gates = gates + bias.to(gates.dtype)
            gx, gu = gates.unbind(-1)  # (R, T', T) each
            wx = abar * self.phi_x.bound(gx)
            wu = abar * self.phi_u.bound(gu)
            xt = xt[:, qs] + (wx.unsqueeze(-1) * rel).sum(-2)
            ut = ut[:, qs] + wu.to(ut.dtype) @ ut  # sum_s abar phi_u u_s
        else:
            p = nn.functional.silu(self.pair(h_t[:, qs], h_t, cols))
            r, tq, t = abar.shape
            abar = abar.unsqueeze(-1)
            xt = xt[:, qs] + (abar * self.phi_x(p, rel.unsqueeze(-2))).sum(-2)
            us = ut.unsqueeze(-3).expand(r, tq, t, 3).unsqueeze(-2)  # u_s for every (t, s)
            ut = ut[:, qs] + (abar * self.phi_u(p, us)).sum(-2)
        return xt, ut
