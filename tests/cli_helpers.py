"""Helpers for the application tests: a tiny, fast training configuration and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_args(cache: Path, model: str = "SET") -> list[str]:
    """CLI overrides for a run that takes seconds: 48/16/16 trajectories, 2 epochs, a small net."""
    args = [
        "--data.n_train=48",
        "--data.n_val=16",
        "--data.n_test=16",
        "--data.batch_size=16",
        "--data.history=3",
        f"--data.cache_dir={cache}",
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_model_summary=false",
        f"--model.net={model}",
        "--model.net.hidden=8",
    ]
    if model == "SET":
        args += ["--model.net.n_blocks=1", "--model.net.n_spatial_layers=1", "--model.net.n_heads=2"]
    return args


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m set_lightning ARGS`` in ``cwd``; return the completed process (text output)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "set_lightning", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: sweep overrides for runs that take seconds: 32/16/15 trajectories, a small SET, no progress bar
TINY = {
    "data.n_train": 32, "data.n_val": 16, "data.n_test": 15, "data.batch_size": 16, "data.history": 2,
    "trainer.max_epochs": 1, "trainer.accelerator": "cpu", "trainer.enable_model_summary": False,
    "trainer.enable_progress_bar": False, "model.net.init_args.hidden": 8, "model.net.init_args.n_blocks": 1,
    "model.net.init_args.n_spatial_layers": 1, "model.net.init_args.n_heads": 2,
}


def write_spec(folder: Path, spec: dict) -> Path:
    """Write the ablation file ``spec`` as ``folder/ablations/<name>.yaml``."""
    (folder / "ablations").mkdir(parents=True, exist_ok=True)
    path = folder / "ablations" / f"{spec.get('name', 'tiny')}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def kill_after_first_result(cmd: list[str], cwd: Path, out: Path, timeout: float = 300,
                            env: dict | None = None) -> list[Path]:
    """Start a sweep, SIGKILL it and every process it started once a run has finished; the results so far."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not list(out.rglob("result.json")) and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return list(out.rglob("result.json"))


def readonly_dir(tmp_path: Path) -> Path:
    """A folder nothing can be created in: a 0o555 folder, or, for root (whom permission bits do not
    stop), a path under /sys (sysfs refuses new files to everyone)."""
    import pytest

    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    from set_lightning.files import unwritable_reason

    if not Path("/sys").is_dir() or unwritable_reason("/sys") is None:
        pytest.skip("running as root without a read-only location")
    return Path("/sys/set_lightning_read_only")


def error_lines(text: str) -> list[str]:
    """The lines of ``text`` that start with ``error:``."""
    return [line for line in text.splitlines() if line.startswith("error:")]


def importing_from(folder: Path) -> dict[str, str]:
    """Environment for a subprocess that must import test-only modules (callbacks) from ``folder``."""
    return {"PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}


def instantiate(parser, cfg):
    """jsonargparse's instantiation: ``instantiate`` since 4.49 (``instantiate_classes`` is deprecated)."""
    return parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
