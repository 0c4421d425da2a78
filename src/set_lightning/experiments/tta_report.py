"""The time-to-accuracy study's report (``benchmarks/time_to_accuracy.py``): seconds to reach validation
thresholds, the plateau check, mean ± std, Welch tests with Benjamini-Hochberg correction, the error
distribution and paired comparisons, and the validation curves against training seconds."""

from __future__ import annotations

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
from set_lightning.files import read_jsonl


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


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
