"""The interface every N-body model implements."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .graph import Graph


def require_sizes(**sizes: int) -> None:
    """Raise a one-line :class:`UserError` naming the first size (a width, a count of layers) below 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")


def require_dropout(dropout: float) -> None:
    """Raise a one-line :class:`UserError` unless ``dropout`` is a probability in ``[0, 1)``."""
    if not 0 <= dropout < 1:
        raise UserError(f"dropout must be in [0, 1) (the probability of zeroing a unit; 0 = none), got {dropout}")


def renamed_argument(owner: str, name: str, value: Any, default: Any, old_name: str, old_value: Any) -> Any:
    """The value of argument ``name`` of ``owner`` that was called ``old_name`` before a rename.

    ``old_value`` is ``None`` when the old name is not given: ``value`` is the answer. Given, it is the
    answer (with a ``FutureWarning`` naming the new name), unless ``name`` is given too, i.e. not at its
    ``default`` (a config resolved by LightningCLI fills in every default, so a default ``value`` counts
    as not given).

    Raises:
        UserError: both names are given.
    """
    if old_value is None:
        return value
    if value != default:
        raise UserError(f"{owner}: {old_name} is the old name of {name}: pass {name} only (got {name}={value!r} "
                        f"and {old_name}={old_value!r})")
    warnings.warn(f"{owner}: {old_name} is deprecated, it is called {name} now (same meaning)", FutureWarning,
                  stacklevel=3)
    return old_value


@contextmanager
def every_output_computed(net: nn.Module) -> Iterator[nn.Module]:
    """Within this block the modules of ``net`` compute every output of their defined function, also the
    ones their forward does not read (each module with a ``skip_unread`` attribute has it set to False;
    :class:`~set_lightning.models.set.SET` with ``readout="last"`` otherwise computes its last block on
    the last frame only). The predictions are the same; what changes is the work, so that the compute
    unit (:func:`set_lightning.compute.training_flops`) counts the function, not a shortcut of its code.
    """
    saved = [(m, m.skip_unread) for m in net.modules() if hasattr(m, "skip_unread")]
    try:
        for m, _ in saved:
            m.skip_unread = False
        yield net
    finally:
        for m, value in saved:
            m.skip_unread = value


class NBodyModel(nn.Module):
    """Base class of every model that the LightningModule can train.

    Subclasses implement ``forward(x, v, charges) -> (x_pred, v_pred)``: from the positions ``x`` and
    velocities ``v`` of the ``L`` history frames (``x[:, -1]`` is the input frame) and the particle
    charges (+1 / -1), the positions and velocities at the target frame.

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)`` -> x_pred, v_pred ``(B, N, 3)``.

    Class attribute ``equivariant`` says whether the model claims E(n) equivariance
    (rotations, reflections and translations of ``x``; ``v`` rotates but does not translate).
    Every model is permutation-equivariant in the particle axis and has a parameter count that
    does not depend on ``N``.

    Every instance records its constructor arguments, defaults filled in, as ``hparams`` (a dict):
    each model's ``__init__`` calls ``self.save_hparams(locals())`` right after ``super().__init__()``
    (:meth:`save_hparams`). :meth:`config` turns them into the ``class_path`` / ``init_args`` form that
    LightningCLI and checkpoints use, so a model can be rebuilt from what it says about itself.
    """

    equivariant: bool = False
    #: deprecated constructor argument names -> their current names (still accepted, never recorded)
    renamed_args: dict[str, str] = {}
    #: the constructor arguments of this instance, defaults included (:meth:`save_hparams`)
    hparams: dict[str, Any]

    def save_hparams(self, init_locals: Mapping[str, Any]) -> None:
        """Record the constructor's arguments as :attr:`hparams`: ``self.save_hparams(locals())``.

        Called at the top of every model's ``__init__``, where ``locals()`` holds just its arguments
        (the way Lightning's ``save_hyperparameters`` reads them). What is recorded is each parameter of
        ``type(self).__init__``, in signature order, with the value ``init_locals`` holds for it, except
        the deprecated names of :attr:`renamed_args` (the constructor has put their value under the
        current name). A call whose ``init_locals`` lack one of those parameters is a parent's
        ``__init__`` running for a subclass with an ``__init__`` of its own: it records nothing, and the
        subclass records its own arguments with its own call.
        """
        names = [name for name in inspect.signature(type(self).__init__).parameters
                 if name != "self" and name not in self.renamed_args]
        if all(name in init_locals for name in names):
            self.hparams = {name: init_locals[name] for name in names}

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": hparams}``: how LightningCLI and checkpoints name this model."""
        cls = type(self)
        if "hparams" not in vars(self):
            raise TypeError(f"{cls.__qualname__}.__init__ does not record its arguments: call "
                            "self.save_hparams(locals()) in it, after super().__init__()")
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.hparams)}

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Number of parameters (independent of ``N`` and ``L``)."""
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def check_inputs(x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor) -> None:
        """Raise a ValueError naming the argument whose shape is wrong."""
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must have shape (B, L, N, 3), got {tuple(x.shape)}")
        if v.shape != x.shape:
            raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
        b, _, n, _ = x.shape
        if charges.shape != (b, n, 1):
            raise ValueError(f"charges must have shape (B, N, 1) = {(b, n, 1)}, got {tuple(charges.shape)}")

    @staticmethod
    def charges_per_frame(x: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        """``charges (B, N, F)`` repeated over the frames of ``x (B, L, N, 3)``: ``(B, L, N, F)``, x's dtype."""
        b, ell, n, _ = x.shape
        return charges.to(x.dtype).unsqueeze(1).expand(b, ell, n, charges.shape[-1])


#: the graphs a :class:`GraphModel` runs on
GRAPHS = ("complete", "knn", "given")


class GraphModel(NBodyModel):
    """An :class:`NBodyModel` that reads per-node and per-pair attributes and runs on a graph.

    Its ``forward(x, v, charges, *, node_attr=None, edge_attr=None)`` reads the node attributes
    ``node_attr`` (``charges`` when there are none; column 0 is the charge or mass whose pair product
    ``q_i q_j`` is an edge feature) and the pair attributes ``edge_attr`` (the spring graph, a file's
    pair attributes). The graph, per frame:

    * ``complete``: every pair ``i != j`` (the dense fast path);
    * ``knn``: the ``k`` nearest other nodes by distance in that frame (E(n)-invariant, so equivariance
      holds); cost grows as ``N k``;
    * ``given``: the pairs whose pair attribute channel 0 is non-zero (e.g. the springs), padded to
      the largest degree.

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)``, node_attr: ``(B, N, F)`` with ``F = node_dim``,
        edge_attr: ``(B, N, N)`` or ``(B, N, N, E)`` with ``E = edge_dim`` -> x_pred, v_pred ``(B, N, 3)``.
    """

    def init_graph(self, *, graph: str, k: int, node_dim: int, edge_dim: int) -> None:
        """Check and keep the graph options (called by the subclass's constructor)."""
        if graph not in GRAPHS:
            raise UserError(f"graph must be one of {list(GRAPHS)}, got {graph!r}")
        if k < 1 or node_dim < 1 or edge_dim < 0:
            raise UserError(f"k and node_dim must be >= 1 and edge_dim >= 0, got k={k}, node_dim={node_dim}, "
                            f"edge_dim={edge_dim}")
        self.graph, self.k, self.node_dim, self.edge_dim = graph, k, node_dim, edge_dim

    def node_attributes(self, charges: torch.Tensor, node_attr: torch.Tensor | None) -> torch.Tensor:
        """The node attributes the model reads: ``node_attr``, else ``charges``, ``(B, N, node_dim)``."""
        attrs = charges if node_attr is None else node_attr
        if attrs.shape[-1] != self.node_dim:
            name = "charges" if node_attr is None else "node_attr"
            raise UserError(f"model node_dim={self.node_dim} but the samples' {name} have {attrs.shape[-1]} "
                            f"column(s); set model.net.init_args.node_dim={attrs.shape[-1]}")
        return attrs

    def pair_attributes(self, edge_attr: torch.Tensor | None) -> torch.Tensor | None:
        """``edge_attr`` as ``(B, N, N, E)`` after checking it against ``edge_dim`` and ``graph``."""
        if edge_attr is not None and edge_attr.dim() == 3:
            edge_attr = edge_attr.unsqueeze(-1)
        e = 0 if edge_attr is None else edge_attr.shape[-1]
        if self.graph == "given" and edge_attr is None:
            raise UserError("model graph='given' reads the graph from the samples' edge_attr, which these samples "
                            f"lack; allowed graphs here: {[g for g in GRAPHS if g != 'given']}")
        if e != self.edge_dim and not (self.graph == "given" and self.edge_dim == 0):
            raise UserError(f"model edge_dim={self.edge_dim} but the samples carry {e} pair attribute channel(s) "
                            f"(edge_attr); set model.net.init_args.edge_dim={e}")
        return edge_attr

    def graph_edges(
        self, x: torch.Tensor, attrs: torch.Tensor, edge_attr: torch.Tensor | None, frames: int
    ) -> tuple[Graph, torch.Tensor]:
        """The graph of every frame and its edge features ``[q_i q_j, |x_i - x_j|^2, pair attributes]``.

        Shapes: x ``(G, N, 3)`` with ``G = B * frames``, attrs ``(B, N, F)``, edge_attr ``(B, N, N, E)`` or
        None -> a :class:`Graph` with ``K`` edges per node, edge features ``(G, N, K, 2 + edge_dim)``.
        """
        n = x.shape[-2]
        if self.graph == "complete":
            graph = Graph.complete(n, x.device)
        elif self.graph == "knn":
            if self.k > n - 1:
                raise UserError(f"model k={self.k} nearest neighbours need N >= {self.k + 1} particles, got N={n}; "
                                f"set model.net.init_args.k to 1..{max(n - 1, 1)} or graph='complete'")
            graph = Graph.knn(x, self.k)
        else:
            graph = Graph.given(edge_attr[..., 0] != 0, repeat=frames)
        q = attrs[..., :1].to(x.dtype).repeat_interleave(frames, 0)  # (G, N, 1)
        cols = [q.unsqueeze(-2) * graph.gather(q), (x.unsqueeze(-2) - graph.gather(x)).square().sum(-1, keepdim=True)]
        if self.edge_dim:
            cols.append(graph.pick(edge_attr.to(x.dtype), repeat=frames))
        return graph, torch.cat(cols, dim=-1)
