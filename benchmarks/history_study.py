"""Does history pay? SET with L = 10 frames against L = 1 and EGNN, at equal training FLOPs, on a budget ladder.

The N = 5 charged benchmark split (3000 / 2000 / 2000, frame 30 -> 40). Every run's budget is
training FLOPs (``--tflop`` T, then 2T, 4T, ...): the same number of steps on every machine and at every
speed of the code (:mod:`set_lightning.experiments.ladder`). A configuration is converged at a rung
when doubling the budget changes its mean best validation MSE by less than 2%.

Stages, in the order they run (a stage that needs another one's answer waits for it, and runs as soon as it
can):

1. ``recipe``: SET L=10 and SET L=1 (both the shipped size, 2 blocks x 2 EGCLs) and EGNN, each at 3 learning
   rates (cosine to the last step, 30 warm-up steps; EGNN also with its own constant rate), seed 0, T;
   while a model's best rate is the highest (lowest) tried, the search goes on at twice (half) that rate.
2. ``headline``: the three with their best recipe (lowest best validation MSE), seeds 0-4, T.
3. ``readout``: SET L=10 read out at the last frame, seeds 0-4, T.
4. ``2T``: stages 2 and 3 at 2T.
5. ``4T``: the models of stage 4 still improving at 2T (not converged at T), at 4T.
6. ``ablation``: the best history model (its better readout) with one flag flipped, 3 seeds, at its
   first settled rung (converged or no gain; 8T if it improves to the top); "no temporal attention" uses
   the last-frame readout. It runs here when its model has settled by 4T, else right after ``8T``.
7. ``8T``: the models still improving at 4T (not converged at 2T), at 8T (the top rung).
8. ``size``: SET L=10 and L=1 at 1 block x 1 EGCL, 3 seeds (as the ablation; ``--size-seeds 5`` for 5), T
   and 2T, then 4T and 8T while doubling pays, as the headline (last: the shipped-size comparison does not
   depend on it; it says whether history also pays at a third of the size). Its first rows gave gaps of
   about 45% against a seed spread of about 8%, which 3 seeds resolve; the seeds run in order, both rungs
   of each group of 3 before the next.

The ladder climbs a model only while doubling pays: rung ``4R`` runs where ``2R`` beat ``R`` by 2% or more
(``stats.ladder_verdicts``); a model that is converged, or does worse at ``2R`` (``no gain``: it over-fits
with its recipe), has its answer at ``R`` or below.

    python benchmarks/history_study.py --plan                 # what remains, in CPU-hours on this machine
    python benchmarks/history_study.py --parallel 2           # run it (stops and resumes at will)
    python benchmarks/history_study.py --parallel 4 --runs-per-gpu 4   # on one GPU: 4 runs share it
    python benchmarks/history_study.py --stages recipe headline
    python benchmarks/history_study.py --report-only          # results/history.md and .png from the rows

Each finished run appends its row to ``results/history.jsonl`` at once (per-trajectory test errors to
``results/history_per_traj.jsonl``; FLOPs per step pinned in ``results/history_flops.json``); runs already
there (by identity: resolved config, budget, numerics fingerprint) are skipped. Commit those files
as rows arrive: a later session, on any machine, goes on from them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from set_lightning.errors import UserError
from set_lightning.experiments.ladder import Ladder, Unit, pending, this_machine
from set_lightning.experiments.ladder_report import current_cells
from set_lightning.experiments.local import check_gpu_sharing
from set_lightning.experiments.stats import first_converged, ladder_verdicts

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "history"
DATA = ["conf/data/nbody5.yaml"]
SEEDS = (0, 1, 2, 3, 4)
ABLATION_SEEDS = (0, 1, 2)
SIZE_SEEDS = 3  # seeds of the size arm (--size-seeds)

#: the shipped SET (conf/set.yaml) on the position loss; its readout pinned (a later change of the shipped
#: default must not change what these runs are: the identity is the resolved config, and this value is the
#: one conf/set.yaml had when the study started)
SHIPPED_SET = {"config": "conf/set.yaml", "model.vel_weight": 0.0, "model.warmup_steps": 30,
       "model.net.init_args.readout": "mean"}
SMALL_SIZE = {"model.net.init_args.n_blocks": 1, "model.net.init_args.n_spatial_layers": 1}
LAST = {"model.net.init_args.readout": "last"}
#: the models: label -> variant (config file and dotted overrides); recipes add to these
ARMS: dict[str, dict[str, Any]] = {
    "SET L=10": SHIPPED_SET,
    "SET L=1": {**SHIPPED_SET, "data.history": 1},
    "EGNN": {"config": "conf/egnn.yaml", "model.scheduler": "cosine", "model.warmup_steps": 30},
    "SET L=10, last readout": {**SHIPPED_SET, **LAST},
    "SET L=10 (1 block x 1 EGCL)": {**SHIPPED_SET, **SMALL_SIZE},
    "SET L=1 (1 block x 1 EGCL)": {**SHIPPED_SET, **SMALL_SIZE, "data.history": 1},
}
HEADLINE = ("SET L=10", "SET L=1", "EGNN")
SMALL_ARMS = ("SET L=10 (1 block x 1 EGCL)", "SET L=1 (1 block x 1 EGCL)")
LRS = (2.5e-4, 5e-4, 1e-3)
#: each headline model's recipe search: name -> overrides
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    arm: {f"lr={lr:g}": {"model.lr": lr} for lr in LRS} for arm in HEADLINE
}
#: the learning rates the search may extend to when the best rate is at an edge of those tried
LR_LIMITS = (3.125e-5, 1.6e-2)
RECIPES["EGNN"]["constant lr=0.0005"] = {"model.lr": 5e-4, "model.scheduler": "none", "model.warmup_steps": 0}
#: the arm whose chosen recipe another arm takes
RECIPE_OF = {"SET L=10, last readout": "SET L=10", "SET L=10 (1 block x 1 EGCL)": "SET L=10", "SET L=1 (1 block x 1 EGCL)": "SET L=1"}
#: the ablation: label -> overrides on the best history model
FLIPS = {
    "no equivariance": {"model.net.init_args.equivariant": False},
    "no spatial attention": {"model.net.init_args.spatial_attention": False},
    "no temporal attention": {"model.net.init_args.temporal_attention": False, **LAST},
    "with adjacency": {"model.net.init_args.adjacency": True},
}
#: the comparisons the report tables at every rung: (A, B), the ratio is A / B
PAIRS = [("SET L=10", "SET L=1"), ("SET L=10", "EGNN"), ("SET L=1", "EGNN"),
         ("SET L=10, last readout", "SET L=10"), ("SET L=10, last readout", "SET L=1"),
         ("SET L=10, last readout", "EGNN"),
         ("SET L=10 (1 block x 1 EGCL)", "SET L=10"), ("SET L=1 (1 block x 1 EGCL)", "SET L=1"),
         ("SET L=10 (1 block x 1 EGCL)", "SET L=1 (1 block x 1 EGCL)"),
         # the superseded study's comparison (a smaller history model against the shipped single-frame one),
         # here at equal compute
         ("SET L=10 (1 block x 1 EGCL)", "SET L=1")]
STAGES = ("recipe", "headline", "readout", "2T", "4T", "ablation", "8T", "size")
#: the ladder's top rung (a multiple of T)
TOP_RUNG = 8


class Study:
    """The stages above over one :class:`Ladder` with lowest rung ``t`` TFLOP."""

    def __init__(self, ladder: Ladder, t: float, size_seeds: int = SIZE_SEEDS) -> None:
        self.ladder, self.t, self.size_seeds = ladder, t, size_seeds

    def rows(self) -> list[dict[str, Any]]:
        """The rows the report reads (:func:`current_cells`): in each cell the current fingerprint's, one per seed
        (should a unit have been run twice, e.g. on two machines, it counts once)."""
        return [r for cell in current_cells(self.ladder.rows())[0].values() for r in cell]

    def _recipe_rows(self, family: str) -> dict[str, dict]:
        return {r["recipe"]: r for r in self.rows()
                if r["arm"] == family and r["seed"] == 0 and r["budget_tflop"] == self.t}

    def recipes(self, family: str) -> dict[str, dict[str, Any]]:
        """The recipe search of a headline model: :data:`RECIPES`, and while the best learning rate is at an
        edge of the rates tried, the next rate beyond it (x2 or /2, within :data:`LR_LIMITS`)."""
        out, rows = dict(RECIPES[family]), self._recipe_rows(family)
        while all(name in rows for name in out):
            lrs = {name: extra["model.lr"] for name, extra in out.items() if name.startswith("lr=")}
            best = min(out, key=lambda name: rows[name]["best_val_pos_mse"])
            if best not in lrs:
                break
            step = 2.0 if lrs[best] == max(lrs.values()) else 0.5 if lrs[best] == min(lrs.values()) else None
            nxt = lrs[best] * step if step else None
            if nxt is None or not LR_LIMITS[0] <= nxt <= LR_LIMITS[1]:
                break
            out[f"lr={nxt:g}"] = {"model.lr": nxt}
        return out

    def chosen_recipe(self, arm: str) -> Optional[str]:
        """The recipe of ``arm`` with the lowest best validation MSE at T, seed 0 (``None`` until all ran)."""
        family = RECIPE_OF.get(arm, arm)
        rows, recipes = self._recipe_rows(family), self.recipes(family)
        if any(name not in rows for name in recipes):
            return None
        return min(recipes, key=lambda name: rows[name]["best_val_pos_mse"])

    def unit(self, arm: str, seed: int, rung: float, recipe: Optional[str] = None,
             variant: Optional[dict] = None) -> Optional[Unit]:
        recipe = recipe or self.chosen_recipe(arm)
        if recipe is None:
            return None
        extra = self.recipes(RECIPE_OF.get(arm, arm))[recipe]
        return Unit(arm, recipe, {**(variant or ARMS[arm]), **extra}, seed, rung * self.t)

    def best_history_arm(self) -> Optional[str]:
        """SET L=10 with the readout whose mean best validation MSE at T over the 5 seeds is lower (chosen by
        validation, as every choice of the study: the test split only reports)."""
        means = {}
        for arm in ("SET L=10", "SET L=10, last readout"):
            recipe = self.chosen_recipe(arm)
            vals = [r["best_val_pos_mse"] for r in self.rows() if r["arm"] == arm
                    and r["budget_tflop"] == self.t and r["recipe"] == recipe]
            if len(vals) < len(SEEDS):
                return None
            means[arm] = sum(vals) / len(vals)
        return min(means, key=means.get)

    def full_rung_means(self, arm: str, n_seeds: int = len(SEEDS)) -> dict[float, float]:
        """``{budget: mean best validation MSE}`` of ``arm`` (its chosen recipe) at the rungs where all its
        ``n_seeds`` seeds ran."""
        recipe = self.chosen_recipe(arm)
        by_rung: dict[float, list[float]] = {}
        for r in self.rows():
            if r["arm"] == arm and r["recipe"] == recipe:
                by_rung.setdefault(r["budget_tflop"], []).append(r["best_val_pos_mse"])
        return {b: sum(v) / len(v) for b, v in by_rung.items() if len(v) >= n_seeds}

    def ablation_rung(self, arm: str) -> Optional[float]:
        """The first settled rung (converged or no gain; as a multiple of T) of ``arm``; if it is still improving
        at the ladder's top, that rung (:data:`TOP_RUNG`); ``None`` while its climb is under way."""
        full = self.full_rung_means(arm)
        conv = first_converged(ladder_verdicts(full))
        if conv is not None:
            return conv / self.t
        return TOP_RUNG if any(abs(b - TOP_RUNG * self.t) < 1e-9 for b in full) else None

    def units(self, stage: str) -> list[Optional[Unit]]:
        """The stage's units (``None`` for those waiting on an earlier stage's answer)."""
        readout_arms = (*HEADLINE, "SET L=10, last readout")
        if stage == "recipe":
            return [Unit(arm, name, {**ARMS[arm], **extra}, 0, self.t)
                    for arm in HEADLINE for name, extra in self.recipes(arm).items()]
        if stage == "headline":
            return [self.unit(arm, s, 1) for s in SEEDS for arm in HEADLINE]
        if stage == "readout":
            return [self.unit("SET L=10, last readout", s, 1) for s in SEEDS]
        if stage == "2T":
            return [self.unit(arm, s, 2) for s in SEEDS for arm in readout_arms]
        if stage in ("4T", "8T"):
            return self.climb(int(stage[0]), readout_arms)
        if stage == "size":
            # in groups of 3 seeds, both rungs of a group before the next: a session that ends early leaves a
            # complete answer over fewer seeds; then up the ladder, as the headline, while doubling pays
            seeds = range(self.size_seeds)
            return ([self.unit(arm, s, rung) for g in range(0, len(seeds), 3) for rung in (1, 2)
                     for s in seeds[g:g + 3] for arm in SMALL_ARMS]
                    + self.climb(4, SMALL_ARMS, seeds) + self.climb(8, SMALL_ARMS, seeds))
        if stage == "ablation":
            best = self.best_history_arm()
            rung = self.ablation_rung(best) if best else None
            if best is None or rung is None:
                return [None] * len(FLIPS) * len(ABLATION_SEEDS)
            recipe = self.chosen_recipe(best)
            extra = self.recipes(RECIPE_OF.get(best, best))[recipe]
            return [Unit(f"{best}: {label}", recipe, {**ARMS[best], **flip, **extra}, s, rung * self.t)
                    for label, flip in FLIPS.items() for s in ABLATION_SEEDS]
        raise ValueError(stage)

    def climb(self, rung: int, arms: tuple[str, ...], seeds: Sequence[int] = SEEDS) -> list[Optional[Unit]]:
        """The units of ``rung`` (a multiple of T: 4, 8, ...): every seed of each arm still improving at the rung
        below (its verdict at ``rung / 4`` is ``not converged``: ``rung / 2`` beat it by the tolerance or more);
        ``None`` (waiting) for an arm whose verdict there is unknown yet; nothing for an arm settled (converged
        or no gain) at or below ``rung / 4``."""
        below = rung // 4 * self.t
        out: list[Optional[Unit]] = []
        for arm in arms:
            verdicts = ladder_verdicts(self.full_rung_means(arm, len(seeds)))
            settled = first_converged(verdicts)
            verdict = next((v.verdict for v in verdicts if v.budget == below), "unknown")
            if settled is not None and settled <= below:
                continue
            out += ([self.unit(arm, s, rung) for s in seeds] if verdict == "not converged" else [None] * len(seeds))
        return out


def print_plan(study: Study, stages: list[str], arms: Optional[list[str]] = None) -> None:
    machine = this_machine()
    total = 0.0
    print(f"machine: {machine}")
    for stage in stages:
        units = [u for u in study.units(stage) if u is None or not arms or u.arm in arms]
        waiting = sum(u is None for u in units)
        todo = pending(study.ladder, [u for u in units if u is not None])
        hours = sum(study.ladder.estimate_s(p, machine) for p in todo) / 3600
        total += hours
        print(f"  {stage:9s} {len(todo):3d} runs to do ({hours:5.2f} CPU-h)" + (f", {waiting} waiting on another "
                                                                            "stage" if waiting else ""))
        for p in todo:
            print(f"      {p.unit.name}: {p.max_steps} steps ({p.tflop:.2f} TFLOP), "
                  f"~{study.ladder.estimate_s(p, machine) / 60:.0f} CPU-min")
    print(f"  total known: {total:.2f} CPU-h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflop", type=float, default=10.0, help="the lowest rung T in TFLOP (default 10)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each (default 2)")
    parser.add_argument("--runs-per-gpu", type=int, default=1, metavar="R",
                        help="on a GPU machine, R of the --parallel runs share each GPU (default 1: one run per "
                             "GPU); e.g. --parallel 4 --runs-per-gpu 4 on one GPU")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help="run only these models (labels as in the report), e.g. to give a second process or "
                             "machine its own share of a stage")
    parser.add_argument("--size-seeds", type=int, default=SIZE_SEEDS, metavar="S",
                        help=f"seeds of the size arm (default {SIZE_SEEDS})")
    parser.add_argument("--plan", action="store_true", help="print the remaining runs and CPU-hours, run nothing")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default=str(OUT), help="results stem (default results/history)")
    opts = parser.parse_args()
    out = Path(opts.out).resolve()
    ladder = Ladder(out, REPO, DATA, REPO / "runs" / out.name)
    if opts.size_seeds < 1:
        sys.exit(f"error: --size-seeds must be >= 1, got {opts.size_seeds}")
    study = Study(ladder, opts.tflop, opts.size_seeds)
    known = set(ARMS) | {f"{a}: {f}" for a in ARMS for f in FLIPS}
    if opts.arms and set(opts.arms) - known:
        sys.exit(f"error: --arms: unknown {sorted(set(opts.arms) - known)}; allowed: {sorted(ARMS)} (or "
                 "'<model>: <flag>' for the ablation)")
    if opts.parallel < 1:
        sys.exit(f"error: --parallel must be >= 1, got {opts.parallel}")
    try:  # before any stage runs (run_local checks it again per stage)
        check_gpu_sharing(opts.parallel, opts.runs_per_gpu, torch.cuda.device_count())
    except UserError as err:
        sys.exit(f"error: {err}")
    if opts.plan:
        print_plan(study, opts.stages, opts.arms)
        return
    if not opts.report_only:

        def run_stage(stage: str) -> int:
            """Run the stage's pending units; the number still waiting on another stage's answer."""
            tried: set[str] = set()
            while True:  # a stage can grow as it runs (the recipe search extends past a winning edge)
                units = [u for u in study.units(stage) if u is None or not opts.arms or u.arm in opts.arms]
                todo = pending(ladder, [u for u in units if u is not None])
                waiting = sum(u is None for u in units)
                print(f"stage {stage}: {len(todo)} runs to do" + (f", {waiting} waiting" if waiting else ""), flush=True)
                if not todo:
                    return waiting
                if {p.run_id for p in todo} <= tried:  # all of them ran and failed: not again in this process
                    print(f"stage {stage}: {len(todo)} runs failed (see FAILED above); leaving them", flush=True)
                    return waiting
                tried |= {p.run_id for p in todo}
                ladder.run_all(todo, opts.parallel, log=lambda s: print(s, flush=True), runs_per_gpu=opts.runs_per_gpu)

        waiting: dict[str, int] = {}  # stage -> its units waiting on another stage's answer
        for stage in opts.stages:
            waiting[stage] = run_stage(stage)
            # the waiting stages, in the study's order, until a pass changes nothing (the ablation of a model
            # that settled only at 8T runs right after 8T)
            while True:
                waiting = {w: n for w, n in waiting.items() if n}
                before = dict(waiting)
                for w in sorted(waiting, key=STAGES.index):
                    waiting[w] = run_stage(w)
                if waiting == before:
                    break
    from set_lightning.experiments.ladder_report import history_report

    history_report(out, t=opts.tflop, headline=HEADLINE, pairs=PAIRS, recipe_of=RECIPE_OF,
                   searching=[arm for arm in HEADLINE if study.chosen_recipe(arm) is None])


if __name__ == "__main__":
    sys.exit(main())
