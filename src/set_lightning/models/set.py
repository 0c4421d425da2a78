"""The Spacetime E(n)-Transformer (SET, arXiv 2408.06039)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .base import GraphModel, require_dropout, require_sizes
from .egcl import EGCL
from .etal import ETAL
from .graph import Graph
from .layers import VectorOut, dropout_part

#: where SET reads its prediction: the time average of the frames, or the last frame
READOUTS = ("mean", "last")


class SETBlock(nn.Module):
    """``n_spatial_layers`` EGCLs on every frame -> ETAL across frames -> pre-norm feed-forward with residual.

    Args:
        hidden: feature width.
        n_spatial_layers: number of EGCLs (the paper's ``K``; here ``K`` is the edges per node).
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
        edge_features: number of edge features of the EGCLs (2 + the model's ``edge_dim``).
        activation_checkpointing: while gradients are recorded, keep only each layer's (EGCL, ETAL,
            feed-forward) inputs and recompute its insides in the backward pass (see :class:`SET`).

    ``last_frame=True`` (a block with ETAL) returns the last frame's outputs only (the EGCLs still run on
    every frame, whose features ETAL reads; ETAL computes the last frame's queries and the feed-forward
    the last frame): the same numbers as the last frame of the full outputs, dropout masks included.
    Without ETAL the frames never meet, and ``n_frames=L`` says that the inputs are already the last of
    ``L`` frames (``G = B``): every layer runs on it alone, the feed-forward's dropout masks drawn for all ``L``.

    Shapes:
        h: ``(G, N, H)``, x, u: ``(G, N, 3)``, edge_attr: ``(G, N, K, edge_features)`` on the edges of ``graph``
        (``K`` per node) with ``G = B * L``, batch: ``B`` -> h ``(G, N, H)``, x, u ``(G, N, 3)``; with
        ``last_frame`` h ``(B, N, H)``, x, u ``(B, N, 3)``.
    """

    def __init__(
        self, *, hidden: int = 64, n_spatial_layers: int = 2, n_heads: int = 4, dropout: float = 0.1,
        equivariant: bool = True, spatial_attention: bool = True, temporal_attention: bool = True,
        adjacency: bool = False, norm_diff: bool = True, tanh: bool = True, coords_range: float = 15.0,
        ff_mult: int = 2, edge_features: int = 2, activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        self.egcls = nn.ModuleList(
            EGCL(hidden=hidden, edge_features=edge_features, attention=spatial_attention, n_heads=n_heads, equivariant=equivariant,
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
        self, h: torch.Tensor, x: torch.Tensor, u: torch.Tensor, edge_attr: torch.Tensor, batch: int,
        graph: Graph | None = None, *, last_frame: bool = False, n_frames: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        run = self.recomputed if self.activation_checkpointing and torch.is_grad_enabled() else self.called
        if (last_frame and self.etal is None) or (n_frames is not None and self.etal is not None):
            raise ValueError("last_frame needs the block's ETAL; without ETAL pass the last frame itself, with n_frames")
        for egcl in self.egcls:
            h, x = run(egcl, h, x, u, edge_attr, graph)
        if n_frames is not None:  # the inputs are the last of n_frames frames, which never meet here
            return h + run(self.last_frame_ff, h, n_frames), x, u
        if not last_frame:
            if self.etal is not None:
                h, x, u = run(self.etal, h, x, u, batch)
            return h + run(self.ff, h), x, u
        n_frames = h.shape[0] // batch
        h, x, u = run(self.etal, h, x, u, batch, last_frame=True)
        return h + run(self.last_frame_ff, h, n_frames), x, u

    def last_frame_ff(self, h: torch.Tensor, n_frames: int) -> torch.Tensor:
        """``self.ff`` on the last of ``n_frames`` frames, with the dropout masks of all ``n_frames``.

        Shapes: h ``(B, N, H)`` -> ``(B, N, H)`` (the masks drawn for ``(B, n_frames, N, .)``).
        """
        for layer in self.ff:
            if isinstance(layer, nn.Dropout):
                full_shape = (h.shape[0], n_frames, *h.shape[1:])
                h = dropout_part(h, layer.p, layer.training, full_shape, (slice(None), -1))
            else:
                h = layer(h)
        return h

    @staticmethod
    def called(layer: Callable[..., object], *args: object, **kwargs: object) -> object:
        return layer(*args, **kwargs)

    @staticmethod
    def recomputed(layer: Callable[..., object], *args: object, **kwargs: object) -> object:
        """``layer(*args, **kwargs)``, its intermediate tensors recomputed in the backward pass instead of
        stored (the random state is replayed, so dropout draws the same masks: the same numbers)."""
        return checkpoint(layer, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


class SET(GraphModel):
    r"""Spacetime E(n)-Transformer: ``M`` blocks of (``n_spatial_layers`` EGCLs per frame -> ETAL -> FF), time-averaged.

    Node features are ``|v|`` and the node attributes (the charge), edge attributes ``q_i q_j`` and
    ``|x_i - x_j|^2`` of each frame (as in EGNN's N-body setup) and the samples' pair attributes; the
    frames are folded into the batch (``B * L`` graphs) and the EGCLs run on each frame's graph
    (complete, k nearest neighbours or given: :class:`~set_lightning.models.base.GraphModel`). Each
    frame carries a coordinate ``x(t)`` (updated by EGCL and ETAL) and a velocity ``u(t)`` (updated by
    ETAL). With ``hbar, ubar`` the time means of ``h, u`` and ``dx = mean_t(x_final(t) - x(t))``::

        x_pred = x(L) + dx + g_x(hbar) ubar
        v_pred = v(L) + g_1(hbar) ubar + g_2(hbar) dx

    (``g`` invariant gates; with ``equivariant=False`` raw-vector MLPs of ``[hbar, ubar(, dx)]``). That is
    ``readout="mean"``. With ``readout="last"`` the prediction is read at the last frame instead: with
    ``h_L, x_L, u_L`` the final features, coordinate and velocity of frame ``L``::

        x_pred = x_L + g_x(h_L) u_L
        v_pred = v(L) + g_1(h_L) u_L + g_2(h_L) (x_L - x(L))

    The mean readout anchors every frame's own displacement at ``x(L)``: a frame that cannot see
    the others (``temporal_attention=False``) must predict ``x(L+H) - x(L)`` from its stale state.
    The last-frame readout needs no temporal attention to use ``x(L)`` and ``v(L)`` (with one frame,
    ``L = 1``, the two readouts are the same function).

    Flags (every combination builds and trains):
        * ``equivariant=False``: centred positions ``x - mean_i x`` and ``v`` are concatenated to the
          node features, coordinate differences to the edge features, and all vector updates are raw
          3-vectors from MLPs (translation invariant, not rotation equivariant).
        * ``spatial_attention=False``: EGCL sums messages (EGNN) instead of softmax attention over ``j``.
        * ``temporal_attention=False``: no ETAL; frames only meet in the final time average.
        * ``adjacency=True``: ETAL of node ``i`` at frame ``t`` attends to every node ``j`` at every
          frame ``s`` (memory ``O((L N)^2)`` per sample; complete graph only).

    Args:
        hidden: feature width ``H``.
        n_blocks: number ``M`` of spatio-temporal blocks.
        n_spatial_layers: number of EGCLs per block (the paper's ``K``; in the shapes ``K`` is the edges per node).
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
        graph: the EGCLs' graph per frame: ``complete``, ``knn`` or ``given`` (by the samples' ``edge_attr``).
        k: neighbours per node with ``graph="knn"``.
        node_dim: node attribute columns read (1: the charge; a file's ``node_attr`` may have more).
        edge_dim: pair attribute channels read as edge features (1 for the springs' spring graph).
        readout: ``mean`` (the time average of every frame, the paper's) or ``last`` (the last frame).
        activation_checkpointing: trade compute for memory in training: each EGCL, ETAL and feed-forward
            keeps only its inputs for the backward pass and runs again there (the same numbers, bit for
            bit; about a third more compute, a fraction of the activation memory: ``results/speed.md``).
            Not part of a run's identity (it cannot change results).

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)``, node_attr: ``(B, N, node_dim)``, edge_attr:
        ``(B, N, N[, edge_dim])`` -> x_pred, v_pred ``(B, N, 3)``; inside, the frames are folded into the
        batch: ``G = B * L`` graphs of ``N`` nodes with ``H`` features and ``K`` edges per node.
    """

    equivariant = True

    def __init__(
        self, *, hidden: int = 64, n_blocks: int = 2, n_spatial_layers: int = 2, n_heads: int = 4,
        dropout: float = 0.1, equivariant: bool = True, spatial_attention: bool = True,
        temporal_attention: bool = True, adjacency: bool = False, norm_diff: bool = True, tanh: bool = True,
        coords_range: float = 15.0, ff_mult: int = 2, graph: str = "complete", k: int = 6, node_dim: int = 1,
        edge_dim: int = 0, readout: str = "mean", activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hparams(locals())
        self.init_graph(graph=graph, k=k, node_dim=node_dim, edge_dim=edge_dim)
        if adjacency and graph != "complete":
            raise UserError(f"adjacency=True attends to every node at every frame: it needs graph='complete', "
                            f"got graph={graph!r}")
        require_sizes(hidden=hidden, n_blocks=n_blocks, n_heads=n_heads)
        require_dropout(dropout)
        if n_spatial_layers < 0:
            raise UserError(f"n_spatial_layers must be >= 0, got {n_spatial_layers}")
        if readout not in READOUTS:
            raise UserError(f"readout must be one of {list(READOUTS)}, got {readout!r}")
        self.readout = readout
        #: with ``readout="last"``, compute the last block on the last frame only (without temporal attention
        #: every block: the frames never meet); the same predictions. Off inside
        #: :func:`~set_lightning.models.base.every_output_computed` (what the compute unit counts)
        self.skip_unread = True
        if hidden % n_heads:
            raise UserError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.equivariant = equivariant
        self.embed = nn.Linear(1 + node_dim + (0 if equivariant else 6), hidden)
        self.blocks = nn.ModuleList(
            SETBlock(hidden=hidden, n_spatial_layers=n_spatial_layers, n_heads=n_heads, dropout=dropout,
                     equivariant=equivariant, spatial_attention=spatial_attention,
                     temporal_attention=temporal_attention, adjacency=adjacency, norm_diff=norm_diff, tanh=tanh,
                     coords_range=coords_range, ff_mult=ff_mult, edge_features=2 + edge_dim,
                     activation_checkpointing=activation_checkpointing)
            for _ in range(n_blocks)
        )
        self.out_norm = nn.LayerNorm(hidden)
        self.head_x = VectorOut(d_in=hidden, n_vectors=1, d_hidden=hidden, equivariant=equivariant)
        self.head_v = VectorOut(d_in=hidden, n_vectors=2, d_hidden=hidden, equivariant=equivariant)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor, *, node_attr: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        b, ell, n, _ = x.shape
        attrs = self.node_attributes(charges, node_attr)
        pair = self.pair_attributes(edge_attr)
        feats = [torch.linalg.vector_norm(v, dim=-1, keepdim=True), self.charges_per_frame(x, attrs)]
        if not self.equivariant:
            feats += [x - x.mean(dim=2, keepdim=True), v]
        # in the inputs' precision: under autocast the residual stream h stays fp32 (each residual add of a
        # bf16 / fp16 layer output to it promotes to fp32), only the layers' matmuls run in low precision
        h = self.embed(torch.cat(feats, dim=-1)).reshape(b * ell, n, -1).to(x.dtype)
        xs, us = x.reshape(b * ell, n, 3), v.reshape(b * ell, n, 3)
        if self.readout == "last" and self.skip_unread and self.blocks[0].etal is None:
            # no temporal attention: the frames never meet and only the last is read: it is computed alone
            h, xs, us = (z.view(b, ell, n, -1)[:, -1] for z in (h, xs, us))
            graph, edges = self.graph_edges(xs, attrs, pair, 1)
            for block in self.blocks:
                h, xs, us = block(h, xs, us, edges, b, graph, n_frames=ell)
            return self.read_last_frame(h, xs, us, x, v)
        graph, edges = self.graph_edges(xs, attrs, pair, ell)
        if self.readout == "last" and self.skip_unread:
            # only the last frame is read: the last block computes it alone (block docstring; same numbers)
            for i, block in enumerate(self.blocks):
                h, xs, us = block(h, xs, us, edges, b, graph, last_frame=i == len(self.blocks) - 1)
            return self.read_last_frame(h, xs, us, x, v)
        for block in self.blocks:
            h, xs, us = block(h, xs, us, edges, b, graph)

        h, xs, us = h.reshape(b, ell, n, -1), xs.reshape(b, ell, n, 3), us.reshape(b, ell, n, 3)
        if self.readout == "last":  # every frame computed (every_output_computed), the last one read
            return self.read_last_frame(h[:, -1], xs[:, -1], us[:, -1], x, v)
        hbar = self.out_norm(h.mean(1))
        dx = (xs - x).mean(1)
        ubar = us.mean(1)
        x_pred = x[:, -1] + dx + self.head_x(hbar, ubar.unsqueeze(-2))
        v_pred = v[:, -1] + self.head_v(hbar, torch.stack([ubar, dx], dim=-2))
        return x_pred, v_pred

    def read_last_frame(
        self, h_last: torch.Tensor, x_last: torch.Tensor, u_last: torch.Tensor, x: torch.Tensor, v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``readout="last"`` prediction from the last frame's final features, coordinate and velocity.

        Shapes: h_last ``(B, N, H)``, x_last, u_last ``(B, N, 3)``, x, v ``(B, L, N, 3)`` (the inputs) ->
        x_pred, v_pred ``(B, N, 3)``.
        """
        h_last = self.out_norm(h_last)
        x_pred = x_last + self.head_x(h_last, u_last.unsqueeze(-2))
        v_pred = v[:, -1] + self.head_v(h_last, torch.stack([u_last, x_last - x[:, -1]], dim=-2))
        return x_pred, v_pred
