"""Figures of predicted trajectories: which trajectories to draw, and the three-plane drawing."""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: which trajectories a prediction figure shows: the highest position MSE, or the first ones
SELECT = ("worst", "first")


def pick_trajectories(pred: dict[str, torch.Tensor], n: int, select: str = "worst") -> list[int]:
    """Indices of ``n`` trajectories: the ``worst`` (highest position MSE first) or the ``first``."""
    per = pred.get("pos_mse_per_traj")
    if per is None:
        per = (pred["x_pred"] - pred["x_target"]).square().mean(dim=(-2, -1))
    n = min(n, per.shape[0])
    if select == "first":
        return list(range(n))
    return torch.argsort(per, descending=True)[:n].tolist()


PLANES = ((0, 1), (0, 2), (1, 2))


def prediction_figure(pred: dict[str, torch.Tensor], indices: Sequence[int], select: str = "worst") -> Any:
    """A matplotlib figure: one row per trajectory in ``indices``, one column per plane (x-y, x-z, y-z).

    Per particle (one colour each): the history (solid, dots at the frames), the true path from the
    simulation (dashed; ``x_path`` when ``pred`` has it, else a straight segment to the target), the
    true target (star), the prediction (cross) and the error (red segment from target to prediction).

    Shapes: pred["x"] ``(S, L, N, 3)``, pred["x_target"], pred["x_pred"] ``(S, N, 3)``, optional
    pred["x_path"] ``(S, K, N, 3)``, pred["pos_mse_per_traj"], pred["min_dist"] ``(S,)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = max(1, len(indices))
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.6 * rows + 0.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = "xyz"
    for row, k in enumerate(indices):
        hist, tgt, prd = pred["x"][k], pred["x_target"][k], pred["x_pred"][k]
        path = pred["x_path"][k] if "x_path" in pred else torch.stack([hist[-1], tgt])
        mse = torch.mean((prd - tgt) ** 2).item()
        closest = f", closest pair {pred['min_dist'][k].item():.3f}" if "min_dist" in pred else ""
        for col, (a, b) in enumerate(PLANES):
            ax = axes[row][col]
            for i in range(hist.shape[1]):
                c = colors[i % len(colors)]
                ax.plot([tgt[i, a], prd[i, a]], [tgt[i, b], prd[i, b]], "-", color="red", lw=1.2, alpha=0.8, zorder=2)
                ax.plot(hist[:, i, a], hist[:, i, b], "-o", color=c, ms=3, lw=2.0, zorder=3)
                ax.plot(path[:, i, a], path[:, i, b], "--", color=c, lw=1.5, zorder=3)
                ax.plot(tgt[i, a], tgt[i, b], "*", color=c, ms=11, mec="black", mew=0.5, zorder=4)
                ax.plot(prd[i, a], prd[i, b], "X", color=c, ms=8, mec="black", mew=0.5, zorder=4)
            ax.set_xlabel(labels[a])
            ax.set_ylabel(labels[b])
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_title(f"trajectory {k}: position MSE {mse:.4g}{closest}", loc="left", fontsize=10)
    handles = [
        Line2D([], [], color="grey", marker="o", ms=3, lw=2.0, label="history (input frames)"),
        Line2D([], [], color="grey", ls="--", lw=1.5, label="true path (simulation)"),
        Line2D([], [], color="grey", marker="*", ms=11, ls="none", mec="black", label="true target"),
        Line2D([], [], color="grey", marker="X", ms=8, ls="none", mec="black", label="prediction"),
        Line2D([], [], color="red", lw=1.5, label="error (target to prediction)"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=9, frameon=False)
    what = "highest position MSE" if select == "worst" else "first"
    height = fig.get_figheight()
    fig.suptitle(f"{len(indices)} of {pred['x'].shape[0]} trajectories ({what}); colours: particles",
                 y=1 - 0.3 / height, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / height))
    return fig
