"""Trained models that ship with the package: weights-only checkpoints and their manifest.

``set_lightning/trained/`` holds one file per model, ``<name>.ckpt``: a Lightning checkpoint reduced to
plain tensors and values (the model's weights, the LightningModule's and the data module's settings,
the epoch and step), with no optimiser state and nothing pickled, so ``torch.load(...,
weights_only=True)`` opens it and no code in it runs. ``manifest.json`` beside them says, per name,
what the model is and how it was made: its config, the data settings and seed, the commit and
machine that trained it, its training budget, and its test metrics (mean, median, p90, p99 of the
per-trajectory position MSE) on the regenerated test split.

``python -m set_lightning test --ckpt_path <name>`` (and ``validate``, ``predict``) resolves a
shipped name to its file, from any working directory; the outputs of such a run go to
``runs/shipped/<name>/`` (the package folder is never written to).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
MANIFEST_FILE = TRAINED_DIR / "manifest.json"
#: the checkpoint entries a shipped file keeps (no optimiser, scheduler, loop or callback state)
KEEP = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "hparams_name", "datamodule_hparams_name",
        "pytorch-lightning_version", "epoch", "global_step", "best_val_pos_mse")
#: data settings of the machine that trained it, not of the model
MACHINE_DATA_KEYS = ("cache_dir", "num_workers")


def manifest() -> dict[str, dict[str, Any]]:
    """``{name: entry}`` of the shipped models (empty when none ships)."""
    if not MANIFEST_FILE.is_file():
        return {}
    return json.loads(MANIFEST_FILE.read_text())


def shipped_path(name: Any) -> Optional[Path]:
    """The file of the shipped model ``name``; ``None`` when no shipped model has that name."""
    entry = manifest().get(str(name))
    return TRAINED_DIR / entry["file"] if entry else None


def is_shipped_file(path: Any) -> bool:
    """True when ``path`` is a file in the shipped models' folder."""
    try:
        return Path(path).resolve().parent == TRAINED_DIR
    except (OSError, TypeError):
        return False


def shipped_name(path: Any) -> str:
    """The name a shipped file goes by (its stem)."""
    return Path(path).stem


def strip_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A Lightning checkpoint reduced to what evaluating it needs (see :data:`KEEP`)."""
    out = {k: ckpt[k] for k in KEEP if k in ckpt}
    data = dict(out.get("datamodule_hyper_parameters") or {})
    for key in MACHINE_DATA_KEYS:
        data.pop(key, None)
    out["datamodule_hyper_parameters"] = data
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
