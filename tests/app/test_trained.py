"""The shipped trained models: each file opens as plain tensors, and `test` on it reproduces its manifest."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli

from set_lightning.trained import TRAINED_DIR, file_sha256, manifest

SHIPPED = manifest()
HEADLINE = ("set_l10_nbody5", "set_l1_nbody5", "egnn_nbody5")


def test_the_headline_models_ship_within_the_size_limit():
    assert set(HEADLINE) <= set(SHIPPED), sorted(SHIPPED)
    total = sum((TRAINED_DIR / e["file"]).stat().st_size for e in SHIPPED.values())
    assert total < 20 * 2**20, total
    for name, entry in SHIPPED.items():
        assert {"config", "data", "seed", "budget_tflop", "trained_by", "test"} <= set(entry), name
        assert {"revision", "machine"} <= set(entry["trained_by"]), name
        assert {"pos_mse", "pos_mse_median", "pos_mse_p90", "pos_mse_p99"} <= set(entry["test"]), name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_file_is_weights_only_and_is_the_manifests(name):
    entry = SHIPPED[name]
    path = TRAINED_DIR / entry["file"]
    assert file_sha256(path) == entry["sha256"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    assert set(ckpt) >= {"state_dict", "hyper_parameters", "datamodule_hyper_parameters"}
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
    assert ckpt["hyper_parameters"]["net"] == entry["config"]["net"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_test_reproduces_the_manifest_and_predict_draws(name, tmp_path, data_cache, monkeypatch):
    """From any working directory, by name: the regenerated test split gives the manifest's MSE (1e-6)."""
    from set_lightning.lightning_cli import make_cli

    monkeypatch.chdir(tmp_path)
    cli = make_cli(["test", "--ckpt_path", name, f"--data.cache_dir={data_cache}", "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false"])
    got = float(cli.trainer.callback_metrics["test/pos_mse"])
    assert abs(got / SHIPPED[name]["test"]["pos_mse"] - 1) < 1e-6, (got, SHIPPED[name]["test"])
    assert (tmp_path / "runs" / "shipped" / name / "metrics.csv").is_file()
    pred = run_cli(["predict", "--ckpt_path", name, f"--data.cache_dir={data_cache}", "--data.n_test=100",
                    "--trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert list((tmp_path / "runs" / "shipped" / name).rglob("predictions.png"))
    assert not list(TRAINED_DIR.glob("*.yaml")) and not list(TRAINED_DIR.glob("*.png"))  # the package is untouched


def test_a_file_carrying_pickled_code_is_refused_with_one_error_line(tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": torch.nn.Linear(1, 1)}, bad)  # a module: pickled code
    out = run_cli(["test", "--ckpt_path", str(bad)], cwd=tmp_path)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt_path" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_every_shipped_model_file_is_in_the_package_data():
    """A non-editable install carries trained/ only through setup.cfg's package_data globs."""
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    packaged = {p for g in cfg["options.package_data"]["set_lightning"].split() for p in TRAINED_DIR.parent.glob(g)}
    files = [p for p in TRAINED_DIR.iterdir() if p.is_file()]
    assert files and [p.name for p in files if p not in packaged] == []
