"""Sweep report: mean ± std over seeds per ablation, Welch's t-test against the reference with
Benjamini-Hochberg adjusted p-values beside the raw ones, a rich table in the terminal, a Markdown
table (``report.md``), a paired comparison on the test trajectories and a bar plot on a linear axis
from 0 (``report.png``). The tests themselves live in :mod:`set_lightning.experiments.stats`; the
time-to-accuracy study's report in :mod:`set_lightning.experiments.tta_report`."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from set_lightning.experiments.stats import (
    benjamini_hochberg,
    paired_comparison,
    welch_p_value,
)


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
    p_adjusted: Optional[float] = None  # p_value, Benjamini-Hochberg adjusted over all groups of the report


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

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
    for s, q in zip(stats, benjamini_hochberg([s.p_value for s in stats])):
        s.p_adjusted = q
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
        adjusted = "" if s.variant == reference else _fmt(s.p_adjusted, ".3g")
        if s.p_adjusted is not None and s.p_adjusted < 0.05 and s.variant != reference:
            adjusted += " *"
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
                adjusted,
                _fmt(s.train_time_mean, ".0f"),
            ]
        )
    return rows


HEADER = ["variant", "grid", "model", "params", "seeds", "test pos MSE (mean ± std)", "best val MSE", "x ref", "Welch p",
          "BH-adjusted p", "train s"]


def to_markdown(stats: Sequence[GroupStats], reference: str, title: str = "") -> str:
    lines = [f"# Sweep report: {title}", ""] if title else []
    lines += [
        f"Test position MSE at the best-validation epoch, mean ± sample std over seeds; `x ref` is the "
        f"ratio to `{reference}` at the same grid point; `Welch p` is the two-sided Welch t-test "
        f"p-value against `{reference}` across seeds, and `BH-adjusted p` the same p-values adjusted for "
        f"testing all rows at once (Benjamini-Hochberg false discovery rate; `*`: below 0.05).",
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


def report_figure(stats: Sequence[GroupStats], title: str = "", reference: Optional[str] = None) -> Any:
    """Bar chart of test MSE (mean ± std over seeds), one panel per grid point, on a linear axis from 0
    (bar heights compare as ratios); a dashed line marks the reference, each bar is labelled ``x ratio``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = list(OrderedDict.fromkeys(s.grid for s in stats))
    fig, axes = plt.subplots(1, len(grids), figsize=(max(5, 0.8 * len(stats) / len(grids) + 2) * len(grids), 4.5),
                             squeeze=False)
    for ax, grid in zip(axes[0], grids):
        sub = [s for s in stats if s.grid == grid]
        xs = np.arange(len(sub))
        err = [0.0 if math.isnan(s.test_std) else s.test_std for s in sub]
        ax.bar(xs, [s.test_mean for s in sub], yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        ref = [s for s in sub if s.variant == reference]
        if ref:
            ax.axhline(ref[0].test_mean, color="black", ls="--", lw=1, label=f"reference: {ref[0].variant}")
            ax.legend(fontsize=8, loc="upper left")
        for x, s, e in zip(xs, sub, err):
            if s.ratio is not None:
                ax.text(x, s.test_mean + e, f"x{s.ratio:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, [s.variant for s in sub], rotation=45, ha="right")
        ax.set_ylim(bottom=0, top=1.12 * max(s.test_mean + e for s, e in zip(sub, err)))
        ax.set_ylabel("test position MSE (linear axis from 0)")
        ax.set_title(", ".join(f"{k.split('.')[-1]}={v}" for k, v in grid) or title)
    fig.suptitle(f"{title}: mean ± std over seeds; x ratio to the reference")
    fig.tight_layout()
    return fig


def plot(stats: Sequence[GroupStats], path: Path, title: str = "", reference: Optional[str] = None) -> None:
    """Write :func:`report_figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = report_figure(stats, title, reference)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_report(rows: Sequence[dict[str, Any]], reference: str, out_dir: str | Path, title: str = "") -> list[GroupStats]:
    """Summarise ``rows``; print the table; write ``report.md`` and ``report.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = summarise(rows, reference)
    print_rich_table(stats, reference, title)
    paired = paired_markdown(rows, reference)
    (out_dir / "report.md").write_text(to_markdown(stats, reference, title) + paired)
    plot(stats, out_dir / "report.png", title, reference)
    print(f"report written to {out_dir / 'report.md'} and {out_dir / 'report.png'}")
    return stats


def _per_traj_errors(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per group, the per-trajectory test MSE averaged over its seeds (runs whose ``per_traj_test.json``
    is readable from the working directory; groups missing any are left out)."""
    import json

    by_group: dict[str, list[np.ndarray]] = {}
    for row in rows:
        path = Path(str(row.get("run_dir", ""))) / "per_traj_test.json"
        if not path.is_file():
            by_group.setdefault(row["group"], []).append(None)
            continue
        by_group.setdefault(row["group"], []).append(np.asarray(json.loads(path.read_text())["pos_mse"]))
    return {g: np.mean(e, axis=0) for g, e in by_group.items()
            if all(x is not None for x in e) and len({len(x) for x in e}) == 1}


def paired_markdown(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """A Markdown table comparing each group with the reference at its grid point on the same test
    trajectories (paired bootstrap interval of the ratio of mean MSEs, Wilcoxon signed-rank test);
    empty when the runs' per-trajectory errors are not at hand (e.g. a report from results.jsonl alone)."""
    errors = _per_traj_errors(rows)
    grid_of = {r["group"]: tuple(sorted((k, v) for k, v in r.items() if k.startswith("grid."))) for r in rows}
    refs = {grid_of[r["group"]]: r["group"] for r in rows if r.get("variant") == reference}
    lines = []
    for group, errs in errors.items():
        ref = refs.get(grid_of[group])
        if ref is None or ref == group or ref not in errors or len(errors[ref]) != len(errs):
            continue
        c = paired_comparison(errs, errors[ref])
        lines.append(f"| {group} | {c.ratio:.3f} [{c.ratio_lo:.3f}, {c.ratio_hi:.3f}] | {c.p_wilcoxon:.3g} | "
                     f"{100 * c.frac_a_better:.0f}% |")
    if not lines:
        return ""
    return "\n".join([
        "", f"Paired with `{reference}` on the same test trajectories (per-trajectory errors averaged over "
        "seeds): ratio of mean MSEs with a paired bootstrap 95% interval over trajectories, the Wilcoxon "
        "signed-rank p-value of the per-trajectory differences, and the share of trajectories on which the "
        "variant's error is lower.", "",
        f"| variant | ratio to {reference} [95% CI] | Wilcoxon p | better on |", "|---|---|---|---|", *lines,
    ]) + "\n"
