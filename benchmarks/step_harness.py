"""The timing harness of the benchmarks: one training step of the library's own (:class:`Stepper`), timed
round-robin over several models (:func:`time_group`), its activation memory, its counted FLOPs and the
matmul peak. ``speed.py``, ``scaling.py``, ``gpu.py``, ``two_cores.py`` and ``revision_baseline.py`` build on it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from set_lightning.data import sample_initial_conditions, simulate_charged
from set_lightning.lightning_cli import make_cli
from set_lightning.lit import NBodyLightningModule
from set_lightning.saved_tensors import saved_for_backward

REPO = Path(__file__).resolve().parents[1]
#: the models, by the name of their config file (the registry's names): conf/<name>.yaml
MODEL_NAMES = ("set", "egnn", "mlp", "lstm", "linear")
DATA = ["--config", "conf/data/nbody5.yaml"]

warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
for _name in ("lightning.pytorch", "lightning.fabric"):  # the CLI's banners ("Seed set to 0", devices)
    logging.getLogger(_name).setLevel(logging.WARNING)


def quiet(fn: Callable[[], Any]) -> Any:
    """``fn()`` without its console output (the CLI's trainer banner)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def make_batch(b: int, ell: int, n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of the data module's keys: ``b`` systems of ``n`` particles drawn by
    ``sample_initial_conditions`` and simulated for ``ell`` input frames and one target frame."""
    x0, v0, q = sample_initial_conditions(b, n, torch.Generator().manual_seed(seed))
    x, v = simulate_charged(x0, v0, q, steps=10 * (ell + 2), sample_freq=10)  # ell + 1 frames
    batch = {"x": x[:, :ell], "v": v[:, :ell], "charges": q, "x_target": x[:, ell], "v_target": v[:, ell]}
    return {k: t.float().to(device) for k, t in batch.items()}


@dataclass
class Case:
    """One model at one input shape: ``conf/<name>.yaml`` + the benchmark data + ``overrides``.

    ``label`` may hold ``{model}`` (the class) and ``{L}`` (the history); ``n``, ``ell`` and ``batch``
    are read from the built data module.
    """

    name: str
    overrides: list[str] = field(default_factory=list)
    label: str = "{model}"
    bf16: bool = False
    n: int = 0
    ell: int = 0
    batch: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    def cli_args(self) -> list[str]:
        return ["--config", f"conf/{self.name}.yaml", *DATA, *self.overrides, "--trainer.logger=false"]


class Stepper:
    """The case's LightningModule (built by the CLI), its optimiser and one batch; ``step()`` is one
    training step. ``net`` replaces the built model (same module settings), e.g. an older revision's."""

    def __init__(self, case: Case, device: torch.device, net: torch.nn.Module | None = None) -> None:
        torch.manual_seed(0)
        cli = quiet(lambda: make_cli(case.cli_args(), run=False))
        module, data = cli.model, cli.datamodule
        self.init_args = cli.config["model"]["net"]["init_args"].as_dict()
        if net is not None:
            keep = ("lr", "weight_decay", "pos_weight", "vel_weight")
            module = NBodyLightningModule(net=net, **{k: module.hparams[k] for k in keep})
        self.module = module.to(device).train()
        self.module.configure_model()  # what the Trainer calls first: compiles the model with model.compile
        self.opt = self.module.make_optimizer()
        case.n, case.ell, case.batch = data.n_particles, data.history, data.batch_size
        case.label = case.label.format(model=type(self.module.net).__name__, L=data.history)
        self.batch = make_batch(case.batch, case.ell, case.n, device)
        self.device, self.bf16 = device, case.bf16

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module.losses(self.batch)[0]

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def activation_mib(stepper: Stepper) -> float:
    """MiB of the distinct storages saved for backward in one forward pass (parameters excluded)."""
    stepper.opt.zero_grad(set_to_none=True)
    with saved_for_backward(stepper.module) as saved:
        loss = stepper.loss()
    loss.backward()
    stepper.opt.zero_grad(set_to_none=True)
    return saved.total / 2**20


def cuda_peak_mib(case: Case) -> float | None:
    """``torch.cuda.max_memory_allocated`` of one training step on the GPU (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        Stepper(case, torch.device("cuda")).step()
        peak = torch.cuda.max_memory_allocated() / 2**20
    except torch.cuda.OutOfMemoryError:
        peak = float("nan")
    finally:
        torch.cuda.empty_cache()
    return peak


def time_group(cases: list[Case], device: torch.device, repeats: int, budget_s: float, log: Callable,
               steppers: list[Stepper] | None = None) -> None:
    """Warm up every case, then time ``repeats`` interleaved rounds (fewer for slow cases, >= 3)."""
    steppers = steppers or [Stepper(case, device) for case in cases]
    for case, st in zip(cases, steppers):
        case.result["params"] = st.module.net.n_params
        t0 = time.perf_counter()
        case.result["act_mib"] = activation_mib(st)  # also the first warm-up step
        first = time.perf_counter() - t0
        case.result["first_s"] = first  # with model.compile: the compilation and one step
        st.step()  # second warm-up step
        case.result["cuda_mib"] = cuda_peak_mib(case)
        # slow cases get fewer repeats so that the whole group stays within budget_s per case
        case.result["repeats"] = max(3, min(repeats, int(budget_s / max(first, 1e-6))))
    wall: dict[int, list[float]] = collections.defaultdict(list)
    cpu: dict[int, list[float]] = collections.defaultdict(list)
    for r in range(max(c.result["repeats"] for c in cases)):
        for i, (case, st) in enumerate(zip(cases, steppers)):
            if r >= case.result["repeats"]:
                continue
            c0, w0 = time.process_time(), time.perf_counter()
            st.step()
            wall[i].append(time.perf_counter() - w0)
            cpu[i].append(time.process_time() - c0)
    for i, case in enumerate(cases):
        case.result["ms"] = 1e3 * statistics.median(wall[i])
        case.result["cpu_ms"] = 1e3 * statistics.median(cpu[i])
        case.result["samples_s"] = case.batch / (case.result["ms"] / 1e3)
    ref = next((c for c in cases if c.name == "egnn"), None)
    for case in cases:
        case.result["ratio"] = case.result["ms"] / ref.result["ms"] if ref is not None else float("nan")
    log(f"  N={cases[0].n} L={cases[0].ell}: " + ", ".join(f"{c.label} {c.result['ms']:.1f} ms" for c in cases))


def alternated_processes(jobs: dict[str, tuple[str, dict[str, str]]], rounds: int) -> dict[str, list[list[str]]]:
    """Each job ``name: (python code, environment overrides)`` run ``rounds`` times, each time in a fresh
    1-thread process, the jobs alternated within every round (so that a busy machine slows them alike): per
    job, the fields of each run's last output line. For settings that are process-wide (the allocator)."""
    out: dict[str, list[list[str]]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (code, env) in jobs.items():
            proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                                  cwd=REPO, capture_output=True, text=True, check=True)
            out[name].append(proc.stdout.strip().splitlines()[-1].split())
    return out


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:,.{digits}f}"


def counted_gflop(stepper: Stepper) -> float:
    """FLOPs of one forward + backward counted by ``torch.utils.flop_counter`` (matmul-type ops), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    stepper.opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        stepper.loss().backward()
    stepper.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``(size x size) @ (size x size)`` matmuls on 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=g).to(dtype) for _ in range(2))
        a @ b  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 2 * size**3 / best / 1e9


#: aten ops that are matrix products (FLOP-counted by torch.utils.flop_counter, or matrix-vector forms it skips)
MATMUL_OPS = frozenset({"mm", "addmm", "addmm_", "bmm", "baddbmm", "mv", "addmv", "addmv_", "dot", "addbmm"})


class OpTimer(TorchDispatchMode):
    """Wall time of every aten op run under it, forward, backward and optimiser alike, by op and input shapes.

    Ops on the CPU run synchronously, so the time around each call is the op's own; the mode's bookkeeping
    falls between the ops and is not counted. ``matmul_ms``/``other_ms`` split the total into matrix products
    (:data:`MATMUL_OPS`) and everything else (elementwise passes, reductions, softmax, dropout masks, copies).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ms: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = (func.overloadpacket.__name__, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        self.ms[key] += 1e3 * (time.perf_counter() - t0)
        self.calls[key] += 1
        return out

    @staticmethod
    def is_matmul(key: tuple[str, tuple]) -> bool:
        return key[0] in MATMUL_OPS

    @property
    def matmul_ms(self) -> float:
        return sum(ms for key, ms in self.ms.items() if self.is_matmul(key))

    @property
    def other_ms(self) -> float:
        return sum(ms for key, ms in self.ms.items() if not self.is_matmul(key))

    def top(self, k: int, matmul: bool) -> list[tuple[str, tuple, float, int]]:
        """The ``k`` (op, shapes) of one class with the most time: ``(op, shapes, ms, calls)``."""
        keys = sorted((key for key in self.ms if self.is_matmul(key) == matmul), key=lambda key: -self.ms[key])
        return [(key[0], key[1], self.ms[key], self.calls[key]) for key in keys[:k]]


def op_time_breakdown(stepper: Stepper, steps: int = 3) -> OpTimer:
    """The training steps' time per aten op (:class:`OpTimer`), summed over ``steps`` steps."""
    timer = OpTimer()
    with timer:
        for _ in range(steps):
            stepper.step()
    return timer
