"""The shipped data configs of the springs and gravity systems: they parse, and a tiny copy simulates and loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import REPO, run_cli, tiny_args

from set_lightning.lightning_cli import make_cli
from set_lightning.data import NBodyDataModule

CONFIGS = {
    "springs5": {"system": "springs", "n_particles": 5, "n_train": 3000, "input_frame": 30, "target_frame": 40},
    "gravity100": {"system": "gravity", "n_particles": 100, "n_train": 10000, "n_val": 2000, "n_test": 2000,
                   "input_frame": 30, "target_frame": 40},
    "gravity5": {"system": "gravity", "n_particles": 5, "mass_range": [0.1, 1.0], "dt": 0.01, "sample_freq": 20,
                 "input_frame": 9, "target_frame": 60},
}


def _data_section(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "data" / f"{name}.yaml").read_text())["data"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses_with_a_model_config(capsys, monkeypatch, name):
    """``python -m set_lightning fit --config conf/set.yaml --config conf/data/NAME.yaml --print_config``
    (in process)."""
    monkeypatch.setattr(sys, "argv", ["set_lightning"])  # the arguments go to make_cli, not pytest's argv
    with pytest.raises(SystemExit) as done:
        make_cli(["fit", "--config", str(REPO / "conf" / "set.yaml"), "--config",
                  str(REPO / "conf" / "data" / f"{name}.yaml"), "--print_config"])
    assert done.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    for key, value in CONFIGS[name].items():
        assert printed[key] == value, key
    assert printed["history"] == 10  # the model config's value survives


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_tiny_copy_simulates_and_loads(tmp_path, name):
    """The config's system and physics with 2/1/1 trajectories and one integration step per frame."""
    data = _data_section(name)
    frames_needed = data["target_frame"] + 1 + (0 if data["system"] == "gravity" else 1)
    tiny = {**data, "n_train": 2, "n_val": 1, "n_test": 1, "sample_freq": 1, "steps": frames_needed,
            "history": 2, "batch_size": 2, "cache_dir": str(tmp_path)}
    dm = NBodyDataModule(**tiny)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    n = data["n_particles"]
    assert batch["x"].shape == (2, 2, n, 3) and batch["x_target"].shape == (2, n, 3)
    assert torch.isfinite(batch["x"]).all() and torch.isfinite(batch["x_target"]).all()
    if data["system"] == "springs":
        assert batch["edge_attr"].shape == (2, n, n) and torch.equal(batch["charges"], torch.ones(2, n, 1))
    else:
        low, high = data.get("mass_range", [1.0, 1.0])
        assert low <= batch["charges"].min() and batch["charges"].max() <= high
    assert len(list(Path(tmp_path).glob(f"{data['system']}_*.pt"))) == 3


def test_springs_graph_reaches_the_model_or_a_one_line_error_says_how(tmp_path, data_cache):
    """SET on springs samples: without edge_dim the model reads the spring graph (edge_dim follows the data);
    an edge_dim the command sets against the data stops the run with one error line naming the option; on
    the given spring graph with the springs as edge attribute it trains."""
    base = ["fit", *tiny_args(data_cache), "--data.system=springs", "--trainer.max_epochs=1"]
    (tmp_path / "follows").mkdir()
    res = run_cli(base, cwd=tmp_path / "follows")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(next((tmp_path / "follows" / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["net"]["init_args"]["edge_dim"] == 1
    res = run_cli([*base, "--model.net.edge_dim=0"], cwd=tmp_path)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: model.net.init_args.edge_dim: 0 given, but the "
                                                          "data carry 1 pair")
    assert "set 1" in res.stderr
    res = run_cli([*base, "--model.net.graph=given", "--model.net.edge_dim=1"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("last.ckpt"))
