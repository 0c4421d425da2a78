"""The worker: requeue checkpoints (submitit's, not Lightning's as well), and test on one device after DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import lightning.pytorch as pl
import pytest
import torch
from cli_helpers import TINY
from lightning.pytorch.callbacks import Callback

from set_lightning.experiments import slurm, worker
from set_lightning.experiments.records import ConfigResolver, config_identity
from set_lightning.experiments.spec import variant_run
from set_lightning.lightning_cli import make_cli


class Preempted(Exception):
    """Stands in for the end of a job that submitit requeues."""


class PreemptMidEpoch(Callback):
    """At the end of the first batch of epoch 1, do what submitit's signal handler does: checkpoint(), stop."""

    def __init__(self, job: slurm.RunJob, spec) -> None:
        self.job, self.spec, self.delayed = job, spec, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0 and self.delayed is None:
            self.delayed = self.job.checkpoint(self.spec)
            raise Preempted()


def _step(ckpt) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def test_a_requeued_run_resumes_from_the_hpc_checkpoint(tmp_path, data_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = variant_run({}, "a", 0, tmp_path / "s" / "a" / "seed_0", tmp_path,
                       overrides={**TINY, "data.cache_dir": str(data_cache), "trainer.max_epochs": 2})
    job = slurm.RunJob()
    preempt = PreemptMidEpoch(job, spec)
    with pytest.raises(Preempted):
        worker.run(spec, callbacks=[slurm._TrainerHandle(job), preempt], lightning_requeue=False)
    hpc = spec.run_dir / "hpc_ckpt_1.ckpt"
    # 32 trajectories in batches of 16: 2 steps an epoch; stopped after the first step of epoch 1
    assert _step(hpc) == 3 and _step(spec.run_dir / "checkpoints" / "last.ckpt") == 2
    assert not (spec.run_dir / "result.json").exists()
    # the resubmission is the same run, with a fresh RunJob (no trainer pickled along)
    assert isinstance(preempt.delayed.function, slurm.RunJob) and preempt.delayed.args == (spec,)
    assert preempt.delayed.function.__getstate__() == {"_trainer": None}
    result = preempt.delayed.function(*preempt.delayed.args)  # what the requeued job runs
    assert result["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert _step(spec.run_dir / "checkpoints" / "last.ckpt") == 4  # where the uninterrupted run ends
    # the worker's identity is the one the sweep computes for the same run
    assert result["config_sha256"] == config_identity(ConfigResolver().resolve(spec.cli_args()))[0]


def test_lightning_does_not_requeue_when_submitit_does(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    assert worker._cluster_plugins(lightning_requeue=False) == []  # not under SLURM: nothing to switch off
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "sweep")
    (env,) = worker._cluster_plugins(lightning_requeue=False)
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
    assert worker._cluster_plugins(lightning_requeue=True) == []  # Lightning's default: it requeues itself


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_after_ddp_fit_the_test_metric_is_the_single_process_one(tmp_path, data_cache):
    # 15 test trajectories: a 2-process DistributedSampler would pad them to 16 (one counted twice)
    spec = variant_run({}, "ddp", 0, tmp_path / "s" / "ddp" / "seed_0", tmp_path, overrides={
        **TINY, "data.cache_dir": str(data_cache), "trainer.strategy": "ddp", "trainer.devices": 2})
    spec.save()
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-m", "set_lightning.experiments.worker", str(spec.run_dir)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((spec.run_dir / "result.json").read_text())
    assert len(json.loads((spec.run_dir / "per_traj_test.json").read_text())["pos_mse"]) == 15

    single = replace(spec, overrides=spec.overrides + (("trainer.strategy", "auto"), ("trainer.devices", 1)))
    cli = make_cli(args=[*single.cli_args(), "--trainer.logger=false"], run=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    ckpt = tmp_path / result["best_ckpt"] if not os.path.isabs(result["best_ckpt"]) else result["best_ckpt"]
    expected = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)[0]
    assert result["test_pos_mse"] == pytest.approx(expected["test/pos_mse"], rel=1e-6)
    assert result["test"]["pos_mse_max"] == pytest.approx(expected["test/pos_mse_max"], rel=1e-6)
