"""Callbacks used by the CLI: writing predicted trajectories and plotting them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


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
            raise ValueError(f"n_plot must be >= 0, got {n_plot}")
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
