"""End to end: ``python -m set_lightning fit`` on a tiny config, then ``test`` and ``predict``."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cli_helpers import run_cli, tiny_args


def _ckpts(run_root: Path) -> list[Path]:
    return sorted(run_root.rglob("*.ckpt"))


def test_fit_then_test_then_predict(tmp_path, data_cache):
    fit = run_cli(["fit", *tiny_args(data_cache)], cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = _ckpts(tmp_path / "runs")
    names = {p.name for p in ckpts}
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names), names
    # TensorBoard event files and the saved config land under runs/
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "runs").rglob("config.yaml"))

    best = next(p for p in ckpts if p.name.startswith("best-"))
    test = run_cli(["test", *tiny_args(data_cache), f"--ckpt_path={best}"], cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    out = test.stdout + test.stderr
    match = re.search(r"test/pos_mse\s*[│|]?\s*([0-9.eE+-]+)", out)
    assert match, out[-3000:]
    assert 0.0 < float(match.group(1)) < 10.0

    pred = run_cli(["predict", *tiny_args(data_cache), f"--ckpt_path={best}"], cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    written = list((tmp_path / "runs").rglob("predictions.pt"))
    assert len(written) == 1, written
    pred_dir = written[0].parent
    saved = torch.load(written[0])
    assert saved["x_pred"].shape == (16, 5, 3) and saved["x"].shape == (16, 3, 5, 3)
    assert torch.isfinite(saved["x_pred"]).all()
    assert torch.allclose(saved["pos_mse"], ((saved["x_pred"] - saved["x_target"]) ** 2).mean())
    assert (pred_dir / "predictions.png").stat().st_size > 1000


def test_print_config_shows_model_and_data(tmp_path):
    res = run_cli(["fit", "--print_config"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "class_path: set_lightning.models.SET" in res.stdout
    assert "n_particles: 5" in res.stdout and "input_frame: 30" in res.stdout


def test_config_files_and_dotted_overrides_compose(tmp_path):
    res = run_cli(
        ["fit", "--config", str(Path(__file__).resolve().parents[2] / "conf" / "egnn.yaml"),
         "--trainer.max_epochs", "7", "--data.n_particles", "20", "--print_config"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "class_path: set_lightning.models.EGNN" in res.stdout
    assert "max_epochs: 7" in res.stdout and "n_particles: 20" in res.stdout
