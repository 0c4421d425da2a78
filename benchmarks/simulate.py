"""Benchmark: batched torch simulators vs straightforward per-trajectory NumPy loops.

Times the generation of the charged N-body benchmark set (3000 + 2000 + 2000 trajectories of
5 particles, 5000 steps, as :class:`set_lightning.data.NBodyDataModule` generates it, without the
disk write) with the batched simulator, and the straightforward NRI loop (one trajectory at a
time) on a subset whose time per trajectory is extrapolated to the whole set. Also times N = 20
and N = 30. With ``--systems`` it also times the springs set (N = 5, the same 3000 + 2000 + 2000,
against NRI's SpringSim loop) and ``--gravity-count`` trajectories of SEGNN's gravity benchmark
(N = 100, against SEGNN's GravitySim loop; the reference loops are in ``benchmarks/reference_sims.py``).
Prints a markdown table and writes it to ``results/simulate.md``.

Usage::

    python benchmarks/simulate.py            # full benchmark (charged only)
    python benchmarks/simulate.py --systems charged springs gravity
    python benchmarks/simulate.py --quick    # smoke run (small counts)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reference_sims import gravity_simulate_one, nri_simulate, simulate_each, springs_simulate_one  # run as a script
from results_md import write_generated

from set_lightning.data.cache import SPECS, generate_trajectories, split_seed
from set_lightning.data.gravity import sample_gravity
from set_lightning.data.simulator import sample_initial_conditions, simulate_charged
from set_lightning.data.springs import sample_springs


@dataclass
class Row:
    """One line of the results table."""

    n_particles: int
    count: int
    threads: int
    batched_s: float
    loop_subset: int
    loop_per_traj_s: float
    agree_1e10: int  # subset trajectories whose frames match the loop to 1e-10
    system: str = "charged"

    @property
    def loop_extrapolated_s(self) -> float:
        return self.loop_per_traj_s * self.count

    @property
    def speedup(self) -> float:
        return self.loop_extrapolated_s / self.batched_s


#: Per system: the initial-condition sampler and the per-trajectory reference loop over a batch.
_SYSTEMS = {
    "charged": (sample_initial_conditions, nri_simulate),
    "springs": (sample_springs, lambda x0, v0, a, steps: simulate_each(springs_simulate_one, x0, v0, a, steps=steps)),
    "gravity": (sample_gravity, lambda x0, v0, a, steps: simulate_each(gravity_simulate_one, x0, v0, a, steps=steps)),
}


def _time_loop(
    system: str, x0: torch.Tensor, v0: torch.Tensor, attr: torch.Tensor, steps: int, batched_x: torch.Tensor
) -> tuple[float, int]:
    """Seconds per trajectory of the reference loop on ``x0 (b, N, 3)``; count agreeing with ``batched_x``."""
    loop = _SYSTEMS[system][1]
    start = time.perf_counter()
    xr, _ = loop(x0.numpy(), v0.numpy(), attr.numpy(), steps=steps)
    per_traj = (time.perf_counter() - start) / max(len(x0), 1)
    err = np.abs(batched_x.numpy() - xr).reshape(len(x0), -1).max(axis=1)
    return per_traj, int((err <= 1e-10).sum())


def bench_benchmark_set(
    counts: dict[str, int], steps: int, loop_subset: int, seed: int, threads: list[int], system: str = "charged",
    n: int = 5,
) -> list[Row]:
    """Generate the splits like the data module (batched), then the reference loop on a train subset."""
    specs = [SPECS[system](split=s, count=c, n_particles=n, steps=steps, seed=seed) for s, c in counts.items()]
    timings = {}
    for t in threads:
        start = time.perf_counter()
        data = [generate_trajectories(spec, num_threads=t) for spec in specs]
        timings[t] = time.perf_counter() - start
        print(f"{system} N={n}, {sum(counts.values())} trajectories, {t} thread(s): {timings[t]:.1f} s", flush=True)
    # the same initial conditions as the first `loop_subset` train trajectories
    g = torch.Generator().manual_seed(split_seed(seed, "train", system))
    x0, v0, attr = _SYSTEMS[system][0](specs[0].count, n, g)
    k = min(loop_subset, specs[0].count)
    per_traj, agree = _time_loop(system, x0[:k], v0[:k], attr[:k], steps, data[0].x[:k])
    return [Row(n, sum(counts.values()), t, timings[t], k, per_traj, agree, system) for t in threads]


def bench_n(n: int, count: int, steps: int, loop_subset: int, seed: int, threads: list[int]) -> list[Row]:
    """Batched simulation of ``count`` charged trajectories of ``n`` particles, loop on a subset."""
    x0, v0, q = sample_initial_conditions(count, n, torch.Generator().manual_seed(seed))
    timings = {}
    for t in threads:
        start = time.perf_counter()
        x, _ = simulate_charged(x0, v0, q, steps=steps, num_threads=t)
        timings[t] = time.perf_counter() - start
        print(f"N={n}, {count} trajectories, {t} thread(s): {timings[t]:.1f} s", flush=True)
    k = min(loop_subset, count)
    per_traj, agree = _time_loop("charged", x0[:k], v0[:k], q[:k], steps, x[:k])
    return [Row(n, count, t, timings[t], k, per_traj, agree) for t in threads]


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def render(rows: list[Row], args: argparse.Namespace) -> str:
    """Markdown report."""
    lines = [
        "# N-body simulation benchmark",
        "",
        f"`python benchmarks/simulate.py{' --quick' if args.quick else ''} --systems {' '.join(args.systems)}` — "
        f"{args.steps} integration steps (dt = 0.001, sample_freq = 100; 49 saved frames, 50 for gravity), float64.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, numpy {np.__version__}; load average at the end {_load()}.",
        "",
        "| system | N | trajectories | threads | batched torch (s) | batched ms / traj | loop: subset timed | "
        "loop ms / traj | loop, extrapolated (s) | speed-up | subset matching loop to 1e-10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"{r.count} (3000+2000+2000)" if r.n_particles == 5 and r.count == 7000 else str(r.count)
        lines.append(
            f"| {r.system} | {r.n_particles} | {label} | {r.threads} | {r.batched_s:.1f} "
            f"| {1e3 * r.batched_s / r.count:.2f} "
            f"| {r.loop_subset} "
            f"| {1e3 * r.loop_per_traj_s:.0f} | {r.loop_extrapolated_s:.0f} | {r.speedup:.0f}x "
            f"| {r.agree_1e10}/{r.loop_subset} |"
        )
    lines += [
        "",
        "Batched: `simulate_charged` over all trajectories at once (for N = 5 the three splits are generated "
        "as the data module does, sampling included, disk write excluded). NRI loop: the straightforward "
        "per-trajectory NumPy re-implementation of NRI's `ChargedParticlesSim` "
        "(`nri_simulate` in `benchmarks/reference_sims.py`), timed on the first *subset* trajectories and "
        "**extrapolated linearly per trajectory** to the full count.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1/10 of the counts, small loop subsets")
    parser.add_argument("--steps", type=int, default=5000, help="integration steps (default 5000)")
    parser.add_argument("--loop-subset", type=int, default=50, help="trajectories timed with the NRI loop, N=5")
    parser.add_argument("--loop-subset-large", type=int, default=5, help="trajectories timed with the loop, N=20, 30")
    parser.add_argument("--large-count", type=int, default=1000, help="trajectories for N=20 and N=30")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1],
        help="torch intra-op threads of the batched simulator; several values time each (default 1)",
    )
    parser.add_argument(
        "--systems", nargs="+", choices=("charged", "springs", "gravity"), default=["charged"],
        help="systems to time (default charged): springs times the N=5 benchmark set, gravity --gravity-count "
             "trajectories of N=100",
    )
    parser.add_argument("--gravity-count", type=int, default=100, help="gravity trajectories timed (N=100)")
    parser.add_argument("--loop-subset-gravity", type=int, default=2, help="gravity trajectories timed with the loop")
    parser.add_argument("--seed", type=int, default=0)
    default_out = Path(__file__).resolve().parents[1] / "results" / "simulate.md"
    parser.add_argument("--output", type=Path, default=default_out, help="markdown report (results/simulate.md)")
    args = parser.parse_args(argv)
    counts = {"train": 3000, "val": 2000, "test": 2000}
    large, loop5, loop_large = args.large_count, args.loop_subset, args.loop_subset_large
    if args.quick:
        counts = {k: v // 10 for k, v in counts.items()}
        large, loop5, loop_large = large // 10, min(loop5, 5), min(loop_large, 2)

    gravity_count, loop_gravity = args.gravity_count, args.loop_subset_gravity
    if args.quick:
        gravity_count, loop_gravity = max(1, gravity_count // 10), min(loop_gravity, 1)
    rows: list[Row] = []
    if "charged" in args.systems:
        rows += bench_benchmark_set(counts, args.steps, loop5, args.seed, args.threads)
        for n in (20, 30):
            rows += bench_n(n, large, args.steps, loop_large, args.seed, args.threads)
    if "springs" in args.systems:
        rows += bench_benchmark_set(counts, args.steps, loop5, args.seed, args.threads, system="springs")
    if "gravity" in args.systems:
        rows += bench_benchmark_set({"train": gravity_count}, args.steps, loop_gravity, args.seed, args.threads,
                                    system="gravity", n=100)
    report = render(rows, args)
    print(report)
    write_generated(args.output, "benchmarks/simulate.py", report)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
