"""Graphs of G frames of N nodes without self-edges: complete, k nearest neighbours, or given by the
samples' pair attributes; each node has K edges (``N - 1`` on the complete graph, padded and masked on
a given graph). Axis symbols as in :mod:`.layers`.
"""

from __future__ import annotations

import torch


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
    return z.reshape(g * q, d).index_select(0, _flat_index(index, q)).view(*index.shape, d)


def scatter_add_nodes_(out: torch.Tensor, grad: torch.Tensor, index: torch.Tensor) -> None:
    """Add ``grad`` of :func:`gather_nodes`' output into ``out`` at the gathered nodes (its adjoint: one
    ``index_add_``), in place.

    Shapes: out ``(G, Q, D)`` (contiguous), grad ``(G, P, K, D)``, index ``(P, K)`` or ``(G, P, K)``.
    """
    g, p, k, d = grad.shape
    if index.dim() == 2:
        out.index_add_(1, index.flatten(), grad.view(g, p * k, d))
        return
    out.view(-1, d).index_add_(0, _flat_index(index, out.shape[1]), grad.view(g * p * k, d))


def _flat_index(index: torch.Tensor, q: int) -> torch.Tensor:
    """Per-graph node tables ``(G, P, K)`` as rows of the flattened ``(G * Q, D)`` node tensor: ``(G * P * K,)``."""
    offsets = torch.arange(index.shape[0], device=index.device).view(-1, 1, 1) * q
    return (index + offsets).flatten()


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
