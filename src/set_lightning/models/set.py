"""The Spacetime E(n)-Transformer (SET, arXiv 2408.06039)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import NBodyModel
from .egcl import EGCL
from .etal import ETAL
from .layers import VectorOut


class SETBlock(nn.Module):
    """``K`` EGCLs on every frame -> ETAL across frames -> pre-norm feed-forward with residual.

    Args:
        hidden: feature width.
        n_spatial_layers: number ``K`` of EGCLs.
        n_heads: attention heads (spatial and temporal).
        dropout: dropout in ETAL and the feed-forward.
        equivariant: keep E(n) equivariance.
        spatial_attention: softmax attention over neighbours in the EGCLs (else sum / mean).
        temporal_attention: use ETAL (else frames do not interact inside the block).
        adjacency: ETAL attends to all nodes at all frames.
        norm_diff: normalise coordinate differences.
        tanh: bound the coordinate gates.
        coords_range: bound used with ``tanh``.
        ff_mult: width multiplier of the feed-forward.

    Shapes:
        h: ``(G, N, H)``, x, u: ``(G, N, 3)``, edge_attr: ``(G, N, N, 2)`` with ``G = B * L``, batch: ``B``
        -> h ``(G, N, H)``, x, u ``(G, N, 3)``.
    """

    def __init__(
        self, *, hidden: int = 64, n_spatial_layers: int = 2, n_heads: int = 4, dropout: float = 0.1,
        equivariant: bool = True, spatial_attention: bool = True, temporal_attention: bool = True,
        adjacency: bool = False, norm_diff: bool = True, tanh: bool = True, coords_range: float = 15.0,
        ff_mult: int = 2,
    ) -> None:
        super().__init__()
        self.egcls = nn.ModuleList(
            EGCL(hidden=hidden, edge_dim=2, attention=spatial_attention, n_heads=n_heads, equivariant=equivariant,
                 velocity=True, norm_diff=norm_diff, tanh=tanh, coords_range=coords_range, pre_norm=True)
            for _ in range(n_spatial_layers)
        )
        self.etal = (
            ETAL(hidden=hidden, n_heads=n_heads, dropout=dropout, equivariant=equivariant, adjacency=adjacency,
                 norm_diff=norm_diff, tanh=tanh, coords_range=coords_range)
            if temporal_attention else None
        )
        self.ff = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, ff_mult * hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(ff_mult * hidden, hidden), nn.Dropout(dropout),
        )

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, u: torch.Tensor, edge_attr: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for egcl in self.egcls:
            h, x = egcl(h, x, u, edge_attr)
        if self.etal is not None:
            h, x, u = self.etal(h, x, u, batch)
        return h + self.ff(h), x, u


class SET(NBodyModel):
    r"""Spacetime E(n)-Transformer: ``M`` blocks of (``K`` EGCL per frame -> ETAL -> FF), time-averaged.

    Node features are ``|v|`` and the charge, edge attributes ``q_i q_j`` and ``|x_i - x_j|^2`` of each
    frame (as in EGNN's N-body setup); the frames are folded into the batch (``B * L`` graphs). Each
    frame carries a coordinate ``x(t)`` (updated by EGCL and ETAL) and a velocity ``u(t)`` (updated by
    ETAL). With ``hbar, ubar`` the time means of ``h, u`` and ``dx = mean_t(x_final(t) - x(t))``::

        x_pred = x(L) + dx + g_x(hbar) ubar
        v_pred = v(L) + g_1(hbar) ubar + g_2(hbar) dx

    (``g`` invariant gates; with ``equivariant=False`` raw-vector MLPs of ``[hbar, ubar(, dx)]``).

    Flags (every combination builds and trains):
        * ``equivariant=False``: centred positions ``x - mean_i x`` and ``v`` are concatenated to the
          node features, coordinate differences to the edge features, and all vector updates are raw
          3-vectors from MLPs (translation invariant, not rotation equivariant).
        * ``spatial_attention=False``: EGCL sums messages (EGNN) instead of softmax attention over ``j``.
        * ``temporal_attention=False``: no ETAL; frames only meet in the final time average.
        * ``adjacency=True``: ETAL of node ``i`` at frame ``t`` attends to every node ``j`` at every
          frame ``s`` (memory ``O((L N)^2)`` per sample).

    Args:
        hidden: feature width ``H``.
        n_blocks: number ``M`` of spatio-temporal blocks.
        n_spatial_layers: number ``K`` of EGCLs per block.
        n_heads: attention heads (must divide ``hidden``).
        dropout: dropout in the temporal attention and the feed-forward.
        equivariant: keep E(n) equivariance.
        spatial_attention: softmax attention over neighbours in the EGCLs.
        temporal_attention: equivariant temporal attention (ETAL) across frames.
        adjacency: spatio-temporal edges in ETAL (attend to all nodes at all frames).
        norm_diff: normalise coordinate differences ``d / (|d| + 1)`` (stabilises deep stacks).
        tanh: bound the coordinate gates by ``coords_range * tanh`` (stabilises deep stacks).
        coords_range: bound used with ``tanh``.
        ff_mult: width multiplier of the feed-forward layers.

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)`` -> x_pred, v_pred ``(B, N, 3)``; inside, the frames
        are folded into the batch: ``G = B * L`` graphs of ``N`` nodes with ``H`` features.
    """

    equivariant = True

    def __init__(
        self, *, hidden: int = 64, n_blocks: int = 2, n_spatial_layers: int = 2, n_heads: int = 4,
        dropout: float = 0.1, equivariant: bool = True, spatial_attention: bool = True,
        temporal_attention: bool = True, adjacency: bool = False, norm_diff: bool = True, tanh: bool = True,
        coords_range: float = 15.0, ff_mult: int = 2,
    ) -> None:
        super().__init__()
        if hidden < 1 or n_blocks < 1 or n_spatial_layers < 0 or n_heads < 1:
            raise UserError("hidden, n_blocks, n_heads must be >= 1 and n_spatial_layers >= 0")
        if hidden % n_heads:
            raise UserError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.equivariant = equivariant
        self.embed = nn.Linear(2 if equivariant else 8, hidden)
        self.blocks = nn.ModuleList(
            SETBlock(hidden=hidden, n_spatial_layers=n_spatial_layers, n_heads=n_heads, dropout=dropout,
                     equivariant=equivariant, spatial_attention=spatial_attention,
                     temporal_attention=temporal_attention, adjacency=adjacency, norm_diff=norm_diff, tanh=tanh,
                     coords_range=coords_range, ff_mult=ff_mult)
            for _ in range(n_blocks)
        )
        self.out_norm = nn.LayerNorm(hidden)
        self.head_x = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant)
        self.head_v = VectorOut(d_in=hidden, n_vectors=2, d_hidden=hidden, equivariant=equivariant)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        b, ell, n, _ = x.shape
        q = self.charges_per_frame(x, charges)
        feats = [torch.linalg.vector_norm(v, dim=-1, keepdim=True), q]
        if not self.equivariant:
            feats += [x - x.mean(dim=2, keepdim=True), v]
        h = self.embed(torch.cat(feats, dim=-1)).reshape(b * ell, n, -1)
        radial = ((x.unsqueeze(-2) - x.unsqueeze(-3)) ** 2).sum(-1, keepdim=True)
        edge_attr = torch.cat([q.unsqueeze(-2) * q.unsqueeze(-3), radial], dim=-1).reshape(b * ell, n, n, 2)

        xs, us = x.reshape(b * ell, n, 3), v.reshape(b * ell, n, 3)
        for block in self.blocks:
            h, xs, us = block(h, xs, us, edge_attr, b)

        hbar = self.out_norm(h.reshape(b, ell, n, -1).mean(1))
        dx = (xs.reshape(b, ell, n, 3) - x).mean(1)
        ubar = us.reshape(b, ell, n, 3).mean(1)
        x_pred = x[:, -1] + dx + self.head_x(hbar, ubar.unsqueeze(-2))
        v_pred = v[:, -1] + self.head_v(hbar, torch.stack([ubar, dx], dim=-2))
        return x_pred, v_pred
