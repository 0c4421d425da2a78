"""The local backend: each run in its own worker process on this machine, ``--parallel K`` at a time.

Runs are reported (and their rows appended to ``results.jsonl``) in the order they finish. On a
machine with GPUs, each of the K slots owns its own GPUs: the visible GPUs are cut into K equal
slices (:func:`gpu_slices`) and a run's process sees only its slot's slice through
``CUDA_VISIBLE_DEVICES``, so two runs never share a GPU; with ``runs_per_gpu=R``, R slots share each
slice (small models that leave a GPU mostly idle: the budget-ladder study's runs).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from set_lightning.errors import UserError
from set_lightning.experiments.records import read_result, write_job
from set_lightning.experiments.spec import RunSpec

#: the environment variable that tells a run how many runs share its GPU (set when more than one does)
GPU_SHARED_ENV = "SET_LIGHTNING_GPU_SHARED_BY"
#: called with (run, result row or None, failure message) as each run finishes
OnDone = Callable[[RunSpec, Optional[dict[str, Any]], str], None]


def requested_devices(trainer: dict[str, Any], available: int) -> int:
    """How many devices a run's ``trainer`` config asks for, with ``available`` on the machine."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)):
        return max(devices) + 1 if devices else 0  # indices into the visible devices
    if isinstance(devices, str) and "," in devices:
        return max(int(d) for d in devices.split(",") if d.strip()) + 1
    if devices in ("auto", -1):
        return available
    return int(devices)


def uses_gpu(trainer: dict[str, Any], n_gpus: int) -> bool:
    """Whether a run's ``trainer`` config runs on GPUs on a machine with ``n_gpus``."""
    return n_gpus > 0 and str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def gpu_slices(n_gpus: int, parallel: int, needed: Sequence[int] = ()) -> list[list[int]]:
    """Cut GPUs ``0..n_gpus-1`` into ``parallel`` disjoint, equal, contiguous slices.

    Args:
        n_gpus: visible GPUs (``torch.cuda.device_count()``).
        parallel: runs at once (slots).
        needed: GPUs each run asks for (``trainer.devices``); each must fit in one slice.

    Raises:
        UserError: fewer GPUs than slots, or a run that needs more GPUs than a slice holds.
    """
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    size = n_gpus // parallel
    if size < 1:
        raise UserError(f"--parallel {parallel} needs at least {parallel} GPUs (one per run), this machine has {n_gpus}")
    biggest = max(needed, default=1)
    if biggest > size:
        raise UserError(
            f"a run asks for trainer.devices={biggest} GPUs, but --parallel {parallel} on {n_gpus} GPUs gives each "
            f"run {size}; lower --parallel to {max(1, n_gpus // biggest)} or trainer.devices"
        )
    return [list(range(k * size, (k + 1) * size)) for k in range(parallel)]


def check_gpu_sharing(parallel: int, runs_per_gpu: int, n_gpus: int) -> int:
    """The number of GPU slices that ``parallel`` runs, ``runs_per_gpu`` to a slice, need.

    Raises:
        UserError: ``runs_per_gpu < 1``, or (sharing, on a machine with GPUs) fewer GPUs than slices.
    """
    if runs_per_gpu < 1:
        raise UserError(f"--runs-per-gpu must be >= 1, got {runs_per_gpu}")
    groups = -(-parallel // runs_per_gpu)
    if runs_per_gpu > 1 and 0 < n_gpus < groups:
        raise UserError(f"--parallel {parallel} with --runs-per-gpu {runs_per_gpu} needs {groups} GPUs, this machine "
                        f"has {n_gpus}; raise --runs-per-gpu to {-(-parallel // n_gpus)} or lower --parallel")
    return groups


def visible_devices(slice_: Sequence[int], environ: Optional[dict[str, str]] = None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a slice of the GPUs this process sees (mapped through its own setting)."""
    current = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in current.split(",")] if current else [str(i) for i in range(max(slice_, default=-1) + 1)]
    return ",".join(ids[i] for i in slice_)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_local(
    runs: Sequence[RunSpec],
    trainers: Sequence[dict[str, Any]],
    parallel: int,
    threads: int,
    on_done: OnDone,
    n_gpus: Optional[int] = None,
    command: Optional[Callable[[RunSpec], list[str]]] = None,
    runs_per_gpu: int = 1,
) -> None:
    """Run each of ``runs`` in a worker process, ``parallel`` at a time; call ``on_done`` as each finishes.

    ``trainers`` are the runs' resolved ``trainer`` configs (devices and accelerator pick the GPUs);
    ``command`` gives the process of a run (default :func:`worker_command`: fit and test, ``result.json``);
    ``runs_per_gpu`` slots share each slice of the GPUs (1: every run has its own).
    """
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    on_gpu = [uses_gpu(t, n_gpus) for t in trainers]
    slices: list[Optional[list[int]]] = [None] * parallel
    if any(on_gpu):
        groups = check_gpu_sharing(parallel, runs_per_gpu, n_gpus)  # slices, each shared by runs_per_gpu slots
        needed = [requested_devices(t, n_gpus // groups) for t, g in zip(trainers, on_gpu) if g]
        shared = gpu_slices(n_gpus, groups, needed)
        slices = [shared[k // runs_per_gpu] for k in range(parallel)]
    slots: "queue.Queue[int]" = queue.Queue()
    for k in range(parallel):
        slots.put(k)

    def execute(run: RunSpec, gpu: bool) -> tuple[RunSpec, Optional[dict[str, Any]], str]:
        slot = slots.get()
        try:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            if gpu and slices[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = visible_devices(slices[slot])
                if runs_per_gpu > 1:
                    env[GPU_SHARED_ENV] = str(runs_per_gpu)  # the ladder's rows record it
            return _execute(run, env) if command is None else _execute(run, env, command)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(execute, run, gpu) for run, gpu in zip(runs, on_gpu)]
        for future in as_completed(futures):
            on_done(*future.result())


def worker_command(run: RunSpec) -> list[str]:
    """The command that performs ``run`` (its spec saved in ``run_dir/run.json``)."""
    return [sys.executable, "-m", "set_lightning.experiments.worker", str(run.run_dir)]


def _execute(run: RunSpec, env: dict[str, str], command: Callable[[RunSpec], list[str]] = worker_command
             ) -> tuple[RunSpec, Optional[dict[str, Any]], str]:
    run.save()
    log_path = run.run_dir / "stdout.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command(run), cwd=run.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        write_job(run.run_dir, "local", str(proc.pid))  # another sweep on this machine leaves it alone
        proc.wait()
    result = read_result(run.run_dir)
    if result is not None:
        return run, result, ""
    tail = log_tail(log_path)
    return run, None, f"exit code {proc.returncode}; see {log_path}" + (f"\n{tail}" if tail else "")
