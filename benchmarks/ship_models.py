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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from set_lightning.experiments.ladder import slug
from set_lightning.experiments.ladder_report import LadderRows, recipe_choice
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


def evaluate(path: Path) -> dict[str, float]:
    """``test`` of a shipped file by the package's CLI (its own data settings): the test metrics."""
    from set_lightning.lightning_cli import make_cli

    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ship_") as tmp:  # the run's config and metrics files go there
        cli = make_cli(["test", f"--ckpt_path={path}", "--trainer.logger=false", f"--trainer.default_root_dir={tmp}",
                        "--trainer.enable_progress_bar=false"], run=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflop", type=float, required=True, help="the rung whose models ship")
    parser.add_argument("--arms", nargs="+", default=["SET L=10", "SET L=1", "EGNN"], choices=sorted(NAMES))
    parser.add_argument("--results", default=str(REPO / "results" / "history"))
    parser.add_argument("--recipe-tflop", type=float, default=10.0, help="the recipe search's rung (default 10)")
    parser.add_argument("--last-rung", action="store_true",
                        help="the rung is the one the study ends on (the manifest then calls the models final)")
    opts = parser.parse_args()
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
    for arm in opts.arms:
        family = RECIPE_OF.get(arm, arm)
        recipe, _ = recipe_choice(rows, family, opts.recipe_tflop)
        entries[NAMES[arm]] = ship(rows, arm, recipe, opts.tflop, REPO / "runs" / results.name)
        final = study.chosen_recipe(family) is not None
        seeds = len(rows.cell(arm, recipe, opts.tflop))
        entries[NAMES[arm]]["status"] = (
            (f"recipe final; the best-validation seed of the {seeds} finished at {opts.tflop:g} TFLOP" if final else
             f"provisional: the best recipe so far of a search still running at {opts.recipe_tflop:g} TFLOP")
            + ("" if opts.last_rung and seeds >= 5 and final else
               "; replaced when more seeds finish" if opts.last_rung else
               "; replaced from the ladder's higher rungs as they finish"))
        print(f"{NAMES[arm]}: test {entries[NAMES[arm]]['test']['pos_mse']:.6g}", flush=True)
        write_text_atomic(MANIFEST_FILE, json.dumps(entries, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
