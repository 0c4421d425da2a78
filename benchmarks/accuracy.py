"""Accuracy on the standard charged N-body task, next to the published numbers.

Trains each model with its conf/<model>.yaml on conf/data/nbody5.yaml (N=5, frame 30 -> 40, 2000
val / 2000 test trajectories) at the budget given here, tests the best-validation checkpoint, and prints a table of
test position MSE against the published figures. The runs go through the sweep runner (resumable:
rerunning the same command skips finished runs), under runs/benchmarks/<budget>/.

    python benchmarks/accuracy.py --epochs 200 --model-epochs set_l10=25 set_l10_pos=25 linear=30 --threads 1 --parallel 2   # README
    python benchmarks/accuracy.py --epochs 1000 --accelerator gpu         # the full budget, on a GPU

The table is printed and written to results/accuracy.md (or --output).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from results_md import write_generated  # benchmarks/results_md.py (run this file as a script)

from set_lightning.experiments.spec import spec_from_mapping
from set_lightning.experiments.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
#: every run's data: the N = 5 benchmark split (the model files own their history)
DATA = "conf/data/nbody5.yaml"

# Published test MSE on this task with 3000 training trajectories (EGNN, SEGNN, CGENN papers).
PUBLISHED = {
    "Linear": 0.0819,
    "GNN": 0.0107,
    "Radial Field": 0.0104,
    "EGNN": 0.0071,
    "SEGNN": 0.0043,
    "CGENN": 0.0039,
    "Multivector Neurons": 0.0035,
}

VARIANTS = {
    "egnn": {"config": "conf/egnn.yaml", "label": "EGNN (L=1)", "published": "EGNN"},
    "set_l1": {"config": "conf/set.yaml", "data.history": 1, "label": "SET (L=1)"},
    "set_l10": {"config": "conf/set.yaml", "label": "SET (L=10)"},
    # the same models trained on EGNN's objective (position MSE only)
    "set_l1_pos": {"config": "conf/set.yaml", "data.history": 1, "model.vel_weight": 0.0,
                   "label": "SET (L=1), position loss"},
    "set_l10_pos": {"config": "conf/set.yaml", "model.vel_weight": 0.0, "label": "SET (L=10), position loss"},
    "linear": {"config": "conf/linear.yaml", "label": "Linear (L=1)", "published": "Linear"},
    "mlp": {"config": "conf/mlp.yaml", "label": "MLP (L=10)"},
    "lstm": {"config": "conf/lstm.yaml", "label": "LSTM (L=10)"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help="max epochs for every model (default 60)")
    parser.add_argument(
        "--model-epochs", nargs="*", default=[], metavar="MODEL=EPOCHS",
        help="per-model epochs overriding --epochs, e.g. set_l10=40",
    )
    parser.add_argument("--n-train", type=int, default=3000, help="training trajectories (default 3000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--accelerator", default="cpu", help="trainer.accelerator (default cpu)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default cores // parallel)")
    parser.add_argument("--output", default=str(REPO / "results" / "accuracy.md"))
    args = parser.parse_args()

    model_epochs = {}
    for item in args.model_epochs:
        key, _, value = item.partition("=")
        if key not in VARIANTS or not value.isdigit():
            parser.error(f"--model-epochs takes MODEL=EPOCHS with MODEL in {list(VARIANTS)}, got {item!r}")
        model_epochs[key] = int(value)
    # per-model epochs live in each run's arguments (a changed budget is refused, never reused)
    spec = {
        "name": f"accuracy_e{args.epochs}_n{args.n_train}_{args.accelerator}",
        "description": "accuracy benchmark (benchmarks/accuracy.py)",
        "base": [DATA],
        "overrides": {
            "trainer.max_epochs": args.epochs,
            "trainer.accelerator": args.accelerator,
            "trainer.enable_progress_bar": False,
            "data.n_train": args.n_train,
        },
        "seeds": args.seeds,
        "reference": args.models[0],
        "variants": {
            m: {
                **{k: v for k, v in VARIANTS[m].items() if k not in ("label", "published")},
                **({"trainer.max_epochs": model_epochs[m]} if m in model_epochs else {}),
            }
            for m in args.models
        },
    }
    # the runs execute in the repository (its runs/ and data_cache/)
    rows = run_sweep(spec_from_mapping(spec, root=REPO), REPO / "runs" / "benchmarks", parallel=args.parallel,
                     report=False, threads=args.threads)

    lines = [
        f"# Accuracy: charged N-body, N=5, frame 30 -> 40, {args.n_train} training trajectories, "
        f"2000 val / 2000 test, {args.accelerator}, seeds {args.seeds}",
        "",
        "Command: `python benchmarks/accuracy.py --epochs {} --n-train {} --accelerator {} --seeds {}{}`".format(
            args.epochs, args.n_train, args.accelerator, " ".join(map(str, args.seeds)),
            (" --model-epochs " + " ".join(args.model_epochs)) if args.model_epochs else "",
        ),
        "",
        "| model | params | epochs (best) | best val MSE | test pos MSE | published (3000 train, full budget) | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in args.models:
        mine = [r for r in rows if r["variant"] == m]
        if not mine:
            continue
        test = [r["test_pos_mse"] for r in mine]
        val = [r["best_val_pos_mse"] for r in mine]
        std = f" ± {np.std(test, ddof=1):.4f}" if len(test) > 1 else ""
        pub_key = VARIANTS[m].get("published")
        pub = f"{PUBLISHED[pub_key]:.4f} ({pub_key})" if pub_key else "–"
        lines.append(
            f"| {VARIANTS[m]['label']} | {mine[0]['n_params']} | {mine[0]['epochs']} ({mine[0].get('best_epoch')}) | {np.mean(val):.4f} | "
            f"{np.mean(test):.4f}{std} | {pub} | {np.mean([r['train_time_s'] for r in mine]):.0f} |"
        )
    lines += ["", "Published, same task: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_generated(args.output, "benchmarks/accuracy.py", text)
    print(f"written to {args.output}")
    if any(not math.isfinite(r["test_pos_mse"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
