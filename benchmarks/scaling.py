"""Scaling in the number of bodies: training-step time and activation memory of SET and EGNN against N,
on the complete graph and on the k-nearest-neighbour graph (the SET paper's proposed experiment).

Every case is the library's own training step (``speed.Stepper``: the CLI-built LightningModule, its
loss, backward and Adam step) on one batch of charged N-body systems, built from ``conf/<model>.yaml``
plus ``--model.net.graph`` / ``--model.net.k`` and the shape overrides below. For every N the cases are
warmed up and then timed round-robin (``speed.time_group``), so complete and k-NN are measured side by
side; the time is the median CPU time of the process per step (one torch thread), which a busy machine
disturbs less than wall-clock time. Memory is the activation memory: the bytes of the distinct tensors
saved for backward in one forward pass (``speed.activation_mib``), the part of the peak that grows with
N. The parameter count is checked to be the same for every N and graph.

    python benchmarks/scaling.py            # N = 5, 10, 20, 30, 100 (~5 min on one core)
    python benchmarks/scaling.py --quick    # N = 5, 10 (seconds)

Writes its block of ``results/scaling.md`` and ``results/scaling.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from results_md import write_generated  # benchmarks/results_md.py (run this file as a script)
from step_harness import Case, time_group

REPO = Path(__file__).resolve().parents[1]
#: model -> its shape: (history L, batch B); SET as configured (M = 2 blocks of 2 EGCLs, width 64)
SHAPES = {"set": (5, 4), "egnn": (1, 4)}
K_NEIGHBOURS = 6


def cases_at(n: int) -> list[Case]:
    """SET and EGNN at ``n`` bodies, on the complete graph and on the k-NN graph (``k = min(6, N - 1)``)."""
    k = min(K_NEIGHBOURS, n - 1)
    out = []
    for name, (ell, batch) in SHAPES.items():
        shape = [f"--data.n_particles={n}", f"--data.history={ell}", f"--data.batch_size={batch}"]
        out.append(Case(name, shape, "{model} complete"))
        out.append(Case(name, [*shape, "--model.net.graph=knn", f"--model.net.k={k}"], f"{{model}} kNN k={k}"))
    return out


def table(rows: list[Case]) -> str:
    lines = ["| model | graph | N | edges per frame | params | CPU ms / step | ms / sample | activation MiB | "
             "time vs complete | memory vs complete |", "|---|---|---|---|---|---|---|---|---|---|"]
    complete = {(c.name, c.n): c for c in rows if "complete" in c.label}
    for c in rows:
        ref = complete[(c.name, c.n)].result
        k = c.n - 1 if "complete" in c.label else min(K_NEIGHBOURS, c.n - 1)
        r = c.result
        lines.append(f"| {c.label.split()[0]} | {' '.join(c.label.split()[1:])} | {c.n} | {c.n * k} | {r['params']} | "
                     f"{r['cpu_ms']:.1f} | {r['cpu_ms'] / c.batch:.2f} | {r['act_mib']:.1f} | "
                     f"{r['cpu_ms'] / ref['cpu_ms']:.2f} | {r['act_mib'] / ref['act_mib']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[Case], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(c.label.split(" k=")[0] for c in rows):
        sel = [c for c in rows if c.label.split(" k=")[0] == label]
        ns = [c.n for c in sel]
        axes[0].plot(ns, [c.result["cpu_ms"] / c.batch for c in sel], "o-", label=label)
        axes[1].plot(ns, [c.result["act_mib"] / c.batch for c in sel], "o-", label=label)
    for ax, ylabel in zip(axes, ("CPU ms per sample (training step)", "activation MiB per sample")):
        ax.set(xscale="log", yscale="log", xlabel="N bodies", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 5, 10 only")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="the N values (default 5 10 20 30 100)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=str(REPO / "results" / "scaling.md"))
    opts = parser.parse_args()
    torch.set_num_threads(1)
    ns = opts.n or ([5, 10] if opts.quick else [5, 10, 20, 30, 100])
    rows: list[Case] = []
    for n in ns:
        group = cases_at(n)
        time_group(group, torch.device("cpu"), opts.repeats, budget_s=20.0, log=print)
        rows += group
    params = {c.name: {r.result["params"] for r in rows if r.name == c.name} for c in rows}
    if any(len(p) != 1 for p in params.values()):
        sys.exit(f"error: the parameter count depends on N or the graph: {params}")
    out = Path(opts.output)
    plot(rows, out.with_suffix(".png"))
    header = (f"`python benchmarks/scaling.py{' --quick' if opts.quick else ''}`: torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}, 1 thread. SET as configured (M = 2 blocks of 2 "
              f"EGCLs + ETAL, width 64) with L = {SHAPES['set'][0]} frames, B = {SHAPES['set'][1]}; EGNN (4 layers, "
              f"width 64), B = {SHAPES['egnn'][1]}. kNN: k = min({K_NEIGHBOURS}, N - 1) nearest bodies per frame. "
              "Parameters are the same at every N and for both graphs (checked). Plot: `scaling.png`.")
    text = header + "\n\n" + table(rows)
    print(text)
    write_generated(out, "scaling.py", text)


if __name__ == "__main__":
    main()
