"""The GPU path, exercised and measured where a CUDA device is: writes ``results/gpu.md``.

    python benchmarks/gpu.py              # the CUDA tests + GPU step times -> results/gpu.md (~5 min on one GPU)
    python benchmarks/gpu.py --quick      # fewer timed steps, B=20

Without a CUDA device it says so, runs nothing and exits 0; ``results/gpu.md`` is left as it is (no GPU
figure is ever written without a GPU having produced it).

1. The tests marked ``cuda`` (``pytest -m cuda tests/gpu``): a CLI fit at ``32-true``, ``16-mixed`` and
   ``bf16-mixed``; the optimised EGCL / ETAL paths on CUDA against float64 and, under CUDA autocast (bf16,
   fp16), against their fp32 forms with the residual stream kept in fp32; the error statistics on CUDA;
   with two GPUs, NCCL DDP (the statistics gathered across ranks, and a TimeBudget fit whose ranks stop at
   the same step with the same learning rates). Each test's outcome and time go into the file.
2. Step times on the GPU: every model as configured (``conf/<model>.yaml``, N=5), one training step
   (forward, loss, backward, Adam step; ``torch.cuda.synchronize`` after each) in fp32 and under bf16
   autocast, timed round-robin with ``benchmarks/speed.py``'s machinery (medians), and the CUDA peak
   memory of a step.

The file records the device (name, count, memory), torch and CUDA versions, the git revision and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu.py"


def device_lines() -> list[str]:
    """What the results were measured on."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    gpus = ", ".join(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)" for p in props)
    return [
        f"Command: `python {' '.join(shlex.quote(a) for a in [SCRIPT, *sys.argv[1:]])}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, revision "
        f"{rev.stdout.strip() or '(unknown)'}  ",
        f"Device: {len(props)} x CUDA: {gpus}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, bf16 supported: {torch.cuda.is_bf16_supported()}  ",
        "",
    ]


def run_cuda_tests(log) -> list[str]:
    """``pytest -m cuda tests/gpu``: one row per test with its outcome and time."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "cuda", "tests/gpu", f"--junitxml={report}"]
        log("running: " + " ".join(cmd))
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        log(res.stdout[-3000:])
        cases = ET.parse(report).getroot().iter("testcase") if report.is_file() else []
        rows = []
        for case in cases:
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                    message = (node.get("message") or "").splitlines()[0][:120] if node.get("message") else ""
                    outcome += f" ({message})" if message else ""
            rows.append(f"| {case.get('name')} | {outcome} | {float(case.get('time', 0)):.1f} |")
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"pytest exited {res.returncode}"
    return ["## CUDA tests (`pytest -m cuda tests/gpu`)", "", f"Result: {summary}", "",
            "| test | outcome | s |", "|---|---|---|", *rows, ""]


def run_step_times(quick: bool, log, device: str = "cuda", models: tuple[str, ...] | None = None) -> list[str]:
    """Every configured model's training step on the GPU, fp32 and bf16 autocast (benchmarks/speed.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import step_harness as speed  # noqa: E402 - benchmarks/step_harness.py, as a sibling script

    batch, repeats, budget = (20, 3, 5.0) if quick else (100, 20, 30.0)
    cases = [speed.Case(name, [f"--data.batch_size={batch}"], "{model} (conf, L={L})", bf16=bf16)
             for name in models or speed.MODEL_NAMES for bf16 in (False, True)]
    speed.time_group(cases, torch.device(device), repeats, budget, log)
    lines = ["## Step times on the GPU", "",
             f"One training step (forward, loss, backward, Adam step, then `torch.cuda.synchronize`), median of "
             f"up to {repeats} steps timed round-robin after 2 warm-up steps; bf16 = the forward and loss under "
             "`torch.autocast(\"cuda\", bfloat16)` (as `--trainer.precision bf16-mixed`).", "",
             "| model | N | L | B | fp32 step ms | bf16 step ms | bf16 / fp32 | fp32 samples/s | CUDA peak MiB (fp32) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for fp32, bf16 in zip(cases[::2], cases[1::2]):
        r, b = fp32.result, bf16.result
        lines.append(f"| {fp32.label} | {fp32.n} | {fp32.ell} | {fp32.batch} | {r['ms']:.2f} | {b['ms']:.2f} | "
                     f"{b['ms'] / r['ms']:.2f} | {r['samples_s']:.0f} | {speed.fmt(r['cuda_mib'])} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B=20 and 3 timed steps per model")
    parser.add_argument("--output", default=str(REPO / "results" / "gpu.md"))
    parser.add_argument("--skip-tests", action="store_true", help="only the step times")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not torch.cuda.is_available():
        print(f"skipped: no CUDA device here; nothing was run and {args.output} was not written")
        return 0
    os.chdir(REPO)
    t0 = time.perf_counter()
    lines = ["# The GPU path (benchmarks/gpu.py)", "", *device_lines()]
    if not args.skip_tests:
        lines += run_cuda_tests(log)
    lines += run_step_times(args.quick, log)
    lines.append(f"Time: {time.perf_counter() - t0:.0f} s.")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
