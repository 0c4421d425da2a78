"""In-memory PyTorch datasets of (history -> target) samples cut from simulated trajectories."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from set_lightning.data.cache import Trajectories

__all__ = ["NBodyDataset"]


class NBodyDataset(Dataset):
    """Samples ``history`` frames ending at ``input_frame`` and the state at ``target_frame``.

    All tensors are sliced once, converted to float32 and kept in memory; ``__getitem__`` only
    indexes them, so the dataset is cheap to pickle into DataLoader workers and Lightning's
    DistributedSampler can shard it under DDP.

    Args:
        trajectories: simulated trajectories (``x``, ``v``: ``(B, T, N, 3)``; charges ``(B, N, 1)``).
        history: number of input frames ``L`` (>= 1).
        input_frame: last input frame (0-indexed into the ``T`` saved frames).
        target_frame: frame to predict (> ``input_frame``).

    Each item is a dict of float32 tensors: ``"x"`` and ``"v"``: ``(L, N, 3)`` (frames
    ``input_frame - L + 1 .. input_frame``), ``"charges"``: ``(N, 1)``, ``"x_target"`` and
    ``"v_target"``: ``(N, 3)``.
    """

    def __init__(self, trajectories: Trajectories, history: int, input_frame: int, target_frame: int) -> None:
        n_frames = trajectories.x.shape[1]
        first = input_frame - history + 1
        if history < 1 or first < 0:
            raise ValueError(
                f"history must be in 1..{input_frame + 1} for input_frame={input_frame}, got {history}"
            )
        if not input_frame < target_frame < n_frames:
            raise ValueError(
                f"target_frame must be in {input_frame + 1}..{n_frames - 1} (after input_frame={input_frame}, "
                f"within the {n_frames} saved frames), got {target_frame}"
            )
        frames = slice(first, input_frame + 1)
        self.x: Tensor = trajectories.x[:, frames].to(torch.float32).contiguous()
        self.v: Tensor = trajectories.v[:, frames].to(torch.float32).contiguous()
        self.charges: Tensor = trajectories.charges.to(torch.float32).contiguous()
        self.x_target: Tensor = trajectories.x[:, target_frame].to(torch.float32).contiguous()
        self.v_target: Tensor = trajectories.v[:, target_frame].to(torch.float32).contiguous()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "x": self.x[index],
            "v": self.v[index],
            "charges": self.charges[index],
            "x_target": self.x_target[index],
            "v_target": self.v_target[index],
        }
