"""EGNN baseline: Satorras et al.'s ``EGNN_vel`` as used for the charged N-body experiment."""

from __future__ import annotations

import torch
from torch import nn

from .base import GraphModel, renamed_argument, require_sizes
from .egcl import EGCL
from .layers import VectorOut


class EGNN(GraphModel):
    r"""E(n)-equivariant GNN with velocity (``EGNN_vel``), on the last input frame only.

    Same layers as the reference: node feature ``|v|`` embedded to ``hidden``, edge attributes
    ``q_i q_j`` and the input squared distance, ``n_layers`` E_GCL_vel layers (SiLU, summed messages,
    mean coordinate update, residual node update, ``x += phi_v(h) v`` with the *input* velocity in every
    layer), fully connected graph. The reference predicts positions only; for the velocity target this
    class adds one equivariant head on the final features::

        v_pred = v + g_1(h) v + g_2(h) (x_pred - x)

    (``g`` a 2-layer MLP to two invariant gates; it does not influence ``x_pred``).

    Args:
        hidden: feature width (reference 64).
        n_layers: number of E_GCL_vel layers (reference 4).
        coords_weight: multiplier of the aggregated coordinate update (reference 1.0).
        residual: residual node updates ``h + phi_h`` (reference True; the reference calls it ``recurrent``).
        attention: softmax edge attention (False = reference summed messages).
        n_heads: attention heads, only with ``attention``.
        norm_diff: normalise coordinate differences (reference default False).
        tanh: bound the coordinate MLP with ``coords_range * tanh`` (reference default False).
        coords_range: bound used with ``tanh`` (reference behaviour: 1.0).
        graph: ``complete`` (the reference), ``knn`` or ``given`` (by the samples' ``edge_attr``); see
            :class:`~set_lightning.models.base.GraphModel`.
        k: neighbours per node with ``graph="knn"``.
        node_dim: node attribute columns (1: the charge, read through ``q_i q_j`` as in the reference;
            further columns are embedded beside ``|v|``).
        edge_dim: pair attribute channels read as edge features (1 for the springs' spring graph).
        recurrent: deprecated name of ``residual`` (configs and checkpoints written before the rename).

    Shapes:
        x, v: ``(B, L, N, 3)`` (only the last frame is read), charges: ``(B, N, 1)``, node_attr:
        ``(B, N, node_dim)``, edge_attr: ``(B, N, N[, edge_dim])`` -> x_pred, v_pred ``(B, N, 3)``; inside,
        ``B`` graphs of ``N`` nodes with ``H`` features and ``K`` edges per node.
    """

    equivariant = True
    renamed_args = {"recurrent": "residual"}

    def __init__(
        self, *, hidden: int = 64, n_layers: int = 4, coords_weight: float = 1.0, residual: bool = True,
        attention: bool = False, n_heads: int = 1, norm_diff: bool = False, tanh: bool = False,
        coords_range: float = 1.0, graph: str = "complete", k: int = 6, node_dim: int = 1, edge_dim: int = 0,
        recurrent: bool | None = None,
    ) -> None:
        residual = renamed_argument("EGNN", "residual", residual, True, "recurrent", recurrent)
        super().__init__()
        self.save_hparams(locals())
        self.init_graph(graph=graph, k=k, node_dim=node_dim, edge_dim=edge_dim)
        require_sizes(hidden=hidden, n_layers=n_layers, n_heads=n_heads)
        self.embedding = nn.Linear(node_dim, hidden)
        self.layers = nn.ModuleList(
            EGCL(hidden=hidden, edge_features=2 + edge_dim, attention=attention, n_heads=n_heads, equivariant=True,
                 velocity=True, norm_diff=norm_diff, tanh=tanh, coords_range=coords_range, coords_weight=coords_weight,
                 residual=residual)
            for _ in range(n_layers)
        )
        self.head_v = VectorOut(d_in=hidden, n_vectors=2, d_hidden=hidden, equivariant=True)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor, *, node_attr: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        x0, v0 = x[:, -1], v[:, -1]
        attrs = self.node_attributes(charges, node_attr)
        graph, edges = self.graph_edges(x0, attrs, self.pair_attributes(edge_attr), 1)
        h = self.embedding(torch.cat([torch.linalg.vector_norm(v0, dim=-1, keepdim=True),
                                      attrs[..., 1:].to(x.dtype)], dim=-1)).to(x.dtype)  # fp32 under autocast
        xs = x0
        for layer in self.layers:
            h, xs = layer(h, xs, v0, edges, graph)
        v_pred = v0 + self.head_v(h, torch.stack([v0, xs - x0], dim=-2))
        return xs, v_pred
