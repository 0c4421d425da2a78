"""Training speed of every model: time per training step, samples/s, ratio to EGNN, activation memory.

One training step is the library's own: the LightningModule's training objective
(``NBodyLightningModule.losses``: ``pos_weight * MSE(x) + vel_weight * MSE(v)`` with the config's weights),
backward, and a step of its optimiser (``NBodyLightningModule.make_optimizer``: Adam with the config's
learning rate and weight decay). Every model is built by the CLI (``make_cli(args, run=False)``) from
``conf/<model>.yaml`` and ``conf/data/nbody5.yaml`` plus dotted overrides (history, N, batch), and
trains on one batch whose initial conditions come from ``sample_initial_conditions`` (simulated for
the L input frames and the target frame). For every sweep point all models are built, warmed up, then
timed round-robin (the repeats of different models are interleaved, so a busy machine slows them
alike); the tables give medians, and the ratio to EGNN is measured in the same loop.

    python benchmarks/speed.py                       # the tables (~5-10 min on 2 CPU cores), 1 thread
    python benchmarks/speed.py --quick               # smoke run (< 1 min)
    python benchmarks/speed.py --flops               # + achieved GFLOP/s of SET and EGNN vs the matmul peak
    python benchmarks/speed.py --breakdown           # + SET's and EGNN's step time by op: matrix products vs the rest
    python benchmarks/speed.py --bf16                # + bf16-mixed autocast step time vs fp32
    python benchmarks/speed.py --compile             # + each model eager vs model.compile (torch.compile) and its compile time
    python benchmarks/speed.py --shortcuts           # + SET's same-function shortcuts vs what they replace
    python benchmarks/speed.py --cores               # + 2 cores: 1 run x 2 threads, 2 runs x 1 thread, DDP
    python benchmarks/speed.py --profile             # + torch.profiler tables -> results/profile.md
    python benchmarks/speed.py --profile --baseline <git rev>   # + before/after against an older revision
    python benchmarks/speed.py --shipped <git rev>   # + the same, each revision with its own allocator setting
    python benchmarks/speed.py --skip-tables --cores # only a mode

Each part rewrites its own generated block of ``results/speed.md`` (``results/profile.md`` for
``--profile``); the analysis around the blocks is written by hand.

Tables:
  * as configured: each model with its ``conf/<model>.yaml`` and history length ``L`` (``data.history``),
    N=5, B=100; plus SET at L=1 (EGNN's exact task);
  * N sweep (5, 20, 30, 100) at L=10; L sweep (1, 5, 10, 20) at N=5 (all models at the same L; the MLP
    reads all L frames, its ``n_frames`` being ``data.history``).

Activation memory: bytes of the distinct tensors saved for backward during one forward pass
(``torch.autograd.graph.saved_tensors_hooks``; parameters excluded), the part of the peak memory that
grows with B, L and N. With CUDA available, ``torch.cuda.max_memory_allocated`` of one step on the
GPU is added.

Modes:
  * ``--flops``: matmul FLOPs of one forward + backward counted by ``torch.utils.flop_counter``, divided
    by the measured step time (achieved GFLOP/s), against the fp32 and bf16 peak of one large square
    matmul on 1 thread measured by the same run;
  * ``--breakdown``: every aten op of a few SET and EGNN steps timed on its own (a TorchDispatchMode):
    the matrix products against all other ops, the GFLOP/s inside the matrix products, the ops with the
    most time, and the bound on the speed-up without faster matrix products (step / matrix-product time);
  * ``--bf16``: the step with the forward and the loss under ``torch.autocast(bfloat16)`` (what
    ``trainer.precision=bf16-mixed`` does) against fp32, SET and EGNN as configured;
  * ``--shortcuts``: SET's same-function shortcuts, each timed against the computation it replaces: the
    last-frame shortcut of ``readout: last`` (with and without temporal attention) and EGCL's store-less edge
    path at N = 5, 10, 14, 20;
  * ``--cores``: SET as configured, using two cores three ways: one run with 2 torch threads; two
    1-thread runs side by side (total throughput); DDP over 2 gloo processes (a short Lightning fit with
    ``strategy=ddp, devices=2, accelerator=cpu``, timed per step).

Threads: on a machine whose cores are shared with other work, more than one intra-op thread with the
default OpenMP wait policy (threads spin at each barrier) can be many times slower than one thread;
``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) avoids most of it. The header records both.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
from results_md import write_generated  # benchmarks/results_md.py (run this file as a script)
from revision_baseline import baseline_section, run_baseline, run_shipped  # benchmarks/revision_baseline.py
from step_harness import (  # benchmarks/step_harness.py: the timing harness
    MODEL_NAMES,
    REPO,
    Case,
    Stepper,
    alternated_processes,
    counted_gflop,
    fmt,
    matmul_peak_gflops,
    op_time_breakdown,
    time_group,
)
from two_cores import run_cores  # benchmarks/two_cores.py

from set_lightning.compute import code_revision, cpu_flags, cpu_model
from set_lightning.memory import release_freed_memory
from set_lightning.models import fused
from set_lightning.models.base import every_output_computed
from set_lightning.saved_tensors import saved_for_backward

SCRIPT = "benchmarks/speed.py"
FULL = dict(n_sweep=(5, 20, 30, 100), l_sweep=(1, 5, 10, 20), batch=100, big_n_batch={100: 10})
QUICK = dict(n_sweep=(5, 20), l_sweep=(1, 5), batch=20, big_n_batch={})

warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
for _name in ("lightning.pytorch", "lightning.fabric"):  # the CLI's banners ("Seed set to 0", devices)
    logging.getLogger(_name).setLevel(logging.WARNING)


def sweep_cases(ell: int, n: int, batch: int) -> list[Case]:
    """Every model at one shape."""
    shape = [f"--data.history={ell}", f"--data.n_particles={n}", f"--data.batch_size={batch}"]
    return [Case(name, shape) for name in MODEL_NAMES]


def configured_cases(batch: int | None) -> list[Case]:
    """Every model at its own conf history length (N=5), plus SET at L=1."""
    size = [f"--data.batch_size={batch}"] if batch else []
    cases = [Case(name, size, "{model} (conf, L={L})") for name in MODEL_NAMES]
    cases.insert(1, Case("set", [*size, "--data.history=1"], "{model} (conf, L={L})"))
    return cases


def table(cases: list[Case], with_cuda: bool) -> list[str]:
    head = ["model", "N", "L", "B", "step ms (wall, median)", "CPU ms (median)", "samples/s", "× EGNN",
            "activation memory (MiB)"] + (["CUDA peak (MiB)"] if with_cuda else []) + ["params", "repeats"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        r = c.result
        row = [c.label, str(c.n), str(c.ell), str(c.batch), fmt(r["ms"]), fmt(r["cpu_ms"]), fmt(r["samples_s"], 0),
               fmt(r["ratio"], 2), fmt(r["act_mib"])] + ([fmt(r["cuda_mib"])] if with_cuda else []) + \
              [f"{r['params']:,}", str(r["repeats"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def run_tables(args: argparse.Namespace, plan: dict, device: torch.device, log: Callable) -> list[str]:
    """The as-configured table and the N and L sweeps."""
    with_cuda = torch.cuda.is_available()
    batch = args.batch or plan["batch"]
    lines = [
        "One training step = the LightningModule's objective (pos_weight MSE(x) + vel_weight MSE(v)) + backward + "
        "its Adam step, on a simulated batch. Medians over `repeats` steps after two warm-up steps; models of one "
        "sweep point are timed round-robin and '× EGNN' is the ratio to EGNN's median in that same loop. "
        "'CPU ms' is process CPU time. 'activation memory' = distinct tensors saved for backward by one forward "
        "pass (parameters excluded).",
        "",
    ]
    log("as configured")
    cases = configured_cases(args.batch or (plan["batch"] if args.quick else None))
    time_group(cases, device, args.repeats, args.budget, log)
    lines += ["## As configured (conf/<model>.yaml and its data.history; conf/data/nbody5.yaml)", ""]
    lines += table(cases, with_cuda) + [""]
    all_n: list[Case] = []
    log("N sweep")
    for n in plan["n_sweep"]:
        group = sweep_cases(10, n, plan["big_n_batch"].get(n, batch) if args.batch is None else batch)
        time_group(group, device, args.repeats, args.budget, log)
        release_freed_memory()  # the steppers of this N are gone: give their peak back before the next N
        all_n += group
    lines += [f"## N sweep at L=10 (B={batch}" + "".join(
        f"; B={b} at N={n} to bound memory" for n, b in plan["big_n_batch"].items() if args.batch is None) + ")", ""]
    lines += table(all_n, with_cuda) + [""]
    all_l: list[Case] = []
    log("L sweep")
    for ell in plan["l_sweep"]:
        group = sweep_cases(ell, 5, batch)
        time_group(group, device, args.repeats, args.budget, log)
        all_l += group
    lines += [f"## L sweep at N=5 (B={batch}; the MLP reads the L frames)", ""] + table(all_l, with_cuda) + [""]
    return lines


# ----------------------------------------------------------------------------------------------------------
# achieved GFLOP/s, bf16, cores
# ----------------------------------------------------------------------------------------------------------

def timed_set_and_egnn(args: argparse.Namespace, device: torch.device, log: Callable
                       ) -> tuple[list[Case], list[Stepper], list[float]]:
    """SET and EGNN as configured: their steppers, counted GFLOP per step, and step times (timed round-robin)."""
    size_args = [f"--data.batch_size={args.batch}"] if args.batch else []
    cases = [Case("set", size_args, "{model} (conf, L={L})"), Case("egnn", size_args, "{model} (conf, L={L})")]
    steppers = [Stepper(c, device) for c in cases]
    gflop = [counted_gflop(st) for st in steppers]
    time_group(cases, device, args.repeats, args.budget, log, steppers)
    return cases, steppers, gflop


def run_flops(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """Achieved GFLOP/s of SET and EGNN (as configured) against the measured matmul peaks."""
    size = 512 if args.quick else 2048
    peaks = {"fp32": matmul_peak_gflops(torch.float32, size), "bf16": matmul_peak_gflops(torch.bfloat16, size)}
    log(f"matmul peak ({size}^2, 1 thread): fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
    cases, steppers, gflop = timed_set_and_egnn(args, device, log)
    lines = [
        "## Achieved GFLOP/s per training step (--flops)", "",
        f"Matmul peak measured by this run, one ({size} x {size}) @ ({size} x {size}) matmul on 1 thread, fastest "
        f"of 5: fp32 **{peaks['fp32']:.1f} GFLOP/s**, bf16 **{peaks['bf16']:.1f} GFLOP/s**. FLOPs: matmul-type "
        "ops of one forward + backward, counted by torch.utils.flop_counter.FlopCounterMode (elementwise ops "
        f"not counted); {torch.get_num_threads()} thread(s) for the steps.", "",
        "| model | N | L | B | counted GFLOP / step | step ms (median) | achieved GFLOP/s | % of fp32 peak | "
        "% of bf16 peak |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, gf in zip(cases, gflop):
        achieved = gf / (case.result["ms"] / 1e3)
        lines.append(f"| {case.label} | {case.n} | {case.ell} | {case.batch} | {gf:.2f} | {case.result['ms']:.1f} | "
                     f"{achieved:.1f} | {100 * achieved / peaks['fp32']:.0f}% | {100 * achieved / peaks['bf16']:.0f}% |")
    return lines + [""]


def run_breakdown(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """Where a training step's time goes: matrix products vs everything else, op by op (SET and EGNN as
    configured), and the speed-up the step could get at most without faster matrix products."""
    size = 512 if args.quick else 2048
    peak = matmul_peak_gflops(torch.float32, size)
    cases, steppers, gflop = timed_set_and_egnn(args, device, log)
    steps = 2 if args.quick else 3
    timers = [op_time_breakdown(st, steps) for st in steppers]
    lines = [
        "## Where the step's time goes (--breakdown)", "",
        f"Every aten op of {steps} training steps (forward, backward, Adam) timed on its own "
        "(`step_harness.OpTimer`, a TorchDispatchMode; CPU ops are synchronous), per step. 'matrix products' = "
        "mm, addmm, bmm, mv and their in-place forms (their counted FLOPs as in `--flops`); 'other ops' = "
        "elementwise passes, reductions, softmax, dropout masks, copies. 'step ms' is the plain step (median, "
        "timed round-robin without the timer); the ops timed one by one add up to within a few percent of it "
        "(the timer runs Python between the ops), so the shares are of the timed total. 'bound' = timed total / matrix "
        "products: the most a step could gain without faster matrix products, if every other op took no time. "
        f"fp32 matmul peak of this run: {peak:.1f} GFLOP/s (one ({size} x {size}) @ ({size} x {size}), 1 thread).", "",
        "| model | N | L | B | step ms | timed ops ms | matrix products ms | GFLOP/s inside them (% of peak) | "
        "other ops ms | matrix share | bound |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, gf, timer in zip(cases, gflop, timers):
        mm, other = timer.matmul_ms / steps, timer.other_ms / steps
        inside = gf / (mm / 1e3)
        lines.append(f"| {case.label} | {case.n} | {case.ell} | {case.batch} | {case.result['ms']:.1f} | "
                     f"{mm + other:.1f} | {mm:.1f} | {inside:.1f} ({100 * inside / peak:.0f}%) | {other:.1f} | "
                     f"{100 * mm / (mm + other):.0f}% | {(mm + other) / mm:.2f}x |")
    for case, timer in zip(cases, timers):
        lines += ["", f"{case.label}: the ops with the most time per step (op, input shapes, ms, calls)", "",
                  "| class | op | input shapes | ms / step | calls / step |", "|---|---|---|---|---|"]
        for matmul in (True, False):
            for op, shapes, ms, calls in timer.top(6, matmul):
                lines.append(f"| {'matrix product' if matmul else 'other'} | {op} | "
                             f"{' '.join(str(list(s)) for s in shapes)} | {ms / steps:.2f} | {calls // steps} |")
    return lines + [""]


def run_bf16(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """Step time with the forward and loss under bf16 autocast vs fp32 (SET and EGNN as configured)."""
    size_args = [f"--data.batch_size={args.batch}"] if args.batch else []
    shapes = [("set", size_args), ("egnn", size_args), ("set", [*size_args, "--data.n_particles=20"])]
    cases = [Case(name, shape, "{model} (conf, L={L})", bf16=bf16) for name, shape in shapes for bf16 in (False, True)]
    for pair in (cases[:4], cases[4:]):  # N = 5 side by side, then N = 20
        time_group(pair, device, args.repeats, args.budget, log)
    lines = ["## bf16-mixed vs fp32 (--bf16)", "",
             "The same training step with the forward and the loss under `torch.autocast(bfloat16)` (as "
             "`--trainer.precision bf16-mixed`), timed round-robin with the fp32 step. CPU capability: "
             f"{torch.backends.cpu.get_cpu_capability()}.", "",
             "| model | N | L | B | fp32 step ms | bf16-mixed step ms | bf16 / fp32 | fp32 activation MiB | "
             "bf16-mixed activation MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for fp32, bf16 in zip(cases[::2], cases[1::2]):
        lines.append(f"| {fp32.label} | {fp32.n} | {fp32.ell} | {fp32.batch} | {fp32.result['ms']:,.1f} | "
                     f"{bf16.result['ms']:,.1f} | {bf16.result['ms'] / fp32.result['ms']:.2f} | "
                     f"{fp32.result['act_mib']:,.1f} | {bf16.result['act_mib']:,.1f} |")
    return lines + [""]


def run_checkpointing(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """SET's step time and activation memory with and without activation checkpointing, at N = 5 and 20."""
    b = args.batch or (20 if args.quick else 100)
    lines = ["## Activation checkpointing (--checkpointing)", "",
             "SET (conf, L=10) with `--model.net.init_args.activation_checkpointing true` (each EGCL, ETAL and "
             "feed-forward keeps only its inputs and runs again in the backward pass; the same numbers, bit for "
             "bit: tests/models/test_checkpointing.py) against the default, timed round-robin. Activation "
             "memory as in the tables (tensors saved for backward by one forward pass).", "",
             "| N | B | step ms | with checkpointing ms | time ratio | activation MiB | with checkpointing: kept + largest layer MiB | "
             "memory ratio |", "|---|---|---|---|---|---|---|---|"]
    for n in (5, 20):
        shape = [f"--data.n_particles={n}", f"--data.batch_size={b}"]
        cases = [Case("set", shape, "{model}"),
                 Case("set", [*shape, "--model.net.init_args.activation_checkpointing=true"], "{model} ckpt")]
        steppers = [Stepper(c, device) for c in cases]
        largest = largest_layer_mib(steppers[0])
        time_group(cases, device, args.repeats, args.budget, log, steppers)
        plain, ckpt = (c.result for c in cases)
        peak = ckpt["act_mib"] + largest
        lines.append(f"| {n} | {b} | {plain['ms']:,.1f} | {ckpt['ms']:,.1f} | {ckpt['ms'] / plain['ms']:.2f}x | "
                     f"{plain['act_mib']:,.1f} | {ckpt['act_mib']:,.1f} + {largest:,.1f} = {peak:,.1f} | "
                     f"{plain['act_mib'] / peak:.1f}x less |")
    return lines + ["", "With checkpointing the backward pass holds the kept inputs plus the insides of the one "
                    "layer it recomputes: kept + largest layer (that layer's saved tensors without checkpointing).",
                    ""]


def run_compile(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """Each model's step eager and with ``model.compile`` (torch.compile), side by side, and the compile time."""
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True  # a first run's compile time, not a cache hit of an earlier one
    b = args.batch or (20 if args.quick else 100)
    lines = ["## torch.compile (--compile)", "",
             f"Each model as configured (N = 5, and SET L = 10 at N = 20; B = {b}) eager and with "
             "`--model.compile true` (the model through "
             "`torch.compile`, inductor; the same math: tests/app/test_compile.py), timed round-robin after two "
             "warm-up steps. 'first compiled step' is the first warm-up step: compiling the forward and backward "
             "graphs (inductor's caches off, as on a first run) plus one step; a training run pays it once per "
             "process, and again for evaluation (no-grad graphs).", "",
             "| model | N | L | B | eager step ms | compiled step ms | speed-up | first compiled step s | "
             "steps to repay it |", "|---|---|---|---|---|---|---|---|---|"]
    for name, extra in (("egnn", []), ("set", ["--data.history=1"]), ("set", []), ("set", ["--data.n_particles=20"])):
        shape = [f"--data.batch_size={b}", *extra]
        cases = [Case(name, shape, "{model} (L={L})"), Case(name, [*shape, "--model.compile=true"], "{model} compiled")]
        time_group(cases, device, args.repeats, args.budget, log)
        eager, compiled = (c.result for c in cases)
        gain_ms = eager["ms"] - compiled["ms"]
        repay = f"{compiled['first_s'] * 1e3 / gain_ms:,.0f}" if gain_ms > 0 else "never"
        lines.append(f"| {cases[0].label} | {cases[0].n} | {cases[0].ell} | {b} | {eager['ms']:,.1f} | "
                     f"{compiled['ms']:,.1f} | {eager['ms'] / compiled['ms']:.2f}x | {compiled['first_s']:,.0f} | "
                     f"{repay} |")
    return lines + [""]


class ContextStepper(Stepper):
    """A :class:`Stepper` whose forward passes run inside ``context(net)`` (a setting of the library that is
    read while the forward runs: which frames SET computes, which EGCL edge path it takes)."""

    def __init__(self, case: Case, device: torch.device, context: Callable[[torch.nn.Module], Any]) -> None:
        super().__init__(case, device)
        self.context = context

    def loss(self) -> torch.Tensor:
        with self.context(self.module.net):
            return super().loss()


def as_built(net: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The library's default: no setting changed."""
    return contextlib.nullcontext(net)


@contextlib.contextmanager
def edge_path(store_less: bool) -> Any:
    """EGCL's edge MLPs on the store-less fused path (``fused.edge_messages`` / ``linear_silu_linear``) for every
    edge tensor (``store_less``) or for none, whatever its size (``fused.STORE_LESS_ELEMENTS`` set for the block)."""
    saved = fused.STORE_LESS_ELEMENTS
    fused.STORE_LESS_ELEMENTS = 0 if store_less else 1 << 62
    try:
        yield
    finally:
        fused.STORE_LESS_ELEMENTS = saved


def max_prediction_gap(st: ContextStepper, other: ContextStepper) -> float:
    """Largest ``|x_pred|``, ``|v_pred|`` difference of the two steppers' models on ``st``'s batch, ``other`` given
    ``st``'s parameters, in eval mode (no dropout): the shortcut's predictions against the full computation's."""
    other.module.net.load_state_dict(st.module.net.state_dict())
    b = st.batch
    outs = []
    for s in (st, other):
        s.module.eval()
        with torch.no_grad(), s.context(s.module.net):
            outs.append(s.module.net(b["x"], b["v"], b["charges"]))
        s.module.train()
    return max((p - q).abs().max().item() for p, q in zip(*outs))


def run_shortcuts(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """``--shortcuts``: what SET's same-function shortcuts save, each against the computation it replaces,
    side by side: the last-frame shortcut (``readout: last``) with and without temporal attention, and EGCL's
    store-less edge path against the plain one at the sizes where it is switched on."""
    b = args.batch or (20 if args.quick else 100)
    lines = ["## Same-function shortcuts (--shortcuts)", "",
             f"SET (conf/set.yaml, `readout: last`, L=10, B={b}, fp32, {torch.get_num_threads()} thread(s)). "
             "Last frame: the model as built (the last block computes frame L alone; without temporal attention "
             "every block does) against the same model with every frame computed "
             "(`models.base.every_output_computed`, what the compute unit counts), timed round-robin. 'max |Δ "
             "pred|' is the largest difference of the two models' predictions on the batch (same parameters, "
             "eval mode): the shortcut computes the same function (tests/models/test_last_frame.py holds it to "
             "1e-10 in float64 with dropout and gradients).", "",
             "| arm | N | every frame ms | shortcut ms | speed-up | activation MiB every frame | shortcut | "
             "max \\|Δ pred\\| |", "|---|---|---|---|---|---|---|---|"]
    arms = (("temporal attention (conf)", []), ("no temporal attention", ["--model.net.init_args.temporal_attention=false"]))
    for arm, extra in arms:
        shape = ["--data.history=10", f"--data.batch_size={b}", *extra]
        cases = [Case("set", shape, "{model} every frame"), Case("set", shape, "{model} shortcut")]
        steppers = [ContextStepper(cases[0], device, every_output_computed), ContextStepper(cases[1], device, as_built)]
        gap = max_prediction_gap(steppers[1], steppers[0])
        time_group(cases, device, args.repeats, args.budget, log, steppers)
        full, short = (c.result for c in cases)
        lines.append(f"| {arm} | {cases[0].n} | {fmt(full['ms'])} | {fmt(short['ms'])} | "
                     f"{full['ms'] / short['ms']:.2f}x | {fmt(full['act_mib'])} | {fmt(short['act_mib'])} | {gap:.1e} |")
    lines += ["", "Store-less edge path: EGCL's message MLP (`fused.edge_messages`) and coordinate gate "
              "(`fused.linear_silu_linear`) keep no edge tensor for the backward and recompute it there; the "
              f"library takes that path from `fused.STORE_LESS_ELEMENTS` = {fused.STORE_LESS_ELEMENTS:,} edge-tensor "
              "elements on (`G N K H`, G = B L graphs). Here each N is run both ways, the path forced for the "
              "whole step, timed round-robin.", "",
              "| N | edge tensor elements | library's path | plain ms | store-less ms | time ratio (plain / "
              "store-less) | activation MiB plain | store-less | memory ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for n in ((5, 20) if args.quick else (5, 10, 14, 20)):
        shape = ["--data.history=10", f"--data.n_particles={n}", f"--data.batch_size={b}"]
        cases = [Case("set", shape, "{model} plain"), Case("set", shape, "{model} store-less")]
        steppers = [ContextStepper(c, device, lambda net, s=s: edge_path(s)) for c, s in zip(cases, (False, True))]
        time_group(cases, device, args.repeats, args.budget, log, steppers)
        release_freed_memory()
        plain, less = (c.result for c in cases)
        c = cases[0]  # conf/set.yaml's complete graph: K = N - 1 edges per node
        elements = c.batch * c.ell * n * (n - 1) * steppers[0].init_args["hidden"]
        taken = "store-less" if elements >= fused.STORE_LESS_ELEMENTS else "plain"
        lines.append(f"| {n} | {elements:,} | {taken} | {fmt(plain['ms'])} | {fmt(less['ms'])} | "
                     f"{plain['ms'] / less['ms']:.2f}x | {fmt(plain['act_mib'])} | {fmt(less['act_mib'])} | "
                     f"{plain['act_mib'] / less['act_mib']:.2f}x |")
    return lines + [""]


def largest_layer_mib(stepper: Stepper) -> float:
    """MiB saved for backward inside the largest single layer (EGCL, ETAL or feed-forward) of a SET."""
    layers = [m for block in stepper.module.net.blocks for m in (*block.egcls, block.etal, block.ff) if m is not None]
    try:
        with saved_for_backward(stepper.module, layers) as saved:
            loss = stepper.loss()
        loss.backward()
    finally:
        stepper.opt.zero_grad(set_to_none=True)
    return saved.largest_layer / 2**20


# ----------------------------------------------------------------------------------------------------------
# profiling
# ----------------------------------------------------------------------------------------------------------

def profile_table(stepper: Stepper, steps: int = 3) -> tuple[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        stepper.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            stepper.step()
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return text, prof


EDGE, NODE, SMALL = "pair/edge tensors", "node tensors", "small tensors"


def size_classes(prof: Any, steps: int, edge_elems: int, node_elems: int) -> dict[str, float]:
    """Self CPU ms per step of aten ops, by their largest input: at least an EGCL edge tensor
    (``edge_elems``), at least a node-feature tensor (``node_elems``), or smaller."""
    out: dict[str, float] = collections.defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith("aten::"):
            continue
        sizes = [math.prod(s) for s in e.input_shapes if isinstance(s, list) and s and all(isinstance(d, int) for d in s)]
        big = max(sizes, default=0)
        key = EDGE if big >= edge_elems else (NODE if big >= node_elems else SMALL)
        out[key] += e.self_cpu_time_total / 1e3 / steps
    return dict(out)


def run_profile(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    ell, b = 10, args.batch or (20 if args.quick else 100)
    shape = [f"--data.history={ell}", f"--data.batch_size={b}"]
    lines = [f"## Profile: one training step at N=5, L={ell}, B={b} ({torch.get_num_threads()} thread(s))", ""]
    profs, steppers = {}, {}
    for name in ("set", "egnn"):
        case = Case(name, shape)
        steppers[name] = st = Stepper(case, device)
        text, profs[name] = profile_table(st)
        log(f"\n{case.label}: top-15 ops by self CPU time (3 training steps)\n{text}")
        lines += [f"### {case.label}: top-15 ops by self CPU time (3 training steps)", "", "```", text.rstrip(),
                  "```", ""]

    set_case = steppers["set"]
    hidden = set_case.init_args["hidden"]
    n = 5
    edge_elems, node_elems = b * ell * n * (n - 1) * hidden, b * ell * n * hidden
    classes = size_classes(profs["set"], 3, edge_elems, node_elems)
    total = sum(classes.values())
    bounds = {EDGE: f">= {edge_elems:,} elements (B L N (N-1) H)", NODE: f">= {node_elems:,} (B L N H)",
              SMALL: "smaller"}
    lines += ["### SET: self CPU time of aten ops by the size of their largest input (per step, under the profiler)",
              "", "| class | largest input | ms / step | share |", "|---|---|---|---|"]
    lines += [f"| {k} | {bounds[k]} | {v:.0f} | {v / total:.0%} |"
              for k, v in sorted(classes.items(), key=lambda kv: -kv[1])]
    lines.append("")

    small = ["--model.net.init_args.n_blocks=1", "--model.net.init_args.n_spatial_layers=1"]
    variants = [
        ("EGNN (conf: 4 layers, L=1 input)", "egnn", [], ell),
        ("SET (conf: 2 blocks x 2 EGCL, L=10)", "set", [], ell),
        ("SET, n_spatial_layers=1 (2 blocks x 1 EGCL), L=10", "set", small[1:], ell),
        ("SET, n_blocks=1, n_spatial_layers=1, L=10", "set", small, ell),
        ("SET, n_blocks=1, n_spatial_layers=1, L=5", "set", small, 5),
        ("SET, hidden=32 (conf otherwise), L=10", "set", ["--model.net.init_args.hidden=32"], ell),
        ("SET (conf), L=1", "set", [], 1),
    ]
    cases = [Case(name, [*extra, f"--data.history={L}", f"--data.batch_size={b}"], label)
             for label, name, extra, L in variants]
    steps = [Stepper(c, device) for c in cases]
    flops = [counted_gflop(st) for st in steps]
    time_group(cases, device, args.repeats, args.budget, log, steps)
    lines += ["### Cost per training step vs EGNN (same run; matmul FLOPs from torch.utils.flop_counter)", "",
              "| model | graph-layers (frames x EGCLs) | matmul GFLOP / step (fwd+bwd) | FLOP ratio | step ms | time ratio |",
              "|---|---|---|---|---|---|"]
    for case, st, gf in zip(cases, steps, flops):
        kw = st.init_args
        layers = kw["n_layers"] if case.name == "egnn" else case.ell * kw["n_blocks"] * kw["n_spatial_layers"]
        lines.append(f"| {case.label} | {layers} | {gf:.2f} | {gf / flops[0]:.1f} | "
                     f"{case.result['ms']:.1f} | {case.result['ratio']:.1f} |")
    lines.append("")
    if args.baseline:
        lines += baseline_section(args, device, log)
    return lines


ALLOCATOR_SNIPPET = """
import resource, statistics, sys, time, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
import step_harness as speed
case = speed.Case("set", {shape!r})
st = speed.Stepper(case, torch.device("cpu"))
st.step(); st.step()
times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({steps}):
    t0 = time.process_time(); st.step(); times.append(time.process_time() - t0)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / {steps}
print(1e3 * statistics.median(times), faults)
"""


def run_allocator(args: argparse.Namespace, log: Callable) -> list[str]:
    """``--allocator``: SET's step with and without ``set_lightning.memory.keep_freed_memory`` (a process-wide
    setting, so measured in separate processes, alternated)."""
    b = args.batch or (20 if args.quick else 100)
    rounds = 1 if args.quick else 5
    lines = ["## Allocator: glibc keeps freed memory, on vs off (--allocator)", "",
             f"SET (conf, L=10, B={b}) training step, CPU time per step (median of each process's steps), in "
             f"separate 1-thread processes with `SET_LIGHTNING_KEEP_HEAP=1` (the default) and `=0`, alternated "
             f"{rounds} times; the table gives the median over the processes, and the minor page faults per step "
             "(a count, not disturbed by other processes).", "",
             "| N | step ms, keep heap off | step ms, keep heap on (default) | speed-up | minor page faults / step, "
             "off | on | steps per process |", "|---|---|---|---|---|---|---|"]
    for n, steps in ((5, 7), (20, 3), (30, 3)) if not args.quick else ((5, 3),):
        shape = ["--data.history=10", f"--data.n_particles={n}", f"--data.batch_size={b}"]
        code = ALLOCATOR_SNIPPET.format(bench=str(REPO / "benchmarks"), threads=1, shape=shape, steps=steps)
        runs = alternated_processes({keep: (code, {"SET_LIGHTNING_KEEP_HEAP": keep}) for keep in ("0", "1")}, rounds)
        (off, off_faults), (on, on_faults) = ([statistics.median(float(run[i]) for run in runs[keep]) for i in (0, 1)]
                                              for keep in ("0", "1"))
        log(f"  allocator N={n}: off {off:.1f} ms, on {on:.1f} ms")
        lines.append(f"| {n} | {off:.1f} | {on:.1f} | {off / on:.2f}x | {off_faults:,.0f} | {on_faults:,.0f} | {steps} |")
    return lines + [""]


# ----------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: B=20, N in (5, 20), L in (1, 5), < 1 min")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--output", default=str(REPO / "results" / "speed.md"))
    parser.add_argument("--skip-tables", "--skip-sweeps", action="store_true",
                        help="no speed tables: only the modes asked for")
    parser.add_argument("--flops", action="store_true", help="achieved GFLOP/s of SET and EGNN vs the matmul peak")
    parser.add_argument("--bf16", action="store_true", help="bf16-mixed autocast step time vs fp32")
    parser.add_argument("--breakdown", action="store_true",
                        help="where SET's and EGNN's step time goes: matrix products vs other ops, op by op")
    parser.add_argument("--checkpointing", action="store_true",
                        help="SET with activation checkpointing vs without: step time and activation memory")
    parser.add_argument("--cores", action="store_true",
                        help="SET on 2 cores: 1 run x 2 threads, 2 runs x 1 thread, DDP over 2 gloo processes")
    parser.add_argument("--cores-steps", type=int, default=None, help="timed steps of --cores (default 20; 3 quick)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile SET and EGNN at N=5, L=10 and write --profile-output")
    parser.add_argument("--profile-output", default=str(REPO / "results" / "profile.md"))
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="time SET and EGNN of this git revision against the working tree (N=5 and N=20, with "
                             "activation memory; with --profile also the profile's before/after at 1 and 2 threads)")
    parser.add_argument("--compile", action="store_true",
                        help="each model eager vs model.compile (torch.compile), side by side, and the compile time")
    parser.add_argument("--shortcuts", action="store_true",
                        help="SET's same-function shortcuts (last frame, store-less edge path) vs what they replace")
    parser.add_argument("--allocator", action="store_true",
                        help="SET's step with the glibc keep-freed-memory setting on vs off (separate processes)")
    parser.add_argument("--shipped", default=None, metavar="REV",
                        help="SET and EGNN of this git revision with glibc's malloc as it ran them against the working "
                             "tree with its allocator setting (separate processes, alternated; N=5 and N=20)")
    parser.add_argument("--baseline-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 100; 20 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model (default 7; 3 with --quick)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed steps per slow model and sweep point (default 45; 5 with --quick)")
    parser.add_argument("--device", default="cpu", help="device to time on (default cpu)")
    args = parser.parse_args()

    plan = QUICK if args.quick else FULL
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.budget = args.budget or (5.0 if args.quick else 45.0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.breakdown and device.type != "cpu":
        sys.exit(f"error: --breakdown times each op on the host and needs --device cpu, got --device {args.device} "
                 "(on a GPU an op's host time is its launch, not its run)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} " if "OMP_WAIT_POLICY" in os.environ else ""
    command = env + "python " + " ".join(shlex.quote(a) for a in [SCRIPT] + sys.argv[1:])
    with_cuda = torch.cuda.is_available()
    header = [
        f"Command: `{command}`  ",
        f"torch {torch.__version__}, device {device}, intra-op threads: {torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"CUDA available: {with_cuda}" + (f" ({torch.cuda.get_device_name()})" if with_cuda else "")
        + f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, os.cpu_count()={os.cpu_count()}  ",
        f"CPU: {cpu_model()} (flags: {', '.join(cpu_flags()) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}); "
        f"code: {code_revision(REPO) or 'not a git checkout'}",
        "",
    ]
    if args.threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log("note: more than one thread without OMP_WAIT_POLICY=PASSIVE can be very slow on a busy machine")
    parts: list[tuple[str, str, Callable[[], list[str]]]] = []
    if not args.skip_tables:
        parts.append(("tables", args.output, lambda: ["# Training speed per model (benchmarks/speed.py)", ""]
                      + header + run_tables(args, plan, device, log)))
    if args.flops:
        parts.append(("--flops", args.output, lambda: header + run_flops(args, device, log)))
    if args.breakdown:
        parts.append(("--breakdown", args.output, lambda: header + run_breakdown(args, device, log)))
    if args.bf16:
        parts.append(("--bf16", args.output, lambda: header + run_bf16(args, device, log)))
    if args.checkpointing:
        parts.append(("--checkpointing", args.output, lambda: header + run_checkpointing(args, device, log)))
    if args.compile:
        parts.append(("--compile", args.output, lambda: header + run_compile(args, device, log)))
    if args.shortcuts:
        parts.append(("--shortcuts", args.output, lambda: header + run_shortcuts(args, device, log)))
    if args.cores:
        parts.append(("--cores", args.output, lambda: header + run_cores(args, log)))
    if args.baseline:
        parts.append(("--baseline", args.output, lambda: header + run_baseline(args, device, log)))
    if args.allocator:
        parts.append(("--allocator", args.output, lambda: header + run_allocator(args, log)))
    if args.shipped:
        parts.append(("--shipped", args.output, lambda: header + run_shipped(args, log)))
    if args.profile:
        parts.append(("--profile", args.profile_output, lambda: ["# Profile of SET vs EGNN (benchmarks/speed.py)", ""]
                      + header + run_profile(args, device, log)))
    for part, output, run in parts:
        t_start, load = time.perf_counter(), os.getloadavg()[0]
        lines = run()
        load = max(load, os.getloadavg()[0])
        shared = (f"Load average (1 min) up to {load:.1f} on {os.cpu_count()} cores during this part: "
                  + ("the cores were shared with other processes (background runs), so absolute times are "
                     "inflated; ratios measured side by side in one loop are the robust numbers."
                     if load > 1.5 else "the cores were otherwise idle."))
        lines = lines + [shared, "", f"Time of this part: {time.perf_counter() - t_start:.0f} s."]
        text = "\n".join(lines) + "\n"
        print(text)
        write_generated(output, f"{SCRIPT} {part}", text)
        log(f"written to {output} ({part})")
        release_freed_memory()  # the heap is never trimmed: give this part's peak back before the next


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
