"""What a checkpoint says about its run: where it lives, what it was trained with, its best score.

A run directory is the logger's folder of one run (``runs/<name>/version_<k>/``, or a sweep's
``<out>/<sweep>/<variant>/seed_<s>/``); its checkpoints are in ``<run>/checkpoints/``. Test, validate
and predict of a checkpoint write into that directory, and resume continues there.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from set_lightning.errors import UserError

#: ``ckpt_path`` values that are not files (Lightning resolves them itself)
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")
_ZIP_MAGIC = b"PK\x03\x04"


def is_checkpoint_file_path(ckpt_path: Optional[str]) -> bool:
    """True when ``ckpt_path`` names a file (not ``None``, ``best``, ``last``, ``registry:...``)."""
    return ckpt_path is not None and str(ckpt_path) not in SPECIAL_CKPT_PATHS and not str(ckpt_path).startswith(
        "registry:")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU (tensors and plain values only).

    Raises:
        UserError: one line naming ``ckpt_path`` when the file is missing, truncated, not a PyTorch
            checkpoint, holds pickled objects (which are never unpickled), or is not a Lightning checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt_path: no such checkpoint file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means the file is unusable
        if head != _ZIP_MAGIC:
            raise UserError(f"ckpt_path: {path} is not a checkpoint file (not a PyTorch archive)") from None
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            # the archive is whole: it holds objects the safe loader refuses
            raise UserError(f"ckpt_path: {path} holds objects that are not plain tensors and values (pickled "
                            "Python objects), which this program will not unpickle (unpickling can run code); "
                            "use a checkpoint written by this program, or re-save its state_dict and "
                            "hyper-parameters as plain values") from None
        raise UserError(f"ckpt_path: {path} is truncated or corrupt (its archive cannot be read); "
                        "use another checkpoint of the run (e.g. last.ckpt) or copy it again") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"ckpt_path: {path} is not a Lightning checkpoint (it holds no state_dict)")
    return ckpt


@dataclass
class CheckpointInfo:
    """A checkpoint file and what it records about its run.

    Attributes:
        path: the checkpoint file.
        run_dir: the run directory it belongs to (the folder above ``checkpoints/``), spelled as the
            run spelled it when the checkpoint was written, where that is the same folder.
        model: the LightningModule's saved hyper-parameters (``net``: class path and init arguments).
        data: the data settings it was trained with (``None`` when it records none).
        best_path: the run's best checkpoint when this one was written (``None`` if unknown).
        best_score: that checkpoint's monitored value (validation position MSE).
        monitor: the monitored metric's name.
    """

    path: Path
    run_dir: Path
    model: dict[str, Any] = field(default_factory=dict)
    data: Optional[dict[str, Any]] = None
    best_path: Optional[str] = None
    best_score: Optional[float] = None
    monitor: str = "val/pos_mse"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "CheckpointInfo":
        """Read ``path`` (see :func:`read_checkpoint` for the errors)."""
        ckpt = read_checkpoint(path)
        path = Path(path)
        state = model_checkpoint_state(ckpt)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        saved_dir = state.get("dirpath")
        if saved_dir and os.path.realpath(saved_dir) == os.path.realpath(path.parent):
            run_dir = Path(saved_dir).parent  # the run's own spelling: Lightning compares dirpaths as strings
        data = ckpt.get("datamodule_hyper_parameters")
        if not data:
            data = _data_from_run_config(run_dir)
        score = state.get("best_model_score", ckpt.get("best_val_pos_mse"))  # a shipped file keeps only the latter
        return cls(
            path=path,
            run_dir=run_dir,
            model={k: v for k, v in dict(ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")},
            data={k: v for k, v in dict(data).items() if not k.startswith("_")} if data else None,
            best_path=state.get("best_model_path") or None,
            best_score=float(score) if score is not None else None,
            monitor=str(state.get("monitor") or "val/pos_mse"),
        )


def model_checkpoint_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The saved state of the first ``ModelCheckpoint`` callback in ``ckpt`` (``{}`` if none)."""
    for key, value in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, dict):
            return value
    return {}


def _data_from_run_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The ``data:`` section of the run's saved ``config.yaml`` (older checkpoints record no data settings)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    try:
        data = (yaml.safe_load(config.read_text()) or {}).get("data")
    except yaml.YAMLError:
        return None
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict):
        data = data["init_args"]
    return data if isinstance(data, dict) else None


def latest_last_checkpoint(root: str | os.PathLike) -> Path:
    """The newest ``<root>/<run>/checkpoints/last.ckpt`` (``fit --ckpt_path last``).

    Raises:
        UserError: there is none.
    """
    found = sorted(Path(root).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"ckpt_path: 'last' found no {Path(root)}/*/checkpoints/last.ckpt (no run of this logger "
                        "name has saved one); pass a checkpoint file")
    return found[-1]


def latest_best_checkpoint(root: str | os.PathLike) -> Path:
    """The best checkpoint of the newest run under ``root`` (``test --ckpt_path best``): the one its
    ``last.ckpt`` records as best, else its newest ``best-*.ckpt``.

    Raises:
        UserError: no run under ``root`` has a checkpoint.
    """
    runs = [p for p in Path(root).glob("*/checkpoints") if any(p.glob("*.ckpt"))]
    if not runs:
        raise UserError(f"ckpt_path: 'best' found no {Path(root)}/*/checkpoints/*.ckpt to evaluate")
    newest = max(runs, key=lambda d: max(f.stat().st_mtime for f in d.glob("*.ckpt")))
    last = newest / "last.ckpt"
    if last.is_file():
        recorded = CheckpointInfo.read(last).best_path
        if recorded and Path(recorded).is_file():
            return Path(recorded)
        if recorded and (newest / Path(recorded).name).is_file():  # the run was moved since
            return newest / Path(recorded).name
    found = sorted(newest.glob("best*.ckpt"), key=lambda f: f.stat().st_mtime) or [last]
    return found[-1]
