"""A test-only callback for 2-process DDP runs: slows one rank down on purpose, can put a NaN into one
rank's batch, and records what every rank did (its learning rates, steps and weights) in a JSON file."""

import json
import time
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback


class RankProbe(Callback):
    """Records each rank's run in ``<out_dir>/rank<r>.json``.

    Args:
        out_dir: folder of the JSON files.
        slow_rank: the rank slowed down (-1: none) by ``slow_s`` seconds of busy CPU work per step (so
            its process clock and its wall clock both run ahead of the other ranks').
        slow_s: seconds of work added to each of its training steps.
        nan_rank: the rank whose batch gets a NaN at optimiser step ``nan_step`` (-1: none).
        nan_step: that step.
    """

    def __init__(self, out_dir: str, slow_rank: int = -1, slow_s: float = 0.02, nan_rank: int = -1,
                 nan_step: int = 0) -> None:
        self.out_dir, self.slow_rank, self.slow_s = Path(out_dir), slow_rank, slow_s
        self.nan_rank, self.nan_step = nan_rank, nan_step
        self.lrs: list[float] = []
        self.steps: list[int] = []
        self.t0: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.steps.append(trainer.global_step)
        if trainer.global_rank == self.slow_rank:
            end = time.perf_counter() + self.slow_s
            while time.perf_counter() < end:  # busy: counts on the process clock too
                pass
        if trainer.global_rank == self.nan_rank and trainer.global_step == self.nan_step:
            batch["x"].fill_(float("nan"))

    def _dump(self, trainer, pl_module) -> None:
        from set_lightning.callbacks import TimeBudget

        budgets = [cb for cb in trainer.callbacks if isinstance(cb, TimeBudget)]
        record = {
            "rank": trainer.global_rank, "global_step": trainer.global_step, "epoch": trainer.current_epoch,
            "lrs": self.lrs, "steps": self.steps,
            "param_sum": float(sum(p.detach().double().sum() for p in pl_module.parameters())),
            "own_clock_s": budgets[0].spent if budgets else None,
            "train_wall_s": time.perf_counter() - (self.t0 or time.perf_counter()),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._dump(trainer, pl_module)
