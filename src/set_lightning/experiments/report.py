"""Sweep report: mean ± std over seeds per ablation, Welch's t-test against the reference with
Benjamini-Hochberg adjusted p-values beside the raw ones, a rich table in the terminal, a Markdown
table (``report.md``) and a bar plot on a linear axis from 0 (``report.png``)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from set_lightning.files import read_jsonl


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


# ---------------------------------------------------------------------------------------------
# Paired comparisons on a shared test set
# ---------------------------------------------------------------------------------------------
@dataclass
class PairedComparison:
    """Model A against model B, scored on the same test trajectories.

    ``ratio`` is ``mean(a) / mean(b)`` (below 1: A has the lower mean MSE) with its paired
    bootstrap 95% interval ``[ratio_lo, ratio_hi]`` (trajectories resampled with replacement, the
    same indices for both models); ``p_wilcoxon`` is the two-sided Wilcoxon signed-rank p-value of
    the per-trajectory differences (is A better on a typical trajectory?); ``frac_a_better`` the
    share of trajectories on which A's error is lower.
    """

    ratio: float
    ratio_lo: float
    ratio_hi: float
    p_wilcoxon: float
    frac_a_better: float


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    """Compare per-trajectory errors ``a`` and ``b`` (same trajectories, same order).

    Shapes: a, b ``(S,)``.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired errors must be two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    p = float(wilcoxon(a, b).pvalue) if np.any(a != b) else 1.0
    return PairedComparison(float(a.mean() / b.mean()), float(lo), float(hi), p, float(np.mean(a < b)))


def benjamini_hochberg(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); ``None`` entries are skipped."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[Optional[float]] = [None] * len(p_values)
    if not idx:
        return out
    p = np.array([p_values[i] for i in idx], dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adj = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    for rank, j in enumerate(order):
        out[idx[j]] = float(min(adj[rank], 1.0))
    return out


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


# ---------------------------------------------------------------------------------------------
# Time-to-accuracy study
# ---------------------------------------------------------------------------------------------
TTA_THRESHOLDS = (0.0100, 0.0080, 0.0071)


def time_to_reach(curve: Sequence[dict[str, Any]], threshold: float) -> Optional[float]:
    """Training seconds at the first validation with ``val_pos_mse <= threshold`` (None: never)."""
    for row in sorted(curve, key=lambda r: r["train_s"]):
        if row["val_pos_mse"] <= threshold:
            return float(row["train_s"])
    return None


def plateau_gain(curve: Sequence[dict[str, Any]], budget_s: float, tail: float = 0.2) -> Optional[float]:
    """Relative improvement of the best validation MSE over the last ``tail`` of the budget.

    ``(best before (1 - tail) * budget - best at the end) / best before``; below 0.02 the run has
    plateaued by the study's criterion.
    """
    before = [r["val_pos_mse"] for r in curve if r["train_s"] <= (1 - tail) * budget_s]
    if not before:
        return None
    b0, b1 = min(before), min(r["val_pos_mse"] for r in curve)
    return (b0 - b1) / b0


@dataclass
class Study:
    """The rows of a time-to-accuracy study, per model (only each model's largest budget)."""

    finals: dict[str, list[dict[str, Any]]]  # model -> its runs' final rows
    curves: dict[str, dict[int, list[dict[str, Any]]]]  # model -> seed -> validation rows
    per_traj: dict[str, np.ndarray]  # model -> per-trajectory test MSE, mean over seeds, (S,)
    budget: dict[str, float]


def load_study(out: str | Path) -> Study:
    """Read ``<out>.jsonl`` and ``<out>_per_traj.jsonl``."""
    out = Path(out)
    rows = read_jsonl(out.with_suffix(".jsonl"))
    per_rows = read_jsonl(out.parent / f"{out.name}_per_traj.jsonl")
    all_finals = [r for r in rows if r.get("final")]
    models = list(OrderedDict.fromkeys(r["model"] for r in all_finals))
    budget = {m: max(r["budget_s"] for r in all_finals if r["model"] == m) for m in models}
    finals = {m: [r for r in all_finals if r["model"] == m and r["budget_s"] == budget[m]] for m in models}
    curves: dict[str, dict[int, list[dict[str, Any]]]] = {m: {} for m in models}
    for r in rows:
        if not r.get("final") and r["model"] in curves and r["config"]["budget_s"] == budget[r["model"]]:
            curves[r["model"]].setdefault(r["seed"], []).append(r)
    per_traj = {}
    for m in models:
        errs = [np.asarray(p["pos_mse"]) for p in per_rows if p["model"] == m and p["config"]["budget_s"] == budget[m]]
        if errs:
            per_traj[m] = np.mean(errs, axis=0)
    return Study(finals, curves, per_traj, budget)


def _small(x: float) -> str:
    """Five decimals, or three significant digits for values below 1e-3 (the springs' errors are ~1e-7)."""
    return f"{x:.5f}" if x == 0 or abs(x) >= 1e-3 or not np.isfinite(x) else f"{x:.3g}"


def _mean_std(study: Study, m: str, key: str) -> str:
    vals = [r[key] for r in study.finals[m] if r.get(key) is not None]
    return f"{_small(np.mean(vals))} ± {_small(_std(vals))}" if len(vals) > 1 else (_small(vals[0]) if vals else "–")


def _mean(study: Study, m: str, key: str, spec: str = "") -> str:
    vals = [r[key] for r in study.finals[m] if r.get(key) is not None]
    if not vals:
        return "–"
    return format(float(np.mean(vals)), spec) if spec else _small(float(np.mean(vals)))


#: what the close-encounter columns mean on the charged system
CHARGED_CLOSE_NOTE = ("A trajectory is a *close encounter* when two particles come nearer than 0.1 (where the Coulomb "
                      "force reaches the simulator's clip value) in a saved frame between the input and the target "
                      "frame; the others are *calm*.")


def study_section(study: Study, title: str, models: Sequence[str], reference: str,
                  thresholds: Sequence[float] = TTA_THRESHOLDS, close_note: str = CHARGED_CLOSE_NOTE) -> list[str]:
    """Markdown tables for ``models`` (those with finished runs), compared with ``reference``.

    ``thresholds``: the validation MSEs whose time to reach is tabled; ``close_note``: what the
    close-encounter columns mean for this system.
    """
    models = [m for m in models if m in study.finals]
    if not models:
        return []
    ref = reference if reference in models else None
    ref_tests = [r["test_pos_mse"] for r in study.finals.get(ref, [])]
    welch = {m: welch_p_value([r["test_pos_mse"] for r in study.finals[m]], ref_tests) if ref and m != ref else None
             for m in models}
    welch_adj = dict(zip(models, benjamini_hochberg([welch[m] for m in models])))
    lines = [
        f"## {title}",
        "",
        "Seconds of training to reach a validation MSE: mean over the seeds that reached it (`k/n`: how many "
        "did). `plateau`: relative improvement of the best validation MSE over the last 20% of the budget "
        "(mean over seeds; below 2% counts as plateaued). Test MSE: at the best-validation checkpoint, mean ± "
        f"std over seeds. Welch p: two-sided, against {ref}, across seeds (Benjamini-Hochberg adjusted in "
        "brackets).",
        "",
        "| model | params | seeds | budget s | epochs | " + " | ".join(f"s to val {t}" for t in thresholds)
        + f" | plateau | best val MSE | test pos MSE | Welch p vs {ref} (BH) |",
        "|" + "---|" * (9 + len(thresholds)),
    ]
    for m in models:
        seeds = study.curves[m]
        reach = []
        for t in thresholds:
            times = [time_to_reach(c, t) for c in seeds.values()]
            got = [x for x in times if x is not None]
            reach.append(f"{np.mean(got):.0f} ({len(got)}/{len(times)})" if got else f"– (0/{len(times)})")
        gains = [g for g in (plateau_gain(c, study.budget[m]) for c in seeds.values()) if g is not None]
        plateau = f"{100 * np.mean(gains):.1f}%" if gains else "–"
        p = "(reference)" if m == ref else (f"{welch[m]:.3g} ({welch_adj[m]:.3g})" if welch[m] is not None else "–")
        lines.append(
            f"| {m} | {study.finals[m][0]['n_params']} | {len(study.finals[m])} | {study.budget[m]:.0f} | "
            f"{_mean(study, m, 'epochs', '.0f')} | " + " | ".join(reach) + f" | {plateau} | "
            f"{_mean_std(study, m, 'best_val_pos_mse')} | {_mean_std(study, m, 'test_pos_mse')} | {p} |"
        )
    lines += [
        "",
        "Where the error lives: the distribution of the per-trajectory test MSE (each statistic averaged over "
        "seeds). " + close_note,
        "",
        "| model | mean | median | p90 | p99 | max | calm | close encounters | close share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        lines.append(
            f"| {m} | {_mean(study, m, 'test_pos_mse')} | {_mean(study, m, 'test_pos_mse_median')} | "
            f"{_mean(study, m, 'test_pos_mse_p90')} | {_mean(study, m, 'test_pos_mse_p99')} | "
            f"{_mean(study, m, 'test_pos_mse_max')} | {_mean(study, m, 'test_pos_mse_calm')} | "
            f"{_mean(study, m, 'test_pos_mse_close')} | {_mean(study, m, 'test_close_frac', '.3f')} |"
        )
    paired = {m: paired_comparison(study.per_traj[m], study.per_traj[ref]) for m in models
              if ref and m != ref and m in study.per_traj and ref in study.per_traj
              and len(study.per_traj[m]) == len(study.per_traj[ref])}
    if paired:
        lines += [
            "",
            f"Paired with {ref} on the same test trajectories (per-trajectory errors averaged over each model's "
            f"seeds): `ratio` of mean MSEs with a paired bootstrap 95% interval over trajectories (does the mean "
            f"differ on this test distribution?); `Wilcoxon p`: signed-rank test of the per-trajectory "
            f"differences (is one better on a typical trajectory?); `better on`: share of trajectories where the "
            f"model's error is lower than {ref}'s.",
            "",
            f"| model | ratio to {ref} [95% CI] | Wilcoxon p | better on |",
            "|---|---|---|---|",
        ]
        for m, c in paired.items():
            lines.append(f"| {m} | {c.ratio:.3f} [{c.ratio_lo:.3f}, {c.ratio_hi:.3f}] | {c.p_wilcoxon:.3g} | "
                         f"{100 * c.frac_a_better:.0f}% |")
    return lines + [""]


def time_to_accuracy_report(out: str | Path, sections: Sequence[tuple[str, Sequence[str], str]],
                            preamble: str = "", thresholds: Sequence[float] = TTA_THRESHOLDS,
                            close_note: str = CHARGED_CLOSE_NOTE) -> str:
    """Write ``<out>.md`` (one :func:`study_section` per ``(title, models, reference)``) and ``<out>.png``."""
    out = Path(out)
    study = load_study(out)
    if not study.finals:
        print(f"no finished runs in {out.with_suffix('.jsonl')}")
        return ""
    lines = [f"# Time to accuracy ({out.name})", ""] + ([preamble, ""] if preamble else [])
    for title, models, reference in sections:
        lines += study_section(study, title, models, reference, thresholds, close_note)
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text)
    _plot_curves(study.curves, out.with_suffix(".png"), out.name, thresholds,
                 panels=[(title, models) for title, models, _ in sections])
    print(text)
    return text


def _plot_curves(curves: dict[str, dict[int, list[dict[str, Any]]]], path: Path, title: str,
                 thresholds: Sequence[float] = TTA_THRESHOLDS,
                 panels: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
    """Validation MSE against training seconds (log-log): mean over seeds, band = min..max; one panel
    per ``(title, models)`` (default: one panel of every model), each with its own colour cycle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, [m for m in ms if curves.get(m)]) for t, ms in (panels or [(title, list(curves))])]
    panels = [(t, ms) for t, ms in panels if ms]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tops = []  # per curve, 3x its median: a divergence spike does not flatten every other curve
    for ax, (panel_title, models) in zip(axes[0], panels):
        for i, m in enumerate(models):
            seeds = curves[m]
            t_max = min(max(r["train_s"] for r in c) for c in seeds.values())
            t_min = max(min(r["train_s"] for r in c) for c in seeds.values())
            if not t_max > t_min > 0:
                continue
            grid = np.geomspace(t_min, t_max, 200)
            vals = []
            for c in seeds.values():
                c = sorted(c, key=lambda r: r["train_s"])
                ts = np.array([r["train_s"] for r in c])
                vs = np.array([r["val_pos_mse"] for r in c])
                vals.append(vs[np.searchsorted(ts, grid, side="right") - 1])  # the latest validation at t
            vals = np.array(vals)
            style = {"color": colours[i % len(colours)], "ls": "-" if i < len(colours) else "--"}
            ax.plot(grid, vals.mean(0), label=f"{m} ({len(seeds)} seeds)", **style)
            tops.append(3 * float(np.median(vals.max(0))))
            ax.fill_between(grid, vals.min(0), vals.max(0), color=style["color"], alpha=0.15)
        for t in thresholds:
            ax.axhline(t, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training seconds (one CPU thread)")
        ax.set_title(panel_title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation position MSE")
    if tops:
        axes[0][0].set_ylim(top=max(tops))  # shared y: spikes above it are cut off
    fig.suptitle(f"{title}: mean over seeds, band = min..max (y cut at {max(tops):.2g})" if tops else title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
