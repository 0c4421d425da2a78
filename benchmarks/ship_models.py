"""Ship the study's trained models: weights-only files and a manifest in ``src/set_lightning/trained/``.

For each headline model of ``results/history.jsonl`` (SET L=10, SET L=1, EGNN; each with its chosen
recipe) at the given rung, the seed with the lowest best validation MSE is taken (selection by
validation, never by test). Its best-validation checkpoint (``runs/history/...``, so this runs on the
machine that trained it) is reduced to plain tensors and values (:func:`set_lightning.trained.strip_checkpoint`),
written as ``trained/<name>.ckpt``, and evaluated on the regenerated test split by the package's own
``test`` (one thread, CPU, fp32); the manifest records the metrics of that evaluation beside the
study row it came from.

    python benchmarks/ship_models.py --tflop 10                       # the models of the 10-TFLOP rung
    python benchmarks/ship_models.py --tflop 10 --arms "SET L=10"     # one of them

A model whose ladder has settled (converged or no gain from that rung on) ships as *final* from its settled
rung only (another --tflop is refused); a model still improving ships as *provisional*.

The other systems (``--study springs5`` / ``gravity100``): a model of ``benchmarks/time_to_accuracy.py``'s
study ships from its run folder, ``runs/<study>/<model>/seed_<s>/`` (trained there by
``time_to_accuracy.py --study <study> --models <model> --seeds <s>``): that run's best-validation
checkpoint (its ModelCheckpoint on ``val/pos_mse``; selection by validation, never by test), re-tested
on the regenerated test split and checked against the run's own test; the manifest row also records the
run's budget in CPU seconds on the machine that trained it (``trained_by.json``). Where regenerating
the test split takes too long for the test suite (gravity, N = 100), the row also holds the figure of a
smaller test split, ``--data.n_test`` of :data:`TEST_SLICE` (a split of its own, drawn from the same seed:
not a subset of the full one, since a split's draws depend on its size), which the tests reproduce.

    python benchmarks/ship_models.py --study springs5 --models EGNN "SET L=1" --seed 0
    python benchmarks/ship_models.py --study gravity100 --seed 0      # both of its models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from set_lightning.experiments.ladder import slug
from set_lightning.experiments.ladder_report import LadderRows, recipe_choice
from set_lightning.experiments.stats import first_converged, ladder_verdicts
from set_lightning.files import write_text_atomic
from set_lightning.trained import (
    MANIFEST_FILE,
    TRAINED_DIR,
    file_sha256,
    manifest,
    strip_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
#: study arm -> shipped name
NAMES = {"SET L=10": "set_l10_nbody5", "SET L=1": "set_l1_nbody5", "EGNN": "egnn_nbody5",
         "SET L=10, last readout": "set_l10_last_nbody5"}
#: time_to_accuracy.py's studies: (study, model label) -> shipped name
STUDY_NAMES = {("springs5", "EGNN"): "egnn_springs5", ("springs5", "SET L=1"): "set_l1_springs5",
               ("gravity100", "EGNN kNN k=6"): "egnn_gravity100", ("gravity100", "SET L=1 kNN k=6"): "set_l1_gravity100"}
#: study -> the size of the smaller test split the tests evaluate (the full one takes minutes to simulate)
TEST_SLICE = {"gravity100": 20}
METRICS = ("pos_mse", "pos_mse_median", "pos_mse_p90", "pos_mse_p99", "pos_mse_max")


def evaluate(path: Path, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """``test`` of a shipped file by the package's CLI (its own data settings, then ``extra`` arguments):
    the test metrics."""
    import tempfile

    from set_lightning.lightning_cli import make_cli

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ship_") as tmp:  # the run's config and metrics files go there
        cli = make_cli(["test", f"--ckpt_path={path}", "--trainer.logger=false", f"--trainer.default_root_dir={tmp}",
                        "--trainer.enable_progress_bar=false", *extra], run=True)
    return {k.split("/", 1)[1]: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}


def ship(rows: LadderRows, arm: str, recipe: str, tflop: float, runs: Path) -> dict:
    cell = rows.cell(arm, recipe, tflop)
    if not cell:
        raise SystemExit(f"error: no finished run of {arm!r} [{recipe}] at {tflop:g} TFLOP")
    row = min(cell, key=lambda r: r["best_val_pos_mse"])
    folder = runs / slug(arm) / slug(recipe) / f"{tflop:g}TF"
    # the unit's folder carries its identity (seed_<s>-<run id>); the first runs of the study had none
    run_dir = next(d for d in (folder / f"seed_{row['seed']}-{row['run_id'][:8]}", folder / f"seed_{row['seed']}")
                   if d.is_dir())
    (best,) = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    name = NAMES[arm]
    dest = TRAINED_DIR / f"{name}.ckpt"
    TRAINED_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(strip_checkpoint(ckpt), dest)
    torch.load(dest, map_location="cpu", weights_only=True)  # opens without unpickling code
    test = evaluate(dest)
    if abs(test["pos_mse"] / row["test_pos_mse"] - 1) > 1e-5:
        raise SystemExit(f"error: {name}: re-evaluated test MSE {test['pos_mse']} != the study's {row['test_pos_mse']}")
    hp = ckpt["hyper_parameters"]
    return {
        "file": dest.name, "sha256": file_sha256(dest), "model": arm, "recipe": recipe,
        "config": {"net": hp["net"], **{k: hp[k] for k in ("lr", "weight_decay", "pos_weight", "vel_weight",
                                                             "scheduler", "warmup_steps")}},
        "data": {k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if not k.startswith("_")
                 and k not in ("cache_dir", "num_workers")},
        "seed": row["seed"], "n_params": row["n_params"], "budget_tflop": tflop, "steps": row["steps"],
        "best_step": row["best_step"], "best_val_pos_mse": row["best_val_pos_mse"],
        "trained_by": {"revision": row.get("revision"), "machine": row["machine"], "train_cpu_s": row["train_cpu_s"],
                       "study_run_id": row["run_id"]},
        "test": {k: test[k] for k in ("pos_mse", "pos_mse_median", "pos_mse_p90", "pos_mse_p99", "pos_mse_max")},
        "evaluate": f"python -m set_lightning test --ckpt_path {name}",
    }


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path}: no {what} there (is {path.parent} a finished run of time_to_accuracy.py?)")
    return json.loads(path.read_text())


def ship_run(run_dir: Path, label: str, name: str, test_slice: int | None = None,
             trained_dir: Path = TRAINED_DIR) -> dict:
    """Ship the best-validation checkpoint of one finished ``time_to_accuracy.py`` run as ``trained_dir/<name>.ckpt``;
    returns its manifest row (the test metrics of the package's own ``test`` of the written file)."""
    # benchmarks/time_to_accuracy.py: the file its worker records the machine and budget in; run as a
    # script (benchmarks/ on the path) or imported from the repository root
    try:
        from time_to_accuracy import TRAINED_BY_FILE
    except ImportError:
        from benchmarks.time_to_accuracy import TRAINED_BY_FILE

    run_dir = Path(run_dir)
    result = _read_json(run_dir / "result.json", "result.json")
    spec = _read_json(run_dir / "run.json", "run.json")
    trained_by = _read_json(run_dir / TRAINED_BY_FILE, f"{TRAINED_BY_FILE} (runs before it was recorded cannot ship)")
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if len(best) != 1:
        raise SystemExit(f"error: {run_dir / 'checkpoints'}: expected one best-*.ckpt, found {len(best)}")
    ckpt = torch.load(best[0], map_location="cpu", weights_only=True)
    score = next((s.get("best_model_score") for k, s in ckpt.get("callbacks", {}).items()
                  if k.startswith("ModelCheckpoint")), None)
    if score is not None and abs(float(score) / result["best_val_pos_mse"] - 1) > 1e-6:
        raise SystemExit(f"error: {best[0]} is not the run's best-validation checkpoint ({float(score)} != "
                         f"{result['best_val_pos_mse']})")
    trained_dir.mkdir(parents=True, exist_ok=True)
    dest = trained_dir / f"{name}.ckpt"
    torch.save(strip_checkpoint(ckpt), dest)
    torch.load(dest, map_location="cpu", weights_only=True)  # opens without unpickling code
    test = evaluate(dest)
    if abs(test["pos_mse"] / result["test_pos_mse"] - 1) > 1e-5:
        raise SystemExit(f"error: {name}: re-evaluated test MSE {test['pos_mse']} != the run's {result['test_pos_mse']}")
    hp, data = ckpt["hyper_parameters"], ckpt["datamodule_hyper_parameters"]
    curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines() if line.strip()]
    if not curve:
        raise SystemExit(f"error: {run_dir / 'curve.jsonl'} holds no validation: not a finished time_to_accuracy.py run")
    machine = trained_by["machine"]
    row = {
        "file": dest.name, "sha256": file_sha256(dest), "model": label,
        "recipe": f"lr={hp['lr']:g}, scheduler {hp['scheduler']}",
        "config": {"net": hp["net"], **{k: hp[k] for k in ("lr", "weight_decay", "pos_weight", "vel_weight",
                                                             "scheduler", "warmup_steps")}},
        "run": {"configs": spec["configs"], "overrides": dict(spec["overrides"])},
        "data": {k: v for k, v in data.items() if not k.startswith("_") and k not in ("cache_dir", "num_workers")},
        "seed": spec["seed"], "n_params": result["n_params"],
        "budget_s": trained_by["budget_s"], "budget_clock": trained_by["clock"],
        "budget": (f"{trained_by['budget_s']:g} {'CPU' if trained_by['clock'] == 'process' else 'wall-clock'} seconds "
                   f"of training, {machine['threads']} thread, on {machine['cpu']} ({machine['cpu_capability']}), "
                   "validation excluded"),
        "steps": curve[-1]["step"], "epochs": result["epochs"],
        "best_step": ckpt["global_step"], "best_epoch": ckpt["epoch"], "best_val_pos_mse": result["best_val_pos_mse"],
        # the budget's clock at the last validation, which follows the step that spent the budget (the curve is
        # written as the run goes; a trained_by.json of 464bc7f read the clock after the test restored it)
        "trained_by": {"revision": trained_by["revision"], "machine": machine, "train_cpu_s": curve[-1]["train_s"],
                       "config_sha256": result.get("config_sha256")},
        "test": {k: test[k] for k in METRICS},
        "evaluate": f"python -m set_lightning test --ckpt_path {name}",
    }
    if test_slice:
        part = evaluate(dest, (f"--data.n_test={test_slice}",))
        row["test_slice"] = {"n_test": test_slice, **{k: part[k] for k in METRICS},
                             "evaluate": f"python -m set_lightning test --ckpt_path {name} --data.n_test={test_slice}",
                             "note": f"the test split drawn with n_test={test_slice} (same seed; its own trajectories, "
                                     "not a subset of the full split): the figure the test suite reproduces"}
    return row


def ship_study(study: str, labels: list[str], seed: int, runs: Path, note: str = "") -> None:
    """Ship ``labels`` of ``time_to_accuracy.py``'s ``study``, each from ``runs/<study>/<model>/seed_<seed>``."""
    entries = manifest()
    for label in labels:
        if (study, label) not in STUDY_NAMES:
            allowed = sorted(m for s, m in STUDY_NAMES if s == study)
            raise SystemExit(f"error: --models: {label!r} does not ship from {study}; allowed: {allowed}")
        name = STUDY_NAMES[(study, label)]
        row = ship_run(runs / study / slug(label) / f"seed_{seed}", label, name, TEST_SLICE.get(study))
        row["status"] = (f"seed {seed} of the {study} study's config and recipe, trained again to ship (its 3-seed "
                         "table's runs were not kept): one run, not the table's mean" + (f"; {note}" if note else ""))
        entries[name] = row
        print(f"{name}: test {row['test']['pos_mse']:.6g}"
              + (f"; n_test={TEST_SLICE[study]} split {row['test_slice']['pos_mse']:.6g}" if study in TEST_SLICE else ""),
              flush=True)
        write_text_atomic(MANIFEST_FILE, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def ship_status(study: Any, arm: str, family: str, tflop: float, seeds: int, recipe_tflop: float) -> str:
    """The manifest status of ``arm`` shipped from rung ``tflop`` (``seeds`` finished there), from the study's own
    verdicts: *final* at the rung where its ladder settled; *provisional* while it still improves. Exits with one
    ``error:`` line for a rung that is not the model's answer: another rung than the settled one, or a rung below
    the top complete one of a model still improving."""
    final = study.chosen_recipe(family) is not None
    means = study.full_rung_means(arm)
    verdicts = ladder_verdicts(means)
    settled = first_converged(verdicts)
    if settled is not None and abs(settled - tflop) > 1e-9:
        raise SystemExit(f"error: --tflop: {arm} settled at {settled:g} TFLOP (its ladder's verdicts), not "
                         f"{tflop:g}; ship it with --tflop {settled:g}")
    if settled is None and means and tflop < max(means):
        raise SystemExit(f"error: --tflop: {arm} is still improving and its top complete rung is {max(means):g} "
                         f"TFLOP, above {tflop:g}; ship it with --tflop {max(means):g}")
    if settled is not None and final and seeds >= 5:
        verdict = next(v for v in verdicts if v.budget == settled)
        return (f"final: the study's answer for this model, which settled at {settled:g} TFLOP "
                f"({verdict.verdict}: {100 * verdict.change:+.1f}% at {2 * settled:g}); the best-validation seed of "
                f"the {seeds}")
    return ((f"recipe final; the best-validation seed of the {seeds} finished at {tflop:g} TFLOP" if final
             else f"the best recipe so far of a search still running at {recipe_tflop:g} TFLOP")
            + "; provisional: replaced from the ladder's higher rungs as they finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflop", type=float, help="the rung whose models ship (the history study)")
    parser.add_argument("--arms", nargs="+", default=["SET L=10", "SET L=1", "EGNN"], choices=sorted(NAMES))
    parser.add_argument("--results", default=str(REPO / "results" / "history"))
    parser.add_argument("--recipe-tflop", type=float, default=10.0, help="the recipe search's rung (default 10)")
    parser.add_argument("--study", choices=sorted({s for s, _ in STUDY_NAMES}),
                        help="ship from time_to_accuracy.py's run folders of this study instead")
    parser.add_argument("--models", nargs="+", help="--study: the model labels (default: all that ship from it)")
    parser.add_argument("--seed", type=int, default=0, help="--study: the run's seed (default 0)")
    parser.add_argument("--runs", default=str(REPO / "runs"), help="--study: the folder of the study's run folders")
    parser.add_argument("--note", default="", help="--study: a remark appended to the rows' status")
    opts = parser.parse_args()
    if (opts.tflop is None) == (opts.study is None):
        raise SystemExit("error: give either --tflop (the history study's models) or --study (another system's)")
    if opts.study:
        ship_study(opts.study, opts.models or [m for s, m in STUDY_NAMES if s == opts.study], opts.seed, Path(opts.runs),
                   opts.note)
        return
    from history_study import (  # benchmarks/history_study.py: the study's recipe search
        DATA,
        RECIPE_OF,
        Study,
    )

    from set_lightning.experiments.ladder import Ladder

    results = Path(opts.results)
    rows = LadderRows(results)
    study = Study(Ladder(results, REPO, DATA, REPO / "runs" / results.name), opts.recipe_tflop)
    entries = manifest()
    statuses = {}  # every model's rung is checked before any file is written
    for arm in opts.arms:
        family = RECIPE_OF.get(arm, arm)
        recipe, _ = recipe_choice(rows, family, opts.recipe_tflop)
        statuses[arm] = (recipe, ship_status(study, arm, family, opts.tflop, len(rows.cell(arm, recipe, opts.tflop)),
                                             opts.recipe_tflop))
    for arm, (recipe, status) in statuses.items():
        entries[NAMES[arm]] = ship(rows, arm, recipe, opts.tflop, REPO / "runs" / results.name)
        entries[NAMES[arm]]["status"] = status
        print(f"{NAMES[arm]}: test {entries[NAMES[arm]]['test']['pos_mse']:.6g}", flush=True)
        write_text_atomic(MANIFEST_FILE, json.dumps(entries, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
