"""The report of a budget-ladder study (:mod:`set_lightning.experiments.ladder`): ``<out>.md`` and ``.png``.

Sections: the machines and revisions the rows came from; the recipe search at the lowest rung; the
ladder (every arm at every rung: best validation and test MSE over seeds, the distribution of the
test error, the convergence verdict); the comparisons at every rung (ratio of mean test MSEs with a
two-level bootstrap interval over seeds and trajectories, the paired interval over trajectories,
Welch's p over seeds with Benjamini-Hochberg adjustment, the share of trajectories on which A is
better); the ablation. Rows are compared only when :func:`check_comparable` allows it: the same
budget and the same model function (fingerprint), and for seconds the same machine.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from set_lightning.errors import UserError
from set_lightning.experiments.stats import (
    CONVERGED_TOL,
    Verdict,
    benjamini_hochberg,
    first_converged,
    change_se,
    hierarchical_ratio,
    ladder_verdicts,
    paired_comparison,
    welch_p_value,
)
from set_lightning.files import read_jsonl, write_text_atomic

#: published test MSEs on this task (frame 30 -> 40, 3000 training trajectories); none reads a history
PUBLISHED = (("EGNN", 0.0071), ("SEGNN", 0.0043), ("SEGNO", 0.00433), ("CGENN", 0.0039), ("Multivector Neurons", 0.0035))


def check_comparable(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]] = (), seconds: bool = False,
                     one_budget_each: bool = False) -> None:
    """Refuse to compare rows that do not measure the same thing.

    All rows must share one nominal budget (with ``one_budget_each``: each side its own, for models compared
    each at its converged rung); each side's rows one model function (fingerprint, so rows made before a
    change of the model's math never mix with rows made after it); with ``seconds``, all rows one machine
    (CPU model, capability, threads, device).

    Raises:
        UserError: naming what differs.
    """
    rows = [*a, *b]
    for group in ((a, b) if one_budget_each else (rows,)):
        budgets = sorted({r["budget_tflop"] for r in group})
        if len(budgets) > 1:
            raise UserError(f"rows of different budgets {budgets} TFLOP in one comparison")
    for side in (a, b):
        prints = {tuple(r["fingerprint"]) for r in side}
        if len(prints) > 1:
            raise UserError(f"rows of {side[0]['arm']!r} come from two versions of the model's math "
                            f"(fingerprints {sorted(prints)}): rerun the stale ones")
    if seconds:
        machines = sorted({r["machine_key"] for r in rows})
        if len(machines) > 1:
            raise UserError(f"seconds from different machines in one comparison: {machines}")


def cpu_seconds(rows: Sequence[Mapping[str, Any]]) -> str:
    """Mean training CPU seconds of the rows when they come from one machine; else names the machines. Rows
    trained on a GPU count wall-clock seconds (their machine's ``clock``), marked ``(wall)``."""
    try:
        check_comparable(rows, seconds=True)
    except UserError:
        return "mixed machines"
    vals = [r["train_cpu_s"] for r in rows if r.get("train_cpu_s")]
    wall = any(r.get("machine", {}).get("clock") == "wall" for r in rows)
    return (f"{np.mean(vals):.0f}" + (" (wall)" if wall else "")) if vals else "–"


def _fmt(x: Optional[float]) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.5f}" if abs(x) >= 1e-3 else f"{x:.3g}"


def _ms(vals: Sequence[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{_fmt(float(np.mean(vals)))} ± {_fmt(float(np.std(vals, ddof=1)))}" if len(vals) > 1 else _fmt(vals[0])


def current_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[tuple, list[dict[str, Any]]], int]:
    """The rows that count, by cell ``(arm, recipe, budget)``: of the fingerprint of the cell's newest row, one
    per seed (a seed run twice, e.g. on two machines, keeps its newest row); and the number of stale rows
    (an older fingerprint) left out."""
    cells: dict[tuple, list[dict[str, Any]]] = OrderedDict()
    for r in rows:
        cells.setdefault((r["arm"], r["recipe"], r["budget_tflop"]), []).append(r)
    out, stale = {}, 0
    for key, cell in cells.items():
        newest = max(cell, key=lambda r: r.get("finished_at") or "")["fingerprint"]
        keep = [r for r in cell if r["fingerprint"] == newest]
        stale += len(cell) - len(keep)
        by_seed = {}
        for r in sorted(keep, key=lambda r: r.get("finished_at") or ""):
            by_seed[r["seed"]] = r
        out[key] = [by_seed[s] for s in sorted(by_seed)]
    return out, stale


class LadderRows:
    """The rows of a study, grouped: ``cells[(arm, recipe, budget)]`` -> rows of the current fingerprint.

    Where a cell holds rows of two fingerprints (the model's math changed between them), the rows of
    the fingerprint of the newest row are kept and the others counted in ``stale``.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        rows = read_jsonl(self.out.with_suffix(".jsonl"))
        self.per_traj = {p["run_id"]: np.asarray(p["pos_mse"]) for p in
                         read_jsonl(self.out.parent / f"{self.out.name}_per_traj.jsonl")}
        self.all = rows
        self.cells, self.stale = current_cells(rows)

    def arms(self) -> list[str]:
        return list(OrderedDict.fromkeys(k[0] for k in self.cells))

    def cell(self, arm: str, recipe: Optional[str], budget: float) -> list[dict[str, Any]]:
        return self.cells.get((arm, recipe, budget), [])

    def errors(self, rows: Sequence[Mapping[str, Any]]) -> Optional[np.ndarray]:
        """Per-seed, per-trajectory test errors ``(seeds, S)``; ``None`` when any is missing."""
        errs = [self.per_traj.get(r["run_id"]) for r in rows]
        if not errs or any(e is None for e in errs) or len({len(e) for e in errs}) != 1:
            return None
        return np.stack(errs)


def recipe_choice(lr: LadderRows, arm: str, t: float, final: bool = True) -> tuple[Optional[str], list[list[str]]]:
    """The recipe of ``arm`` with the lowest best validation MSE at ``t``, seed 0, and the table rows
    (``final=False``: the search has more recipes to run, so the best is marked as the best so far)."""
    found = [(recipe, r) for (a, recipe, b), rows in lr.cells.items() if a == arm and b == t
             for r in rows if r["seed"] == 0]
    if not found:
        return None, []
    best = min(found, key=lambda f: f[1]["best_val_pos_mse"])[0]
    mark = " **(chosen)**" if final else " (best so far: the search goes on)"
    table = [[arm, recipe + (mark if recipe == best else ""), _fmt(r["best_val_pos_mse"]),
              _fmt(r["test_pos_mse"]), _fmt(r.get("test_pos_mse_median")), str(r["steps"]), str(r.get("best_step"))]
             for recipe, r in found]
    return best, table


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def compare(lr: LadderRows, a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
            one_budget_each: bool = False) -> dict[str, Any]:
    """A against B at one rung (or each at its own, ``one_budget_each``): ratio of means, hierarchical and paired
    intervals, Welch p, % better."""
    check_comparable(a, b, one_budget_each=one_budget_each)
    ta, tb = [r["test_pos_mse"] for r in a], [r["test_pos_mse"] for r in b]
    out: dict[str, Any] = {"ratio": float(np.mean(ta) / np.mean(tb)), "welch": welch_p_value(ta, tb),
                           "hier": None, "paired": None}
    ea, eb = lr.errors(a), lr.errors(b)
    if ea is not None and eb is not None and ea.shape[1] == eb.shape[1]:
        out["hier"] = hierarchical_ratio(ea, eb)
        out["paired"] = paired_comparison(ea.mean(0), eb.mean(0), n_boot=4000)
        out["ratio"] = float(ea.mean() / eb.mean())
    return out


def history_report(out: str | Path, t: float, headline: Sequence[str], pairs: Optional[Sequence[tuple]] = None,
                   recipe_of: Optional[Mapping[str, str]] = None, ablation_prefix: str = ": ",
                   searching: Sequence[str] = ()) -> str:
    """Write ``<out>.md`` and ``<out>.png`` from the study's rows; returns the Markdown.

    Args:
        out: the results' stem.
        t: the lowest rung in TFLOP (the recipe search's budget).
        headline: the arms with their own recipe search.
        pairs: the comparisons ``(A, B)`` tabled at every rung (default: every pair of ``headline``
            and each other non-ablation arm against the first headline arm).
        recipe_of: arm -> the headline arm whose chosen recipe it uses.
        ablation_prefix: arms named ``"<model><prefix><flag>"`` are the ablation of ``<model>``.
        searching: headline arms whose recipe search has runs still to do (their best is provisional).
    """
    out = Path(out)
    lr = LadderRows(out)
    recipe_of = dict(recipe_of or {})
    md = ["# Does history pay? SET at equal training FLOPs, on a budget ladder", "",
          "Made by `python benchmarks/history_study.py` from `history.jsonl` (one row per run), "
          "`history_per_traj.jsonl` (per-trajectory test errors) and `history_flops.json` (FLOPs per step, counted "
          "once per model shape). The N = 5 charged N-body benchmark split (3000 / 2000 / 2000 trajectories, "
          "frame 30 -> 40). Every run's budget is training FLOPs (matmul FLOPs of forward and backward, counted by "
          "`torch.utils.flop_counter`), so a rung means the same number of steps on every machine and at every "
          "speed of the code; a cosine schedule decays to the run's last step. Test MSE at the best-validation "
          "epoch. A configuration is *converged* at a rung when doubling the budget changes its mean best "
          f"validation MSE by less than {CONVERGED_TOL:.0%}.", ""]
    if not lr.all:
        md.append("No finished runs yet.")
        write_text_atomic(out.with_suffix(".md"), "\n".join(md) + "\n")
        return "\n".join(md)
    machines = defaultdict(int)
    for r in lr.all:
        machines[(r["machine_key"], r.get("revision"))] += 1
    md += ["Rows by machine and code revision (seconds are only shown where one machine made all rows of a cell):", "",
           *_table(["machine (CPU, torch capability, threads, device)", "revision", "runs"],
                   [[m, str(rev), str(n)] for (m, rev), n in sorted(machines.items())])]
    if lr.stale:
        md += ["", f"{lr.stale} row(s) of an older model function (another numerics fingerprint) are left out."]

    chosen: dict[str, Optional[str]] = {}
    recipe_rows = []
    for arm in headline:
        chosen[arm], rows = recipe_choice(lr, arm, t, final=arm not in searching)
        recipe_rows += rows
    for arm in lr.arms():
        if arm not in chosen:
            family = recipe_of.get(arm) or next((h for h in headline if arm.startswith(h)), None)
            chosen[arm] = chosen.get(family) if family else None
            if chosen[arm] is None:  # an arm outside the recipe search: its only recipe
                recipes = {k[1] for k in lr.cells if k[0] == arm}
                chosen[arm] = next(iter(recipes)) if len(recipes) == 1 else None
    md += ["", f"## Recipe search ({t:g} TFLOP, seed 0)", "",
           "Each model at three learning rates (cosine to the last step after 30 warm-up steps; EGNN also with "
           "its own constant rate), and beyond the highest (lowest) rate while that one is the best; the lowest "
           "best validation MSE is chosen for every other run of that model."
           + (f" Still searching: {', '.join(searching)}; the ladder below shows their best recipe so far."
              if searching else ""), "",
           *_table(["model", "recipe", "best val MSE", "test MSE", "test median", "steps", "best step"], recipe_rows)]

    budgets = sorted({k[2] for k in lr.cells})
    ladder_rows, settled_at = [], {}
    for arm in lr.arms():
        recipe = chosen.get(arm)
        # a rung is judged only against a complete one: as many seeds as the arm's fullest rung (a verdict from
        # the first seed of a rung still running would be a different, noisier statistic)
        n_full = max((len(lr.cell(arm, recipe, b)) for b in budgets), default=0)
        means = {b: float(np.mean([r["best_val_pos_mse"] for r in lr.cell(arm, recipe, b)]))
                 for b in budgets if len(lr.cell(arm, recipe, b)) >= n_full > 0}
        verdicts = {v.budget: v for v in ladder_verdicts(means)}
        settled = first_converged(list(verdicts.values()))
        if settled is not None:
            settled_at[arm] = (settled, verdicts[settled])
        elif len(means) >= 2 and verdicts[sorted(means)[-2]].verdict == "not converged":
            # climbing: its answer is this top complete rung or a higher one that beat it by the tolerance
            top = max(means)
            settled_at[arm] = (top, Verdict(top, "still improving", None))
        for b in budgets:
            rows = lr.cell(arm, recipe, b)
            if not rows:
                continue
            v = verdicts.get(b) or Verdict(b, "unknown", None)
            if v.verdict == "unknown" and settled is not None and b > settled:  # no rung above it will run
                v = Verdict(b, f"not climbed further (settled at {settled:g})", None)
            partial = [c for c in (b, 2 * b) if 0 < len(lr.cell(arm, recipe, c)) < n_full]
            if v.change is None:
                change = ""
            else:
                se = change_se([r["best_val_pos_mse"] for r in rows],
                               [r["best_val_pos_mse"] for r in lr.cell(arm, recipe, 2 * b)])
                change = f" ({v.change:+.1%}" + ("" if np.isnan(se) else f" ± {se:.1%}") + f" at {2 * b:g})"
            if partial:
                change += "".join(f" ({c:g}: {len(lr.cell(arm, recipe, c))} of {n_full} seeds)" for c in partial)
            ladder_rows.append([
                arm, recipe or "–", f"{b:g}", str(len(rows)), str(rows[0]["steps"]),
                _ms([r["best_val_pos_mse"] for r in rows]), v.verdict + change,
                _ms([r["test_pos_mse"] for r in rows]),
                *(_fmt(float(np.mean([r.get(f"test_pos_mse_{q}") for r in rows]))) for q in ("median", "p90", "p99", "max")),
                cpu_seconds(rows),
            ])
    md += ["", "## The ladder", "",
           "Mean ± std over seeds. Verdict: the change of the mean best validation MSE at twice the budget "
           "± its standard error from the seeds' spread (`stats.change_se`): *converged* within ±2%, *not "
           "converged* where twice the budget did better by 2% or more (the headline models and the last readout "
           "climb on, up to 8x the lowest rung), *no gain* where it did worse by 2% or more (the model over-fits "
           "with its recipe: its answer is this rung or below; the ladder does not climb it further). Where that "
           "error is as large as the 2% tolerance, the verdict is within the noise of the seeds (a *no gain* "
           "within the noise may also be a flat curve). Distribution columns: "
           "per-trajectory test MSE, averaged over seeds. CPU-s: training seconds of one run on one thread "
           "(validation excluded; wall-clock seconds, marked (wall), for runs trained on a GPU).", "",
           *_table(["model", "recipe", "TFLOP", "seeds", "steps", "best val MSE", "verdict", "test MSE",
                    "median", "p90", "p99", "max", "CPU-s"], ladder_rows)]

    ablation_arms = [a for a in lr.arms() if ablation_prefix in a]
    main_arms = [a for a in lr.arms() if a not in ablation_arms]
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(headline) for b in headline[i + 1:]]
        pairs += [(a, headline[0]) for a in main_arms if a not in headline]
    sections = [("Comparisons", list(pairs)),
                ("Ablation: one flag flipped", [(a, a.split(ablation_prefix)[0]) for a in ablation_arms])]
    for title, plist in sections:
        comp_rows, pvals = [], []
        for b in budgets:
            for a_arm, b_arm in plist:
                ra, rb = lr.cell(a_arm, chosen.get(a_arm), b), lr.cell(b_arm, chosen.get(b_arm), b)
                if len(ra) < 2 or len(rb) < 2:
                    continue
                c = compare(lr, ra, rb)
                comp_rows.append([f"{b:g}", a_arm, b_arm, *_stat_cells(c, len(ra), len(rb))])
                pvals.append(c["welch"])
        _fill_bh(comp_rows, pvals)
        if comp_rows:
            md += ["", f"## {title}", "",
                   "A / B: ratio of mean test MSEs (below 1: A is better); *hierarchical*: 95% bootstrap interval "
                   "resampling seeds (each model's own) and then trajectories (shared); *paired*: 95% interval "
                   "resampling trajectories of the seed-averaged errors only; Welch's p over the seeds' test MSEs, "
                   "Benjamini-Hochberg adjusted over this table; *A better on*: share of test trajectories.", "",
                   *_table(["TFLOP", "A", "B", "seeds", "A / B", "hierarchical 95%", "paired 95%", "Welch p",
                            "BH p", "A better on"], comp_rows)]
    md += _at_convergence(lr, chosen, settled_at, [(a, b) for a, b in pairs if a in main_arms and b in main_arms])
    md += ["", "Published test MSEs on this task (one frame in): " +
           ", ".join(f"{name} {v}" for name, v in PUBLISHED) + "."]
    text = "\n".join(md) + "\n"
    write_text_atomic(out.with_suffix(".md"), text)
    _plot(lr, chosen, out.with_suffix(".png"), headline)
    return text


def _stat_cells(c: Mapping[str, Any], n_a: int, n_b: int) -> list[Optional[str]]:
    """A :func:`compare`'s table cells: seeds, A / B, hierarchical and paired intervals, Welch p, BH p (``None``
    until :func:`_fill_bh` adjusts the table's p-values together), A better on."""
    h, p = c["hier"], c["paired"]
    return [f"{n_a} / {n_b}", f"{c['ratio']:.3f}", f"[{h.lo:.3f}, {h.hi:.3f}]" if h else "–",
            f"[{p.ratio_lo:.3f}, {p.ratio_hi:.3f}]" if p else "–",
            "–" if c["welch"] is None else f"{c['welch']:.3g}", None, f"{100 * p.frac_a_better:.0f}%" if p else "–"]


def _fill_bh(rows: list[list[Optional[str]]], pvals: Sequence[Optional[float]]) -> None:
    """Each row's BH p cell (the one before last, from :func:`_stat_cells`): its Welch p adjusted over the table."""
    for row, adj in zip(rows, benjamini_hochberg(pvals)):
        row[-2] = "–" if adj is None else f"{adj:.3g}"


def _at_convergence(lr: LadderRows, chosen: Mapping[str, Optional[str]],
                    settled_at: Mapping[str, tuple[float, Verdict]], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The answer: each model at its first settled rung (converged, or no gain from twice the budget), A / B."""
    rows, pvals = [], []
    for a_arm, b_arm in pairs:
        if a_arm not in settled_at or b_arm not in settled_at:
            continue
        (ba, va), (bb, vb) = settled_at[a_arm], settled_at[b_arm]
        ra, rb = lr.cell(a_arm, chosen.get(a_arm), ba), lr.cell(b_arm, chosen.get(b_arm), bb)
        c = compare(lr, ra, rb, one_budget_each=True)
        rows.append([a_arm, f"{ba:g} ({va.verdict})", b_arm, f"{bb:g} ({vb.verdict})", *_stat_cells(c, len(ra), len(rb))])
        pvals.append(c["welch"])
    _fill_bh(rows, pvals)
    waiting = [arm for pair in pairs for arm in pair if arm not in settled_at]
    note = (f" Not judged yet (a rung incomplete): {', '.join(dict.fromkeys(waiting))}." if waiting else "")
    if not rows:
        return ["", "## At convergence", "", "Each model at its first settled rung: none of the compared pairs has "
                "both models settled yet." + note]
    return ["", "## At convergence", "",
            "The study's answer: each model at its first settled rung (the lowest budget from which twice the "
            "budget did not improve the mean best validation MSE by 2%: *converged*, or *no gain*), so each "
            "side may have its own budget (TFLOP column). A model *still improving* is shown at its top complete "
            "rung: its answer will be there or at a higher rung that beat it by 2% or more in validation, so "
            "its row is provisional and, for that model, conservative. Columns as in the comparisons." + note, "",
            *_table(["A", "A at TFLOP", "B", "B at TFLOP", "seeds", "A / B", "hierarchical 95%", "paired 95%",
                     "Welch p", "BH p", "A better on"], rows)]


def _plot(lr: LadderRows, chosen: Mapping[str, Optional[str]], path: Path, headline: Sequence[str]) -> None:
    """Best validation MSE against the budget (every arm), and the headline's validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(lr.arms())}
    for arm in lr.arms():
        pts = sorted((b, [r["best_val_pos_mse"] for r in rows]) for (a, rec, b), rows in lr.cells.items()
                     if a == arm and rec == chosen.get(arm))
        if not pts:
            continue
        xs = [b for b, _ in pts]
        left.errorbar(xs, [np.mean(v) for _, v in pts], yerr=[np.std(v) for _, v in pts], marker="o", capsize=3,
                      label=arm, color=colours[arm])
    for arm in headline:
        cells = [(b, rows) for (a, rec, b), rows in lr.cells.items() if a == arm and rec == chosen.get(arm)]
        if not cells:
            continue
        top, rows = max(cells, key=lambda c: c[0])
        for i, r in enumerate(rows):
            right.plot([c["tflop"] for c in r["curve"]], [c["val_pos_mse"] for c in r["curve"]], color=colours[arm],
                       alpha=0.6, label=f"{arm} ({top:g} TFLOP)" if i == 0 else None)
    for ax in (left, right):
        ax.set_xscale("log", base=2) if ax is left else None
        ax.set_yscale("log")
        ax.set_xlabel("training TFLOP")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    left.set_ylabel("best validation position MSE (mean ± std over seeds)")
    right.set_ylabel("validation position MSE")
    left.set_title("the ladder")
    right.set_title("validation curves at each headline model's top rung")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
