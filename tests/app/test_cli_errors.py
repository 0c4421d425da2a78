"""Bad input gives exactly one ``error:`` line naming the field, a non-zero exit, no traceback, and
leaves nothing behind (no run directory); Ctrl-C exits 130 and says how to resume."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import error_lines, readonly_dir, run_cli, tiny_args


def _random_checkpoint(folder: Path) -> str:
    path = folder / "random.ckpt"
    path.write_bytes(torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    return str(path)


def _truncated_checkpoint(folder: Path) -> str:
    whole, path = folder / "whole.ckpt", folder / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 3}, whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return str(path)


# (name, extra arguments (a function of tmp_path for files), subcommand, words the error line must hold)
CASES = [
    ("random_bytes_checkpoint", lambda d: [f"--ckpt_path={_random_checkpoint(d)}"], "test",
     ["ckpt_path", "random.ckpt", "not a checkpoint"]),
    ("truncated_checkpoint", lambda d: [f"--ckpt_path={_truncated_checkpoint(d)}"], "test",
     ["ckpt_path", "truncated.ckpt", "truncated"]),
    ("missing_checkpoint", lambda d: ["--ckpt_path=nowhere/missing.ckpt"], "test", ["ckpt_path", "missing.ckpt"]),
    ("read_only_log_dir", lambda d: [f"--trainer.logger.init_args.save_dir={readonly_dir(d) / 'runs'}"], "fit",
     ["trainer.logger.init_args.save_dir", "not writable"]),
    # 47 trajectories: a split no other test caches, so it would have to be simulated
    ("read_only_cache_dir", lambda d: [f"--data.cache_dir={readonly_dir(d) / 'cache'}", "--data.n_train=47"], "fit",
     ["cache_dir", "not writable"]),
    ("negative_max_epochs", lambda d: ["--trainer.max_epochs=-3"], "fit", ["max_epochs", "-1", "-3"]),
    ("no_training_trajectories", lambda d: ["--data.n_train=0"], "fit", ["n_train", ">= 1", "got 0"]),
    ("impossible_history", lambda d: ["--data.history=40"], "fit", ["history", "1..31"]),
    ("unknown_config_key", lambda d: ["--data.n_trian=5"], "fit", ["n_trian"]),
    ("unknown_model", lambda d: ["--model.net=Transformerz"], "fit", ["Transformerz", "SET, EGNN"]),
    ("unknown_model_argument", lambda d: ["--model.net.hiden=8"], "fit",
     ["hiden", "did you mean 'hidden'", "n_blocks, n_spatial_layers"]),
    ("missing_config_file", lambda d: ["--config", "conf/does_not_exist.yaml"], "fit", ["does_not_exist.yaml"]),
]


@pytest.mark.parametrize("name, extra, sub, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(tmp_path, data_cache, name, extra, sub, needles):
    args = [*tiny_args(data_cache), *extra(tmp_path)]
    if name == "unknown_model":
        args = [a for a in args if not a.startswith("--model.net")] + extra(tmp_path)
    res = run_cli([sub, *args], cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = error_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("version_*"))  # nothing half-written


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoints(tmp_path, data_cache):
    # A learning rate of 1e30 makes the weights (and so the loss) overflow within a few steps.
    res = run_cli(["fit", *tiny_args(data_cache), "--model.lr=1e30", "--trainer.max_epochs=20"], cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    (line,) = error_lines(res.stderr)
    assert "loss is" in line and "lr" in line


def test_ctrl_c_exits_130_and_prints_the_resume_command(tmp_path, data_cache):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # the output goes to files, not pipes: a pipe that nobody reads while the fit runs fills up (the progress
    # bar writes all the time) and blocks the child in a write, which is not what this test is about
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "set_lightning", "fit", *tiny_args(data_cache), "--trainer.max_epochs=1000"],
            cwd=tmp_path, env=env, stdout=out, stderr=err_file, text=True,
            # as from a terminal: Ctrl-C's default disposition (a shell's background job would inherit "ignored")
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        last = tmp_path / "runs" / "quick" / "version_0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 240
        while time.time() < deadline and not last.is_file() and proc.poll() is None:
            time.sleep(0.2)
        assert last.is_file(), "no checkpoint was written"
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and not error_lines(err)
    command = err.split("Resume with:", 1)[1].strip().splitlines()[0]
    assert command.startswith("python -m set_lightning fit ")
    words = shlex.split(command)
    assert words[words.index("--ckpt_path") + 1] == "runs/quick/version_0/checkpoints/last.ckpt"
    assert "--trainer.max_epochs=1000" in words
