"""Trainer paths through the CLI: DDP on CPU (gloo, 2 processes), bf16 mixed precision, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import importing_from, run_cli, tiny_args

HERE = Path(__file__).resolve().parent


def _final_state(ckpt: Path) -> tuple[int, int]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state["epoch"], state["global_step"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_cpu_processes(tmp_path, data_cache):
    res = run_cli(
        ["fit", *tiny_args(data_cache), "--trainer.strategy=ddp", "--trainer.devices=2",
         "--trainer.max_epochs=1"],
        cwd=tmp_path,
        env={"PL_DISABLE_FORK": "1"},
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = res.stdout + res.stderr
    assert "GLOBAL_RANK: 1" in out or "world_size=2" in out or "distributed_backend=gloo" in out, out[-3000:]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    # 48 training samples, batch 16, sharded over 2 ranks -> 2 optimiser steps in epoch 0 on each rank
    # (a single process would take 3).
    assert _final_state(last) == (0, 2)
    # rank 0 alone reports and writes the config and metrics (the collective calls behind them matched)
    assert res.stdout.count("run directory:") == 1
    run = last.parent.parent
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"] and (run / "metrics.csv").is_file()


def test_bf16_mixed_precision_on_cpu(tmp_path, data_cache):
    res = run_cli(["fit", *tiny_args(data_cache), "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "bfloat16 automatic mixed precision" in (res.stdout + res.stderr).lower()
    assert list((tmp_path / "runs").rglob("last.ckpt"))


def test_resume_after_crash_finishes_with_same_epoch_count(tmp_path, data_cache):
    args = [*tiny_args(data_cache), "--trainer.max_epochs=3"]
    (tmp_path / "straight").mkdir()
    straight = run_cli(["fit", *args], cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _final_state(next((tmp_path / "straight" / "runs").rglob("last.ckpt")))

    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    crashed = run_cli(
        ["fit", *args, "--trainer.callbacks+=crash_callback.CrashAtEpochStart",
         "--trainer.callbacks.epoch=1"],
        cwd=crash_dir,
        env=importing_from(HERE),
    )
    assert crashed.returncode != 0  # killed when epoch 1 starts
    ckpts = list((crash_dir / "runs").rglob("last.ckpt"))
    assert ckpts and _final_state(ckpts[0])[1] < expected[1]  # it stopped early

    config = (ckpts[0].parent.parent / "config.yaml").read_bytes()
    resumed = run_cli(["fit", *args, "--ckpt_path=last"], cwd=crash_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr
    # the run's config.yaml is kept; the resumed invocation is saved beside it
    assert (ckpts[0].parent.parent / "config.yaml").read_bytes() == config
    assert (ckpts[0].parent.parent / "config_resume_1.yaml").is_file()
    # it continued the crashed run in its own folder, and ended where the uninterrupted run ended
    assert list((crash_dir / "runs").rglob("last.ckpt")) == ckpts
    assert _final_state(ckpts[0]) == expected


def test_resume_last_without_a_previous_run_is_a_clear_error(tmp_path, data_cache):
    res = run_cli(["fit", *tiny_args(data_cache), "--ckpt_path=last"], cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "found no" in res.stderr and "last.ckpt" in res.stderr
