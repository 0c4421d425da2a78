"""Units of compute that survive a change of machine or code: FLOPs, the machine, a numerics fingerprint.

A study that budgets *seconds* compares nothing once its rows come from two machines (this project's
CPUs differ by 2x at the same code) or from two revisions of the code (a faster step buys more
epochs). Three things make a budget portable:

* :func:`training_flops`: the matmul FLOPs of one training step of a model at a batch shape, counted
  by ``torch.utils.flop_counter`` (forward and backward). A budget in FLOPs is a number of steps per
  configuration, the same on every machine and at every speed of the code.
* :func:`machine_info`: what a row records so that its *seconds* are only ever compared with
  seconds of the same machine: CPU model, torch CPU capability, threads, torch version, device,
  and the code revision.
* :func:`fingerprint`: the model's function, not its speed: outputs and gradients of a freshly
  seeded copy in float64 on a fixed input. A faster implementation of the same math keeps it; a
  change of the math changes it, so rows made before such a change are told apart from rows after.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

#: significant digits of the fingerprint's numbers (float64 sums differ by ~1e-15 across CPUs)
FINGERPRINT_DIGITS = 9


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(names: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> list[str]:
    """Which of ``names`` the CPU reports (``/proc/cpuinfo`` flags; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [n for n in names if n in flags]


def code_revision(root: Optional[Path] = None) -> Optional[str]:
    """``git`` commit of the code (with ``+dirty`` when the tree has changes); ``None`` outside a checkout."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a timed row must carry: ``cpu``, ``cpu_capability``, ``cpu_flags``, ``threads``, ``torch``,
    ``device`` (the GPU's name on CUDA) and ``revision``."""
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": dev,
        "revision": code_revision(),
    }


#: the end of the machine key of rows trained with ``model.compile`` (their seconds are another code's)
COMPILED = " | compiled"


def machine_key(info: Mapping[str, Any]) -> str:
    """One string per kind of machine (and of code: rows of ``model.compile`` end in :data:`COMPILED`):
    seconds are comparable only between rows with the same key."""
    key = f"{info.get('cpu')} | {info.get('cpu_capability')} | {info.get('threads')} thread(s) | {info.get('device')}"
    if info.get("gpu_shared_by", 1) > 1:  # wall seconds of runs that waited on each other
        key += f" shared by {info['gpu_shared_by']}"
    return key + (COMPILED if info.get("compiled") else "")


def _inputs(net: nn.Module, batch: int, history: int, n: int, dtype: torch.dtype, seed: int = 0) -> tuple:
    """Random ``x, v (B, L, N, 3)``, charges ``(B, N, 1)`` and the keyword attributes the model reads."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, history, n, 3, generator=g, dtype=dtype) * 2
    v = torch.randn(batch, history, n, 3, generator=g, dtype=dtype) * 0.5
    q = (torch.randint(0, 2, (batch, n, 1), generator=g) * 2 - 1).to(dtype)
    extra: dict[str, torch.Tensor] = {}
    node_dim, edge_dim = getattr(net, "node_dim", 1), getattr(net, "edge_dim", 0)
    if node_dim > 1:
        extra["node_attr"] = torch.cat([q, torch.randn(batch, n, node_dim - 1, generator=g, dtype=dtype)], -1)
    if edge_dim or getattr(net, "graph", "complete") == "given":
        e = torch.rand(batch, n, n, max(edge_dim, 1), generator=g, dtype=dtype)
        extra["edge_attr"] = (e + e.transpose(1, 2)) * (1 - torch.eye(n, dtype=dtype)).unsqueeze(-1)
    return x, v, q, extra


def _objective(net: nn.Module, inputs: tuple) -> torch.Tensor:
    x, v, q, extra = inputs
    x_pred, v_pred = net(x, v, q, **extra)
    return x_pred.square().mean() + v_pred.square().mean()


def training_flops(net: nn.Module, *, batch: int, history: int, n: int) -> int:
    """Matmul FLOPs of one training step (forward and backward) of ``net`` on a batch of that shape.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions; the
    elementwise work is not counted) on the model's whole defined function: a shortcut of the code that
    skips outputs nobody reads (SET's last block on the last frame only, with ``readout="last"``) is
    off while counting (:func:`~set_lightning.models.base.every_output_computed`), so that a budget
    means the same number of steps before and after such a change of the code. The optimiser step and
    the loss add no matmuls. ``net`` is left as it was (its gradients are cleared).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from set_lightning.models.base import every_output_computed

    was_training = net.training
    net.train()
    inputs = _inputs(net, batch, history, n, next(net.parameters()).dtype)
    with every_output_computed(net), FlopCounterMode(display=False) as counter:
        _objective(net, inputs).backward()
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return int(counter.get_total_flops())


def fingerprint(config: Mapping[str, Any], *, history: int, n: int, batch: int = 2) -> list[float]:
    """The function of the model that ``config`` (``class_path`` / ``init_args``) builds, as 3 numbers.

    A copy built with ``torch.manual_seed(0)``, in float64 and eval mode (no dropout), on a fixed random
    input of ``batch`` samples of ``history`` frames and ``n`` particles: the sum and the sum of squares
    of its predictions and the squared norm of the gradient of the objective, each rounded to
    :data:`FINGERPRINT_DIGITS` significant digits. Faster code for the same math keeps these numbers
    (to float64 rounding); changed math changes them.
    """
    from set_lightning.models.registry import build_from_config

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        net = build_from_config(config).double().eval()
    finally:
        torch.random.set_rng_state(state)
    inputs = _inputs(net, batch, history, n, torch.float64, seed=1)
    x, v, q, extra = inputs
    x_pred, v_pred = net(x, v, q, **extra)
    out = torch.cat([x_pred.flatten(), v_pred.flatten()]).detach()
    _objective(net, inputs).backward()
    grad_sq = sum(float(p.grad.square().sum()) for p in net.parameters() if p.grad is not None)
    values = [float(out.sum()), float(out.square().sum()), grad_sq]
    return [float(f"{value:.{FINGERPRINT_DIGITS}g}") for value in values]

