"""Helpers for the experiments tests: tiny ablation files."""

from __future__ import annotations

from pathlib import Path

import yaml

#: overrides for runs that take seconds: 32/16/15 trajectories, a small SET, no progress bar
TINY = {
    "data.n_train": 32, "data.n_val": 16, "data.n_test": 15, "data.batch_size": 16, "data.history": 2,
    "trainer.max_epochs": 1, "trainer.accelerator": "cpu", "trainer.enable_model_summary": False,
    "trainer.enable_progress_bar": False, "model.net.init_args.hidden": 8, "model.net.init_args.n_blocks": 1,
    "model.net.init_args.n_spatial_layers": 1, "model.net.init_args.n_heads": 2,
}


def write_spec(folder: Path, spec: dict) -> Path:
    """Write ``spec`` as ``folder/ablations/<name>.yaml``."""
    (folder / "ablations").mkdir(parents=True, exist_ok=True)
    path = folder / "ablations" / f"{spec.get('name', 'tiny')}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
