"""Train and test one run, and record its result: the unit of work of a sweep.

:func:`run` takes a :class:`~set_lightning.experiments.spec.RunSpec` and runs ``fit`` (resuming
from the newest of Lightning's SLURM checkpoint ``RUN_DIR/hpc_ckpt_<k>.ckpt`` and
``RUN_DIR/checkpoints/last.ckpt`` when an earlier attempt was interrupted or requeued), then
``test`` of the checkpoint with the best ``val/pos_mse`` on one device, and writes
``RUN_DIR/result.json`` last, atomically: a run directory with ``result.json`` is finished, one
without it is not. ``python -m set_lightning.experiments.worker RUN_DIR`` does the same for the spec
saved in ``RUN_DIR/run.json`` (what a cluster job runs); under ``srun`` with several tasks each task
is one DDP rank (Lightning's SLURM environment).

Test on one device: a DistributedSampler pads the last shard, so a DDP test would count some test
trajectories twice. After a multi-process fit, rank 0 tests alone with a fresh single-device Trainer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from set_lightning.experiments.records import (
    PER_TRAJ_FILE,
    RESULT_FILE,
    config_identity,
    dump_config,
    recorded_identity,
    stale_error,
    write_identity,
    write_json,
)
from set_lightning.experiments.spec import RunSpec
from set_lightning.files import write_text_atomic


def newest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest of ``run_dir/hpc_ckpt_*.ckpt`` (Lightning's SLURM requeue) and ``checkpoints/last.ckpt``."""
    found = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _logging_args(run_dir: Path) -> list[str]:
    """The logger's run directory is ``run_dir`` itself (``<save_dir>/<name>/<version>``): TensorBoard
    logs, ``config.yaml`` and ``checkpoints/`` all go there (fields outside the run's identity)."""
    return [
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger.class_path=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={run_dir.parent.parent}",
        f"--trainer.logger.init_args.name={run_dir.parent.name}",
        f"--trainer.logger.init_args.version={run_dir.name}",
        "--trainer.logger.init_args.default_hp_metric=false",
    ]


def _cluster_plugins(lightning_requeue: bool) -> list[Any]:
    """Under SLURM with another requeue mechanism (submitit's), Lightning's own auto-requeue is off."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if lightning_requeue or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def run(
    spec: RunSpec,
    callbacks: Sequence[Any] = (),
    lightning_requeue: bool = True,
) -> Optional[dict[str, Any]]:
    """Fit then test one run under ``spec.run_dir``; return (and write) its result row.

    Args:
        spec: the run.
        callbacks: added to the config's (e.g. a :class:`~set_lightning.callbacks.TimeBudget`).
        lightning_requeue: let Lightning requeue the SLURM job on its signal (``False`` when submitit
            does it: the two must not both act).

    Returns:
        the result row on global rank 0 (``None`` on the other DDP ranks). It holds every ``test/*``
        metric of the best-validation checkpoint under ``"test"``; the per-trajectory test errors go
        to ``RUN_DIR/per_traj_test.json`` (``pos_mse``, ``min_dist``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from set_lightning.lightning_cli import make_cli

    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    plugins = _cluster_plugins(lightning_requeue)
    cli = make_cli(
        args=[*spec.cli_args(), *_logging_args(run_dir)],
        run=False,
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else {},
        trainer_kwargs={"plugins": plugins} if plugins else None,
    )
    identity, kept = config_identity(dump_config(cli.parser, cli.config))
    resume = newest_checkpoint(run_dir)
    if resume is not None:  # never resume from checkpoints of another configuration
        err = stale_error(run_dir, "checkpoints", recorded_identity(run_dir).get("config_sha256"), identity, kept)
        if err is not None:
            raise err
    write_identity(run_dir, identity, kept)
    trainer = cli.trainer
    ckpt_cb = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))  # in run_dir/checkpoints

    start = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(resume) if resume else None)
    train_time = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt("fit was interrupted; rerun to resume from last.ckpt")
    best = ckpt_cb.best_model_path or None
    tested = test_on_one_device(cli, best or str(run_dir / "checkpoints" / "last.ckpt"))
    if tested is None:  # a DDP rank other than 0
        return None
    net = cli.model.net
    result = {
        "variant": spec.variant,
        "group": spec.group,
        "seed": spec.seed,
        **{f"grid.{k}": v for k, v in spec.grid_point},
        "run_dir": _relative(run_dir),
        "model": type(net).__name__,
        "n_params": net.n_params,
        "best_val_pos_mse": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "test_pos_mse": float(tested["test/pos_mse"]),
        "test_vel_mse": float(tested["test/vel_mse"]),
        "epochs": int(trainer.current_epoch),
        "train_time_s": round(train_time, 2),
        "resumed": resume is not None,
        "resumed_from": _relative(resume) if resume else None,
        "best_ckpt": _relative(best) if best else None,
        "best_epoch": _epoch_of(best),
        "test": {k.split("/", 1)[1]: float(v) for k, v in tested.items() if k.startswith("test/")},
        "configs": list(spec.configs),
        "overrides": {k: v for k, v in spec.overrides},
        "config_sha256": identity,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    per = cli.model.per_trajectory.get("test")
    if per is not None:
        write_text_atomic(run_dir / PER_TRAJ_FILE, json.dumps(
            {"pos_mse": [float(f"{e:.5g}") for e in per[:, 0].tolist()],
             "min_dist": [float(f"{d:.5g}") for d in per[:, 1].tolist()]}))
    write_json(run_dir / RESULT_FILE, result)
    return result


def test_on_one_device(cli: Any, ckpt_path: str) -> Optional[dict[str, float]]:
    """Test ``ckpt_path`` on one device; the metrics on global rank 0, ``None`` on the other ranks.

    After a multi-process fit the process group is taken down on every rank and rank 0 tests with a
    fresh single-device Trainer (same accelerator, precision and logger): a DistributedSampler would
    pad the last shard and count some test trajectories twice.
    """
    import lightning.pytorch as pl
    import torch.distributed as dist

    trainer = cli.trainer
    if trainer.world_size == 1:
        return trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    rank = trainer.global_rank
    trainer.strategy.barrier("test_on_one_device")
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if rank != 0:
        return None
    single = pl.Trainer(
        accelerator=cli.config.trainer.accelerator, devices=1, num_nodes=1, precision=cli.config.trainer.precision,
        logger=trainer.logger, default_root_dir=trainer.default_root_dir, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    return single.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)[0]


def _relative(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it (results name no machine paths)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _epoch_of(ckpt: Optional[str]) -> Optional[int]:
    """The epoch in a checkpoint name such as ``best-epoch=012.ckpt``."""
    import re

    match = re.search(r"epoch=(\d+)", Path(ckpt).name) if ckpt else None
    return int(match.group(1)) if match else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m set_lightning.experiments.worker RUN_DIR``: the run saved in ``RUN_DIR/run.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from set_lightning.errors import run_with_clean_errors

    # sys.argv stays: Lightning's DDP launcher starts the other ranks with the same command line
    sys.exit(run_with_clean_errors(lambda: run(RunSpec.load(argv[0]))))


if __name__ == "__main__":
    main()
