"""Sweep report: mean ± std over seeds per ablation, Welch's t-test against the reference, a
rich table in the terminal, a Markdown table (``report.md``) and a bar plot (``report.png``)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


@dataclass
class GroupStats:
    """Statistics of one (variant, grid point) over its seeds."""

    group: str
    variant: str
    grid: tuple[tuple[str, Any], ...]
    model: str
    n_params: int
    seeds: int
    test_mean: float
    test_std: float
    val_mean: float
    train_time_mean: float
    p_value: Optional[float]  # Welch's t-test of test MSE against the reference at this grid point
    ratio: Optional[float]  # test MSE mean / reference test MSE mean


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided Welch's t-test p-value; ``None`` when either side has fewer than 2 values."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(rows: Sequence[dict[str, Any]], reference: str) -> list[GroupStats]:
    """Group result rows by (variant, grid point) and compare each group with the reference."""
    groups: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
    for row in rows:
        groups.setdefault(row["group"], []).append(row)

    def grid_of(row: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((k[5:], v) for k, v in row.items() if k.startswith("grid.")))

    ref_by_grid = {grid_of(r[0]): [x["test_pos_mse"] for x in r] for r in groups.values() if r[0]["variant"] == reference}
    stats = []
    for group, members in groups.items():
        tests = [m["test_pos_mse"] for m in members]
        vals = [m["best_val_pos_mse"] for m in members if m.get("best_val_pos_mse") is not None]
        grid = grid_of(members[0])
        ref = ref_by_grid.get(grid)
        is_ref = members[0]["variant"] == reference
        stats.append(
            GroupStats(
                group=group,
                variant=members[0]["variant"],
                grid=grid,
                model=members[0].get("model", "?"),
                n_params=int(members[0].get("n_params", 0)),
                seeds=len(members),
                test_mean=float(np.mean(tests)),
                test_std=_std(tests),
                val_mean=float(np.mean(vals)) if vals else float("nan"),
                train_time_mean=float(np.mean([m.get("train_time_s", float("nan")) for m in members])),
                p_value=None if (ref is None or is_ref) else welch_p_value(tests, ref),
                ratio=None if ref is None else float(np.mean(tests) / np.mean(ref)),
            )
        )
    return stats


def _fmt(x: Optional[float], spec: str = ".5f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _table_rows(stats: Sequence[GroupStats], reference: str) -> list[list[str]]:
    rows = []
    for s in stats:
        grid = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in s.grid) or "–"
        sig = "(reference)" if s.variant == reference else _fmt(s.p_value, ".3g")
        if s.p_value is not None and s.p_value < 0.05 and s.variant != reference:
            sig += " *"
        rows.append(
            [
                s.variant,
                grid,
                s.model,
                str(s.n_params),
                str(s.seeds),
                f"{_fmt(s.test_mean)} ± {_fmt(s.test_std)}",
                _fmt(s.val_mean),
                _fmt(s.ratio, ".2f"),
                sig,
                _fmt(s.train_time_mean, ".0f"),
            ]
        )
    return rows


HEADER = ["variant", "grid", "model", "params", "seeds", "test pos MSE (mean ± std)", "best val MSE", "x ref", "Welch p", "train s"]


def to_markdown(stats: Sequence[GroupStats], reference: str, title: str = "") -> str:
    lines = [f"# Sweep report: {title}", ""] if title else []
    lines += [
        f"Test position MSE at the best-validation epoch, mean ± sample std over seeds; `x ref` is the "
        f"ratio to `{reference}` at the same grid point; `Welch p` is the two-sided Welch t-test "
        f"p-value against `{reference}` (`*`: p < 0.05).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(stats, reference)]
    return "\n".join(lines) + "\n"


def print_rich_table(stats: Sequence[GroupStats], reference: str, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {title}: test position MSE")
    for h in HEADER:
        table.add_column(h, justify="right" if h not in ("variant", "grid", "model") else "left")
    for r in _table_rows(stats, reference):
        table.add_row(*r)
    Console(width=160).print(table)


def plot(stats: Sequence[GroupStats], path: Path, title: str = "") -> None:
    """Bar plot of test MSE (mean ± std, log scale), one panel per grid point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = list(OrderedDict.fromkeys(s.grid for s in stats))
    fig, axes = plt.subplots(1, len(grids), figsize=(max(5, 0.8 * len(stats) / len(grids) + 2) * len(grids), 4), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        sub = [s for s in stats if s.grid == grid]
        xs = np.arange(len(sub))
        err = [0.0 if math.isnan(s.test_std) else s.test_std for s in sub]
        ax.bar(xs, [s.test_mean for s in sub], yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(xs, [s.variant for s in sub], rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("test position MSE")
        ax.set_title(", ".join(f"{k.split('.')[-1]}={v}" for k, v in grid) or title)
    fig.suptitle(f"{title}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_report(rows: Sequence[dict[str, Any]], reference: str, out_dir: str | Path, title: str = "") -> list[GroupStats]:
    """Summarise ``rows``; print the table; write ``report.md`` and ``report.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = summarise(rows, reference)
    print_rich_table(stats, reference, title)
    (out_dir / "report.md").write_text(to_markdown(stats, reference, title))
    plot(stats, out_dir / "report.png", title)
    print(f"report written to {out_dir / 'report.md'} and {out_dir / 'report.png'}")
    return stats
