"""Callbacks used by the CLI: a compute budget for training, and writing predicted trajectories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from set_lightning.errors import UserError

CLOCKS = ("process", "wall")


class TimeBudget(Callback):
    """Train for a fixed amount of compute, and record the validation curve against it.

    The clock runs only while training (it pauses for validation and sanity checks), and training
    stops after the first optimiser step past ``budget_s``. ``clock="process"`` counts the CPU time
    of this process (with one torch thread, the wall-clock time on an idle core: a fair clock on a
    machine whose cores are shared with other work); ``clock="wall"`` counts wall-clock time (the
    clock to use on GPUs or with several threads). A module with ``scheduler: cosine`` decays its
    learning rate to 0 at the budget (``progress`` is the fraction spent).

    With ``curve_file``, each validation appends one JSON line ``{"epoch", "step", "train_s",
    "wall_s", "val_pos_mse", ...}`` (every logged ``val/*`` value, ``train_s`` on the budget's clock).

    Args:
        budget_s: training budget in seconds on ``clock`` (> 0).
        clock: ``process`` (CPU seconds of this process) or ``wall``.
        curve_file: JSON-lines file for the validation curve (``None``: keep it in ``self.curve``).
    """

    def __init__(self, budget_s: float, clock: Literal["process", "wall"] = "process",
                 curve_file: Optional[str] = None) -> None:
        super().__init__()
        if not budget_s > 0:
            raise UserError(f"budget_s must be > 0, got {budget_s}")
        if clock not in CLOCKS:
            raise UserError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.budget_s, self.clock, self.curve_file = float(budget_s), clock, curve_file
        self.elapsed = 0.0  # seconds spent training, on `clock`
        self.curve: list[dict[str, Any]] = []
        self._since: Optional[float] = None
        self._wall0: Optional[float] = None

    def _now(self) -> float:
        return time.process_time() if self.clock == "process" else time.perf_counter()

    def _start(self) -> None:
        if self._since is None:
            self._since = self._now()

    def _pause(self) -> None:
        if self._since is not None:
            self.elapsed += self._now() - self._since
            self._since = None

    @property
    def spent(self) -> float:
        """Training seconds spent so far (including the running stretch)."""
        return self.elapsed + (self._now() - self._since if self._since is not None else 0.0)

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, in ``[0, 1]``."""
        return min(1.0, self.spent / self.budget_s)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._wall0 is None:
            self._wall0 = time.perf_counter()
        self._start()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.spent >= self.budget_s:
            trainer.should_stop = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.global_rank == 0:
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "train_s": round(self.elapsed, 3),
                   "wall_s": round(time.perf_counter() - (self._wall0 or time.perf_counter()), 3)}
            row.update({k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith("val/")})
            self.curve.append(row)
            if self.curve_file:
                with open(self.curve_file, "a") as f:
                    f.write(json.dumps(row) + "\n")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.spent, "curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))
        self.curve = list(state_dict.get("curve", []))


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs to ``<output_dir>/predictions.pt`` and a PNG of true vs predicted paths.

    The ``.pt`` file holds a dict of tensors concatenated over the predict set: ``x``/``v``
    ``(S, L, N, 3)`` history, ``charges`` ``(S, N, 1)``, ``x_target``/``v_target``/``x_pred``/
    ``v_pred`` ``(S, N, 3)``, and ``pos_mse`` (a scalar). Under DDP each rank writes
    ``predictions_rank<r>.pt`` holding its shard.

    Args:
        output_dir: folder for the files; ``None`` = the trainer's log directory (or ``predictions``).
        n_plot: how many trajectories to draw in ``predictions.png``.
    """

    def __init__(self, output_dir: Optional[str] = None, n_plot: int = 4) -> None:
        super().__init__(write_interval="epoch")
        if n_plot < 0:
            raise UserError(f"n_plot must be >= 0, got {n_plot}")
        self.output_dir = output_dir
        self.n_plot = n_plot
        self.written: list[Path] = []

    def _dir(self, trainer: pl.Trainer) -> Path:
        out = Path(self.output_dir or trainer.log_dir or "predictions")
        out.mkdir(parents=True, exist_ok=True)
        return out

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Optional[Sequence[Any]],
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        merged = {k: torch.cat([b[k].detach().cpu() for b in batches]) for k in batches[0]}
        merged["pos_mse"] = torch.mean((merged["x_pred"] - merged["x_target"]) ** 2)
        out = self._dir(trainer)
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.pt"
        torch.save(merged, out / name)
        self.written.append(out / name)
        if trainer.global_rank == 0 and self.n_plot > 0:
            png = out / "predictions.png"
            plot_predictions(merged, png, self.n_plot)
            self.written.append(png)
        if trainer.global_rank == 0:
            print(f"wrote predictions to {out / name} (position MSE {merged['pos_mse'].item():.5f})")


def plot_predictions(pred: dict[str, torch.Tensor], path: Path, n_plot: int = 4) -> None:
    """Draw, for ``n_plot`` samples, each particle's history (x-y plane), true and predicted targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_plot = min(n_plot, pred["x"].shape[0])
    fig, axes = plt.subplots(1, n_plot, figsize=(4 * n_plot, 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, ax in enumerate(axes[0]):
        hist, tgt, prd = pred["x"][k], pred["x_target"][k], pred["x_pred"][k]
        for i in range(hist.shape[1]):
            c = colors[i % len(colors)]
            ax.plot(hist[:, i, 0], hist[:, i, 1], "-o", color=c, ms=2, alpha=0.6)
            ax.plot([hist[-1, i, 0], tgt[i, 0]], [hist[-1, i, 1], tgt[i, 1]], ":", color=c, alpha=0.5)
            ax.plot(tgt[i, 0], tgt[i, 1], "*", color=c, ms=10)
            ax.plot(prd[i, 0], prd[i, 1], "x", color=c, ms=8, mew=2)
        ax.set_title(f"sample {k}: mse {torch.mean((prd - tgt) ** 2).item():.4f}")
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle("history (lines), true target (*), predicted (x); x-y plane")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
