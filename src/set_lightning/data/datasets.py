"""In-memory PyTorch datasets of (history -> target) samples cut from simulated trajectories."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from set_lightning.data.cache import Trajectories
from set_lightning.errors import UserError

__all__ = ["CLOSE_ENCOUNTER", "Batched", "NBodyDataset", "collate", "min_pair_distance"]

#: Trajectories whose two closest particles come nearer than this (over the saved frames from the
#: input to the target frame) are "close encounters": there the Coulomb force 1/r^2 exceeds 100,
#: the clip value 0.1/dt of the simulator, and the motion is hard to predict.
CLOSE_ENCOUNTER = 0.1


class NBodyDataset(Dataset):
    """Samples ``history`` frames ending at ``input_frame`` and the state at ``target_frame``.

    All tensors are sliced once, converted to float32 and kept in memory; ``__getitem__`` only
    indexes them, so the dataset is cheap to pickle into DataLoader workers and Lightning's
    DistributedSampler can shard it under DDP.

    Args:
        trajectories: simulated or loaded trajectories (``x``, ``v``: ``(B, T, N, 3)``; charges
            ``(B, N, 1)``; optional ``edge_attr`` ``(B, N, N[, E])`` and ``node_attr`` ``(B, N, F)``).
        history: number of input frames ``L`` (>= 1).
        input_frame: last input frame (0-indexed into the ``T`` saved frames).
        target_frame: frame to predict (> ``input_frame``).
        with_path: also serve ``"x_path"``, the simulated positions of the frames ``input_frame ..
            target_frame`` (what a plot of the true trajectory needs; the predict split has it).

    Each item is a dict of float32 tensors: ``"x"`` and ``"v"``: ``(L, N, 3)`` (frames
    ``input_frame - L + 1 .. input_frame``), ``"charges"``: ``(N, 1)``, ``"x_target"`` and
    ``"v_target"``: ``(N, 3)``, ``"min_dist"``: ``()``, the smallest distance between two particles
    over the saved frames ``input_frame .. target_frame`` (where the error of a trajectory comes
    from: close encounters, see :data:`CLOSE_ENCOUNTER`), and with ``with_path`` ``"x_path"`` (the true
    positions from the input to the target frame). Where the trajectories have them, items also hold
    ``"edge_attr"`` (the spring graph of the springs system, or a file's pair attributes) and
    ``"node_attr"`` (a file's node attributes); the charged data has neither.

    Shapes (of a batch; items drop ``B``):
        x, v: ``(B, L, N, 3)``; charges: ``(B, N, 1)``; x_target, v_target: ``(B, N, 3)``;
        min_dist: ``(B,)``; x_path: ``(B, K, N, 3)`` with ``K = target_frame - input_frame + 1``;
        edge_attr: ``(B, N, N)`` or ``(B, N, N, E)``; node_attr: ``(B, N, F)``.
    """

    def __init__(self, trajectories: Trajectories, history: int, input_frame: int, target_frame: int,
                 with_path: bool = False) -> None:
        n_saved = trajectories.x.shape[1]
        first = input_frame - history + 1
        if history < 1 or first < 0:
            raise UserError(
                f"history must be in 1..{input_frame + 1} for input_frame={input_frame}, got {history}"
            )
        if not input_frame < target_frame < n_saved:
            raise UserError(
                f"target_frame must be in {input_frame + 1}..{n_saved - 1} (after input_frame={input_frame}, "
                f"within the {n_saved} saved frames), got {target_frame}"
            )
        frames = slice(first, input_frame + 1)
        self.x: Tensor = trajectories.x[:, frames].to(torch.float32).contiguous()
        self.v: Tensor = trajectories.v[:, frames].to(torch.float32).contiguous()
        self.charges: Tensor = trajectories.charges.to(torch.float32).contiguous()
        self.x_target: Tensor = trajectories.x[:, target_frame].to(torch.float32).contiguous()
        self.v_target: Tensor = trajectories.v[:, target_frame].to(torch.float32).contiguous()
        path = trajectories.x[:, input_frame : target_frame + 1]
        self.min_dist: Tensor = min_pair_distance(path).to(torch.float32)
        self.x_path: Tensor | None = path.to(torch.float32).contiguous() if with_path else None
        self.extra: dict[str, Tensor] = {
            name: t.to(torch.float32).contiguous()
            for name, t in (("edge_attr", trajectories.edge_attr), ("node_attr", trajectories.node_attr))
            if t is not None
        }

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int | Tensor) -> dict[str, Tensor]:
        """One sample (an ``int`` index), or a whole batch (a 1-D index tensor: each tensor gains the axis ``B``)."""
        item = {
            "x": self.x[index],
            "v": self.v[index],
            "charges": self.charges[index],
            "x_target": self.x_target[index],
            "v_target": self.v_target[index],
            "min_dist": self.min_dist[index],
            **{name: t[index] for name, t in self.extra.items()},
        }
        if self.x_path is not None:
            item["x_path"] = self.x_path[index]
        return item

    def __getitems__(self, indices: list[int]) -> Batched:
        """A batch in one indexing per tensor (what a DataLoader calls instead of ``__getitem__`` per sample).

        Equal, value for value, to stacking the samples (``default_collate``), without a Python call and a
        copy per sample; :func:`collate` passes it through.
        """
        return Batched(self[torch.as_tensor(indices, dtype=torch.long)])


class Batched(dict):
    """A batch already collated by :meth:`NBodyDataset.__getitems__` (a dict of tensors with the axis ``B``)."""


def collate(samples: Batched | list) -> dict:
    """The DataLoader's ``collate_fn``: a :class:`Batched` batch as it is, anything else by ``default_collate``."""
    return dict(samples) if isinstance(samples, Batched) else default_collate(samples)


def min_pair_distance(x: Tensor, max_elements: int = 1 << 24) -> Tensor:
    """The smallest distance between two distinct particles over all frames of each trajectory.

    Computed in chunks of trajectories of at most about ``max_elements`` pair distances (so 10,000
    trajectories of 100 bodies need no gigabytes); chunking does not change the result.

    Shapes: x ``(B, T, N, 3)`` -> ``(B,)`` (in ``x``'s dtype).
    """
    b, t, n, _ = x.shape
    chunk = max(1, max_elements // max(1, t * n * n))
    eye_inf = torch.diag(torch.full((n,), float("inf"), dtype=x.dtype, device=x.device))
    out = torch.empty((b,), dtype=x.dtype, device=x.device)
    for start in range(0, b, chunk):
        flat = x[start : start + chunk].reshape(-1, n, 3)
        dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")  # (b*T, N, N), exact
        out[start : start + chunk] = (dist + eye_inf).reshape(-1, t * n * n).amin(dim=1)
    return out
