"""Train and test one configuration, and record its result: the unit of work of a sweep.

``python -m set_lightning.run_one RUN_DIR [CLI ARGS ...]`` runs ``fit`` (resuming from
``RUN_DIR/checkpoints/last.ckpt`` when an earlier attempt was interrupted), then ``test`` on the
checkpoint with the best ``val/pos_mse``, and writes ``RUN_DIR/result.json`` last, atomically: a
run directory with ``result.json`` is finished, one without it is not. The CLI arguments are those
of ``python -m set_lightning fit`` (``--config ...``, dotted overrides), so each run can equally be
submitted as its own job to a cluster scheduler, and run as a DDP job with
``--trainer.strategy ddp --trainer.devices N [--trainer.num_nodes M]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

RESULT_FILE = "result.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never half-written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_digests(cli_args: Sequence[str], root: str | Path = ".") -> dict[str, str]:
    """SHA-256 of every ``--config`` file named in ``cli_args`` (a changed file = a different run).

    Config names resolve as the CLI resolves them, from ``root`` (the folder the run executes in);
    keys stay as given.
    """
    import hashlib

    from set_lightning.configs import config_arg_values, resolve_config

    digests = {}
    for _, name in config_arg_values(cli_args):
        path = resolve_config(name, root)
        if path.is_file():
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


PER_TRAJ_FILE = "per_traj_test.json"


def run_one(run_dir: str | Path, cli_args: Sequence[str], callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fit then test one configuration under ``run_dir``; return (and write) its result row.

    ``callbacks`` are added to the config's (e.g. a :class:`~set_lightning.callbacks.TimeBudget`).
    The result row holds every ``test/*`` metric of the best-validation checkpoint under ``"test"``;
    the per-trajectory test errors go to ``RUN_DIR/per_traj_test.json`` (``pos_mse``, ``min_dist``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from set_lightning.cli import make_cli

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    digests = config_digests(cli_args)
    args = [
        *cli_args,
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger.class_path=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={run_dir.parent}",
        f"--trainer.logger.init_args.name={run_dir.name}",
        "--trainer.logger.init_args.version=tb",
        "--trainer.logger.init_args.default_hp_metric=false",
    ]
    cli = make_cli(args=args, run=False, trainer_defaults={"callbacks": list(callbacks)} if callbacks else {})
    trainer = cli.trainer
    ckpt_cb = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
    ckpt_cb.dirpath = str(run_dir / "checkpoints")
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.is_file() else None

    start = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    train_time = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt("fit was interrupted; rerun to resume from last.ckpt")
    best = ckpt_cb.best_model_path or None
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or "last", verbose=False)
    net = cli.model.net
    result = {
        "run_dir": _relative(run_dir),
        "model": type(net).__name__,
        "n_params": net.n_params,
        "best_val_pos_mse": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "test_pos_mse": float(tested[0]["test/pos_mse"]),
        "test_vel_mse": float(tested[0]["test/vel_mse"]),
        "epochs": int(trainer.current_epoch),
        "train_time_s": round(train_time, 2),
        "resumed": resume is not None,
        "best_ckpt": _relative(best) if best else None,
        "best_epoch": _epoch_of(best),
        "test": {k.split("/", 1)[1]: float(v) for k, v in tested[0].items() if k.startswith("test/")},
        "cli_args": list(cli_args),
        "config_sha256": digests,
    }
    if trainer.global_rank == 0:
        per = cli.model.per_trajectory.get("test")
        if per is not None:
            write_text_atomic(run_dir / PER_TRAJ_FILE, json.dumps(
                {"pos_mse": [float(f"{e:.5g}") for e in per[:, 0].tolist()],
                 "min_dist": [float(f"{d:.5g}") for d in per[:, 1].tolist()]}))
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(result, indent=2, sort_keys=True))
    return result


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


def read_result(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The finished run's result row, or ``None`` when the run has not finished."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    from set_lightning.errors import run_with_clean_errors

    sys.argv = sys.argv[:1]  # the CLI gets its arguments explicitly (LightningCLI warns about both)
    sys.exit(run_with_clean_errors(lambda: run_one(argv[0], argv[1:])))


if __name__ == "__main__":
    main()
