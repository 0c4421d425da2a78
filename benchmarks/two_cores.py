"""``speed.py --cores``: SET on two cores three ways (one run with 2 threads, two 1-thread runs side by side,
DDP over 2 gloo processes). ``python benchmarks/two_cores.py --ddp-worker OUT -- ARGS`` is the DDP fit's
process (Lightning starts rank 1 with the same command line).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import Callback

from set_lightning.lightning_cli import make_cli

from step_harness import Case, Stepper, quiet  # benchmarks/step_harness.py (a sibling script)


def _cores_worker(case: Case, threads: int, steps: int, barrier: Any, results: Any) -> None:
    """One training process of ``--cores``: warm up, wait for the others, time ``steps`` steps."""
    torch.set_num_threads(threads)
    stepper = Stepper(case, torch.device("cpu"))
    for _ in range(2):
        stepper.step()
    barrier.wait()
    times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        s0 = time.perf_counter()
        stepper.step()
        times.append(time.perf_counter() - s0)
    results.put({"elapsed": time.perf_counter() - t0, "steps": steps, "median": statistics.median(times)})


def _side_by_side(case: Case, processes: int, threads: int, steps: int) -> list[dict[str, float]]:
    """Run ``processes`` fresh processes of ``threads`` threads each, timed together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_cores_worker, args=(case, threads, steps, barrier, results))
             for _ in range(processes)]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return out


class StepTimer(Callback):
    """Wall time of every training step (batch start to batch end) of rank 0, written as JSON at the end."""

    def __init__(self, out: str) -> None:
        self.out, self.times, self.t0 = out, [], 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self.t0)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank == 0:
            Path(self.out).write_text(json.dumps({"step_s": self.times}))


def ddp_worker(out: str, cli_args: list[str]) -> None:
    """``--ddp-worker``: a Lightning fit with ``cli_args``; Lightning re-runs this command for rank 1."""
    torch.set_num_threads(1)
    cli = quiet(lambda: make_cli(cli_args, run=False, trainer_defaults={"callbacks": [StepTimer(out)]},
                                 save_config_callback=None))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def _ddp_steps(case: Case, steps: int, batch: int) -> list[float]:
    """Per-step wall times of a 2-process DDP fit (gloo, CPU) of ``case``, warm-up steps dropped."""
    warmup = 2
    with tempfile.TemporaryDirectory(prefix="speed_ddp_") as tmp:
        out = str(Path(tmp) / "steps.json")
        cli_args = [
            *case.cli_args(), "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            f"--trainer.max_steps={steps + warmup}", "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.callbacks=[]", f"--data.batch_size={batch}", f"--data.n_train={2 * batch * (steps + warmup)}",
            f"--data.n_val={batch}", f"--data.n_test={batch}", f"--data.cache_dir={Path(tmp) / 'data'}",
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        proc = subprocess.run([sys.executable, __file__, "--ddp-worker", out, "--", *cli_args], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not Path(out).is_file():
            raise RuntimeError("DDP run failed:\n" + (proc.stdout + proc.stderr)[-3000:])
        return json.loads(Path(out).read_text())["step_s"][warmup:]


def run_cores(args: argparse.Namespace, log: Callable) -> list[str]:
    """SET as configured on two cores: 1 run x 2 threads, 2 runs x 1 thread side by side, DDP (2 x 1)."""
    steps = args.cores_steps or (3 if args.quick else 20)
    case = Case("set", [f"--data.batch_size={args.batch}"] if args.batch else [])
    probe = Stepper(case, torch.device("cpu"))  # resolves the label and the shapes
    rows = []
    for label, procs, threads in [("one run, 2 threads", 1, 2), ("two runs side by side, 1 thread each", 2, 1)]:
        log(f"cores: {label}")
        out = _side_by_side(case, procs, threads, steps)
        total = sum(r["steps"] / r["elapsed"] for r in out)
        rows.append((label, f"{procs} x {threads}", 1e3 * statistics.median(r["median"] for r in out), total))
    log("cores: DDP, 2 gloo processes")
    ddp = _ddp_steps(case, steps, case.batch)
    step_s = statistics.median(ddp)
    rows.append(("DDP over 2 gloo processes (Lightning fit, strategy=ddp)", "2 x 1", 1e3 * step_s, 2 / step_s))
    del probe
    lines = ["## Two cores, three ways (--cores)", "",
             f"{case.label} as configured: N={case.n}, L={case.ell}, B={case.batch} per process, {steps} timed steps "
             "after 2 warm-up steps. 'steps/s total' counts training steps of B samples over all processes (a DDP "
             "step processes one batch of B on each of the 2 processes: 2 steps). The DDP step is timed by a "
             "callback from batch start to batch end (forward, backward with the gradient all-reduce, optimiser "
             "step, Lightning's logging).", "",
             "| setup | processes x threads | step ms (median per process) | steps/s total | samples/s total |",
             "|---|---|---|---|---|"]
    for label, shape, ms, total in rows:
        lines.append(f"| {label} | {shape} | {ms:.1f} | {total:.2f} | {total * case.batch:.0f} |")
    return lines + [""]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--ddp-worker":
        rest = sys.argv[3:]
        ddp_worker(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    else:
        sys.exit("usage: python benchmarks/two_cores.py --ddp-worker OUT -- CLI_ARGS (started by speed.py --cores)")
