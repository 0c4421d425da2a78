"""What a training step costs besides the model: the optimiser step and the batch fetch, before and after.

For each of the study's arms (``conf/set.yaml`` at L=10 and L=1, ``conf/egnn.yaml``; ``conf/data/nbody5.yaml``,
B=100) it times, interleaved in one loop on one thread:

* the model's forward + backward (the LightningModule's objective, as ``speed.py`` does);
* Adam's step with torch's CPU default (a Python loop over the parameters, ``foreach=False``) and with
  ``NBodyLightningModule.make_optimizer`` (``foreach=True``; the same update bit for bit,
  tests/test_same_steps.py);
* a training batch fetched sample by sample and stacked by ``default_collate`` (the DataLoader's default)
  and by ``NBodyDataset.__getitems__`` (one indexing per tensor; the same batch).

and writes the medians and the step they add up to, before / after, to ``results/loop_cost.md``. The ratio
is of times measured side by side in one process; the absolute times belong to this machine only.

    OMP_NUM_THREADS=1 python benchmarks/loop_cost.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_generated  # noqa: E402
from step_harness import REPO, Case, quiet  # noqa: E402

from set_lightning.compute import machine_info  # noqa: E402
from set_lightning.lightning_cli import make_cli  # noqa: E402

ARMS = {"SET L=10": ("set", []), "SET L=1": ("set", ["--data.history=1"]), "EGNN": ("egnn", [])}


def pieces(name: str, overrides: list[str], batch: int) -> dict[str, callable]:
    """The timed pieces of one arm's training step, each a zero-argument callable."""
    torch.manual_seed(0)
    case = Case(name, [*overrides, f"--data.batch_size={batch}"])
    cli = quiet(lambda: make_cli(case.cli_args(), run=False))
    module, data = cli.model.train(), cli.datamodule
    data.setup("fit")
    dataset = data.datasets["train"]
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    indices = [order[i : i + batch].tolist() for i in range(0, len(dataset) - batch + 1, batch)]
    state = {"k": 0}

    def next_indices() -> list[int]:
        state["k"] = (state["k"] + 1) % len(indices)
        return indices[state["k"]]

    sample = dataset.__getitems__(indices[0])
    loop = torch.optim.Adam(module.parameters(), lr=1e-4, foreach=False)
    multi = module.make_optimizer()
    for group in multi.param_groups:
        group["lr"] = 1e-4

    def model() -> None:
        module.zero_grad(set_to_none=False)
        module.losses(sample)[0].backward()

    return {
        "model": model,
        "adam_loop": loop.step,
        "adam_foreach": multi.step,
        "fetch_samples": lambda: default_collate([dataset[i] for i in next_indices()]),
        "fetch_batch": lambda: dataset.__getitems__(next_indices()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15; 3 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 100; 20 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: B=20, 3 rounds")
    parser.add_argument("--output", default=str(REPO / "results" / "loop_cost.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = args.repeats if not args.quick else 3
    batch = args.batch or (20 if args.quick else 100)
    arms = {label: pieces(name, over, batch) for label, (name, over) in ARMS.items()}
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for arm in arms.values():  # warm-up
        for fn in arm.values():
            fn()
    for _ in range(repeats):
        for label, arm in arms.items():
            arm["model"]()  # the optimisers step on these gradients
            for piece, fn in arm.items():
                t0 = time.perf_counter()
                fn()
                times[label, piece].append(time.perf_counter() - t0)
    ms = {key: 1e3 * statistics.median(v) for key, v in times.items()}
    info = machine_info()
    lines = [
        "# The training step besides the model (benchmarks/loop_cost.py)", "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/loop_cost.py{' --quick' if args.quick else ''}`  ",
        f"CPU: {info['cpu']} (capability {info['cpu_capability']}, flags: {', '.join(info['cpu_flags'])}), "
        f"torch {info['torch']}, {info['threads']} thread, revision {info['revision']}; B={batch}, "
        f"medians of {repeats} interleaved rounds; load average at the end "
        f"{__import__('os').getloadavg()[0]:.1f} on {__import__('os').cpu_count()} cores.", "",
        "| arm | model fwd+bwd ms | Adam loop ms | Adam foreach ms | fetch per sample ms | fetch batched ms "
        "| step before ms | step after ms | before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in arms:
        m = {piece: ms[label, piece] for piece in arms[label]}
        before = m["model"] + m["adam_loop"] + m["fetch_samples"]
        after = m["model"] + m["adam_foreach"] + m["fetch_batch"]
        lines.append(f"| {label} | {m['model']:.1f} | {m['adam_loop']:.2f} | {m['adam_foreach']:.2f} | "
                     f"{m['fetch_samples']:.2f} | {m['fetch_batch']:.2f} | {before:.1f} | {after:.1f} | "
                     f"{before / after:.3f}x |")
        print(lines[-1], flush=True)
    write_generated(args.output, "benchmarks/loop_cost.py", "\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
