"""Time to accuracy: validation MSE against training compute, several seeds, equal budgets.

Each (model, seed) trains under a :class:`~set_lightning.callbacks.TimeBudget` of ``--budget-min``
minutes of training compute (validation excluded), with ``max_epochs`` unbounded and any cosine
schedule decaying to the budget; then the best-validation checkpoint is tested. Runs go one per
process (one torch thread each), ``--parallel`` at a time, under ``runs/time_to_accuracy/``, through
the local runner (:func:`set_lightning.experiments.local.run_local`; each run's output in its
``stdout.log``). A run folder ``runs/<study>/<model>/seed_<s>/`` keeps its checkpoints (``checkpoints/best-*.ckpt``,
the best validation) and ``trained_by.json`` (machine, code revision, budget and the seconds spent):
``benchmarks/ship_models.py --study <study>`` ships a model from it.

Every finished run appends its rows to ``results/time_to_accuracy.jsonl`` at once (one row per
validation, then one ``"final": true`` row) and its per-trajectory test errors to
``results/time_to_accuracy_per_traj.jsonl``; runs already there are skipped, so a study accumulates
across sessions (a run is its model label, seed and budget: the rows record no config identity).
``--report-only`` rebuilds ``results/time_to_accuracy.md`` and ``.png`` from those files alone.

    python benchmarks/time_to_accuracy.py --budget-min 10 --seeds 0 1 2 --parallel 2   # every model
    python benchmarks/time_to_accuracy.py --budget-min 10 --models EGNN "SET L=1"      # some of them
    python benchmarks/time_to_accuracy.py --report-only
    python benchmarks/time_to_accuracy.py --study springs5 --budget-min 5 --parallel 1  # another system

``--study`` picks the data and the models: ``nbody5`` (the charged benchmark, the default; results
``results/time_to_accuracy.*``), ``springs5`` (the springs, their spring graph an edge attribute;
``results/springs5.*``) or ``gravity100`` (SEGNN's 100-body gravity on a 6-nearest-neighbour graph;
``results/gravity100.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from set_lightning.experiments.ladder import slug
from set_lightning.experiments.local import run_local
from set_lightning.experiments.tta_report import (
    CHARGED_CLOSE_NOTE,
    TTA_THRESHOLDS,
    time_to_accuracy_report,
)
from set_lightning.files import append_jsonl, read_jsonl

REPO = Path(__file__).resolve().parents[1]

#: the data of every run: the N = 5 benchmark split (3000 / 2000 / 2000); the model files own the history
BENCHMARK_DATA = ["conf/data/nbody5.yaml"]
#: the readout pinned to the one conf/set.yaml had when these rows were made (the shipped config now reads
#: out at the last frame; a rerun of this superseded study must train what its rows recorded)
SET_RECIPE = {"config": "conf/set.yaml", "model.vel_weight": 0.0, "model.warmup_steps": 30,
              "model.net.init_args.readout": "mean"}
SMALL_SIZE = {"model.net.init_args.n_blocks": 1, "model.net.init_args.n_spatial_layers": 1}
ABLATED = {**SET_RECIPE, **SMALL_SIZE, "data.history": 5}  # the SET variant the ablation flips flags of
#: an exponential moving average of the weights (Lightning's callback; validated and tested with the average)
EMA = {"trainer.callbacks+": "lightning.pytorch.callbacks.EMAWeightAveraging", "trainer.callbacks.decay": 0.999}
#: label -> the run, as an ablation file's variant: a config file and dotted overrides (the benchmark split)
VARIANTS: dict[str, dict] = {
    "EGNN": {"config": "conf/egnn.yaml"},
    "SET L=1": {**SET_RECIPE, "data.history": 1},
    "SET L=1, EMA": {**SET_RECIPE, "data.history": 1, **EMA},
    "SET L=5 (M=1, K=1)": ABLATED,
    "SET L=10 (M=1, K=1)": {**SET_RECIPE, **SMALL_SIZE, "data.history": 10},
    "LSTM L=10": {"config": "conf/lstm.yaml"},
    "MLP L=10": {"config": "conf/mlp.yaml"},
    "EGNN, cosine": {"config": "conf/egnn.yaml", "model.scheduler": "cosine", "model.warmup_steps": 30},
    "no equivariance": {**ABLATED, "model.net.init_args.equivariant": False},
    "no spatial attention": {**ABLATED, "model.net.init_args.spatial_attention": False},
    "no temporal attention": {**ABLATED, "model.net.init_args.temporal_attention": False},
    "with adjacency": {**ABLATED, "model.net.init_args.adjacency": True},
}
#: the report's sections: (title, models, reference)
SECTIONS = [
    ("Does SET beat EGNN at equal training compute?",
     ["EGNN", "EGNN, cosine", "SET L=1", "SET L=1, EMA", "SET L=5 (M=1, K=1)", "SET L=10 (M=1, K=1)", "LSTM L=10",
      "MLP L=10"],
     "EGNN"),
    ("Which parts of SET matter? (one flag flipped)",
     ["SET L=5 (M=1, K=1)", "no equivariance", "no spatial attention", "no temporal attention", "with adjacency"],
     "SET L=5 (M=1, K=1)"),
]
PREAMBLE = (
    "Made by `python benchmarks/time_to_accuracy.py` from `time_to_accuracy.jsonl` (one row per validation, "
    "one final row per run) and `time_to_accuracy_per_traj.jsonl`. The N = 5 charged N-body benchmark split "
    "(3000 / 2000 / 2000 trajectories, frame 30 -> 40). Every run trains for the same budget of training "
    "compute: CPU seconds of its own process, one torch thread, validation excluded (on an idle core this is "
    "wall-clock time). The plot `time_to_accuracy.png` shows validation MSE against those seconds."
)


@dataclass(frozen=True)
class StudyDef:
    """One study: its data files and overrides, its models, the report's sections and thresholds."""

    data: list[str]
    models: dict[str, dict]
    sections: list
    out: str  # results/<out>.jsonl, .md, .png
    preamble: str
    thresholds: tuple[float, ...] = TTA_THRESHOLDS
    close_note: str = CHARGED_CLOSE_NOTE  # what the close-encounter columns mean for this system
    data_overrides: dict = field(default_factory=dict)


OTHER_CLOSE = "A trajectory is a *close encounter* when two bodies come nearer than 0.1 between the input and the target frame."
STUDIES = {
    "nbody5": StudyDef(BENCHMARK_DATA, VARIANTS, SECTIONS, "time_to_accuracy", PREAMBLE),
    "springs5": StudyDef(
        ["conf/data/springs5.yaml"],
        # the spring graph as an edge attribute on the complete graph (conf/graph/edge_attr.yaml)
        {"EGNN": {"config": ["conf/egnn.yaml", "conf/graph/edge_attr.yaml"]},
         "SET L=1": {**SET_RECIPE, "config": ["conf/set.yaml", "conf/graph/edge_attr.yaml"], "data.history": 1}},
        [("Springs (N = 5): SET against EGNN at equal training compute", ["EGNN", "SET L=1"], "EGNN")],
        "springs5",
        "Made by `python benchmarks/time_to_accuracy.py --study springs5`. The NRI / EGNN springs in 3-D, N = 5, "
        "3000 / 2000 / 2000 trajectories, frame 30 -> 40; both models on the complete graph with the spring "
        "graph as an edge attribute (`edge_dim: 1`), EGNN's recipe for EGNN, SET L=1 with the time-to-accuracy "
        "recipe. Budgets are CPU seconds of one thread, validation excluded.",
        thresholds=(1e-5, 1e-6, 1e-7), close_note=OTHER_CLOSE,
    ),
    "gravity100": StudyDef(
        ["conf/data/gravity100.yaml"],
        {"EGNN kNN k=6": {"config": ["conf/egnn.yaml", "conf/graph/knn6.yaml"]},
         "SET L=1 kNN k=6": {**SET_RECIPE, "config": ["conf/set.yaml", "conf/graph/knn6.yaml"], "data.history": 1}},
        [("Gravity (N = 100, 6-NN graph): SET against EGNN at equal training compute",
          ["EGNN kNN k=6", "SET L=1 kNN k=6"], "EGNN kNN k=6")],
        "gravity100",
        "Made by `python benchmarks/time_to_accuracy.py --study gravity100`. SEGNN's gravity benchmark (N = 100 "
        "unit masses, softening 0.1, frame 30 -> 40) on the 6-nearest-neighbour graph of each frame, with a "
        "training subset of 1000 trajectories and 500 for validation (a CPU budget sees fewer samples than "
        "that) and SEGNN's 2000 test trajectories. Published (SEGNN paper, Table 1, trained on 10000): "
        "SEGNN 0.265 position MSE. Budgets are CPU seconds of one thread, validation excluded.",
        thresholds=(1.0, 0.5, 0.265), close_note=OTHER_CLOSE,
        data_overrides={"data.n_train": 1000, "data.n_val": 500},
    ),
}
COMMON = {"trainer.max_epochs": -1, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
#: what the runner is told of every run's trainer: a budget of CPU seconds, so no run gets a GPU slice of
#: its own (the processes see the machine's devices as they are)
CPU_TRAINER = {"accelerator": "cpu", "devices": 1}


def _run_spec(study: StudyDef, label: str, variant: dict, seed: int, run_dir: Path):
    """The worker's spec of one (model, seed): the study's data, the model's variant and COMMON."""
    from set_lightning.experiments.spec import variant_run

    return variant_run(variant, slug(label), seed, run_dir, REPO, base=study.data,
                       overrides={**COMMON, **study.data_overrides})


def record_unit(label: str, variant: dict, seed: int, budget_s: float, clock: str, out: Path, run_dir: Path) -> str:
    """Append the rows of one finished (model, seed) from its run folder; returns a one-line status."""
    result = json.loads((run_dir / "result.json").read_text())
    config = {"variant": variant, "budget_s": budget_s, "clock": clock}
    rows = [{"model": label, "config": config, "seed": seed, "val_pos_mse": r.pop("pos_mse"), **r}
            for r in read_jsonl(run_dir / "curve.jsonl")]
    final = {"final": True, "model": label, "config": config, "seed": seed, "budget_s": budget_s,
             "n_params": result["n_params"], "epochs": result["epochs"], "best_epoch": result["best_epoch"],
             "best_val_pos_mse": result["best_val_pos_mse"], "test_pos_mse": result["test_pos_mse"],
             **{f"test_{k}": v for k, v in result["test"].items() if k != "pos_mse"}}
    per = json.loads((run_dir / "per_traj_test.json").read_text())
    append_jsonl(out.with_suffix(".jsonl"), [*rows, final])
    append_jsonl(out.parent / f"{out.name}_per_traj.jsonl", [{"model": label, "config": config, "seed": seed, **per}])
    return f"done {label} seed {seed}: test {final['test_pos_mse']:.5f} after {result['epochs']} epochs"


def run_units(study: StudyDef, todo: list, budget_s: float, clock: str, out: Path, runs: Path, parallel: int) -> None:
    """Train, test and record each ``(label, variant, seed)`` of ``todo`` with the local runner, ``parallel``
    at a time, printing a status line as each finishes (in the order they finish)."""
    units, specs = {}, []
    for label, variant, seed in todo:
        run_dir = runs / slug(label) / f"seed_{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted unit restarts (it is at most one budget long)
        spec = _run_spec(study, label, variant, seed, run_dir)
        units[spec.run_dir] = (label, variant, seed)
        specs.append(spec)

    def done(spec, result, failure: str) -> None:
        label, variant, seed = units[spec.run_dir]
        status = (record_unit(label, variant, seed, budget_s, clock, out, spec.run_dir) if result is not None
                  else f"FAILED {label} seed {seed}: {failure}")
        print(status, flush=True)

    def command(spec) -> list[str]:
        return [sys.executable, __file__, "--worker", str(spec.run_dir), "--budget-s", str(budget_s), "--clock", clock]

    run_local(specs, [CPU_TRAINER] * len(specs), parallel, threads=1, on_done=done, command=command)


#: what a run folder records of the machine, code revision and budget that trained it (read by ship_models.py)
TRAINED_BY_FILE = "trained_by.json"


def worker(run_dir: str, budget_s: float, clock: str) -> None:
    """One run in this process: fit under the budget (curve to curve.jsonl), then test; ``trained_by.json``
    records the machine and code revision, the budget and the training seconds it spent."""
    import torch
    from lightning.pytorch.callbacks import LambdaCallback

    from set_lightning.callbacks import TimeBudget
    from set_lightning.compute import machine_info
    from set_lightning.experiments import worker as run_worker
    from set_lightning.experiments.spec import RunSpec
    from set_lightning.files import write_text_atomic

    torch.set_num_threads(1)
    budget = TimeBudget(budget_s, clock=clock, curve_file=str(Path(run_dir) / "curve.jsonl"))
    machine = machine_info()
    spent: dict[str, float] = {}  # read when training ends: testing the best checkpoint restores its clock
    at_end = LambdaCallback(on_train_end=lambda trainer, module: spent.setdefault("train_s", budget.spent))
    run_worker.run(RunSpec.load(run_dir), callbacks=[budget, at_end])
    write_text_atomic(Path(run_dir) / TRAINED_BY_FILE, json.dumps(
        {"machine": machine, "revision": machine["revision"], "budget_s": budget_s, "clock": clock,
         "train_s": round(spent["train_s"], 3)}, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per run (default 10)")
    parser.add_argument("--clock", choices=("process", "wall"), default="process",
                        help="process: CPU seconds of the run's process (1 thread; fair on shared cores); wall")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="*", default=None, help="labels to run (default: all)")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--study", choices=sorted(STUDIES), default="nbody5", help="the data and models (default nbody5)")
    parser.add_argument("--out", help="results file stem (default results/<the study's name>)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts.worker, opts.budget_s, opts.clock)
        return

    study = STUDIES[opts.study]
    out = Path(opts.out).resolve() if opts.out else REPO / "results" / study.out
    if not opts.report_only:
        models = study.models
        unknown = set(opts.models or []) - set(models)
        if unknown:
            sys.exit(f"error: --models: unknown {sorted(unknown)}; allowed: {sorted(models)}")
        budget_s = opts.budget_min * 60
        out.parent.mkdir(parents=True, exist_ok=True)
        done = {(r["model"], r["seed"], r["budget_s"]) for r in read_jsonl(out.with_suffix(".jsonl")) if r.get("final")}
        todo = [(label, models[label], seed) for seed in opts.seeds for label in (opts.models or models)
                if (label, seed, budget_s) not in done]
        print(f"{len(todo)} runs to do ({len(done)} finished), budget {budget_s:.0f} s each, {opts.parallel} at a time")
        _prepare_data(study, todo)
        run_units(study, todo, budget_s, opts.clock, out, REPO / "runs" / out.name, opts.parallel)
    time_to_accuracy_report(out, study.sections, study.preamble, study.thresholds, study.close_note)


def _prepare_data(study: StudyDef, todo: list) -> None:
    """Simulate the benchmark splits once, before the runs start side by side."""
    if not todo:
        return
    from set_lightning.lightning_cli import make_cli

    os.chdir(REPO)
    for label, variant, seed in todo[:1]:
        args = _run_spec(study, label, variant, seed, REPO / "runs" / "prepare").cli_args()
        make_cli(args=[*args, "--trainer.logger=false"], run=False).datamodule.prepare_data()


if __name__ == "__main__":
    main()
