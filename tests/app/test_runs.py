"""One run end to end: fit says where it went, TensorBoard and metrics.csv hold what an ablation needs,
test / predict of a checkpoint use its settings and write into its run, conflicting options are errors."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import REPO, error_lines, run_cli, tiny_args

EPOCHS = 3
QUIET = {"PYTHONWARNINGS": "default"}  # warnings visible: the noise checks below must see them


def _summary(text: str) -> dict[str, str]:
    """The end-of-run summary lines ``key: value``."""
    keys = ("run directory", "checkpoint", "best checkpoint", "best val/pos_mse", "test/pos_mse", "predictions")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in keys and value.strip():
            out.setdefault(key, value.strip())
    return out


def _event_accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _tensorboard_hparams(run_dir: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _event_accumulator(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    """A tiny SET run (lower-case model name on the command line), fitted once for this module."""
    cwd = tmp_path_factory.mktemp("run")
    args = [a if not a.startswith("--model.net=") else "--model.net=set" for a in tiny_args(data_cache)]
    args = [a for a in args if a != "--trainer.enable_model_summary=false"] + [f"--trainer.max_epochs={EPOCHS}"]
    fit = run_cli(["fit", *args], cwd=cwd, env=QUIET)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = cwd / "runs" / "quick" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    return {"cwd": cwd, "fit": fit, "run": run, "best": best, "cache": data_cache}


def test_fit_says_where_it_went_and_prints_no_noise(trained):
    out = trained["fit"].stdout + trained["fit"].stderr
    summary = _summary(trained["fit"].stdout)
    assert summary["run directory"] == "runs/quick/version_0"
    assert summary["best checkpoint"] == f"runs/quick/version_0/checkpoints/{trained['best'].name}"
    state = torch.load(trained["best"], map_location="cpu", weights_only=True)
    score = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
    assert float(summary["best val/pos_mse"]) == pytest.approx(float(score), rel=1e-5)
    # the noise of issue 10, gone (the model summary is still there, without its FLOPs column)
    assert "Trainable params" in out
    for noise in ("already configured", "FLOPs", "v_num", "log_every_n_steps", "dirpath has changed"):
        assert noise not in out, noise


def test_tensorboard_hparams_metrics_and_csv(trained):
    run = trained["run"]
    hparams = _tensorboard_hparams(run)
    for key in ("net.equivariant", "net.spatial_attention", "net.temporal_attention", "net.adjacency", "net.hidden",
                "net.n_blocks", "data.n_particles", "data.history", "data.n_train", "data.seed", "seed", "lr", "model"):
        assert key in hparams, key
    assert not [k for k in hparams if k.startswith("_") or "instantiator" in k]
    assert hparams["net.hidden"] == 8 and hparams["data.history"] == 3 and hparams["data.n_train"] == 48
    assert hparams["seed"] == 0 and hparams["model"] == "SET" and hparams["net.equivariant"] == 1  # TB: bools as 0/1
    assert "_instantiator" not in (run / "hparams.yaml").read_text() and "net.temporal_attention" in (
        run / "hparams.yaml").read_text()
    acc = _event_accumulator(run)
    val = [e.value for e in acc.Scalars("val/pos_mse")]
    assert len(val) == EPOCHS
    assert acc.Scalars("hp/val_pos_mse")[-1].value == pytest.approx(min(val))  # the best, not the last
    assert len(acc.Scalars("train/loss_epoch")) == EPOCHS  # a training curve per epoch
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] == "fit"]
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert [float(r["val/pos_mse"]) for r in rows] == pytest.approx(val, rel=1e-5)
    assert all(float(r["train/loss_epoch"]) > 0 for r in rows)


def test_checkpoint_loads_without_the_cli(trained):
    from set_lightning.lit import NBodyLightningModule
    from set_lightning.models import SET

    module = NBodyLightningModule.load_from_checkpoint(trained["best"], map_location="cpu")
    assert isinstance(module.net, SET) and module.net.hparams["hidden"] == 8
    assert module.best_val_pos_mse < float("inf")


def test_test_and_predict_of_a_checkpoint_use_its_settings_and_write_into_its_run(trained):
    cwd, run = trained["cwd"], trained["run"]
    config = (run / "config.yaml").read_bytes()
    base = [f"--data.cache_dir={trained['cache']}", "--trainer.accelerator=cpu", f"--ckpt_path={trained['best']}"]
    test = run_cli(["test", *base], cwd=cwd, env=QUIET)
    assert test.returncode == 0, test.stderr[-3000:]
    summary = _summary(test.stdout)
    assert summary["run directory"] == "runs/quick/version_0"
    assert summary["best checkpoint"].endswith(trained["best"].name)
    assert "dirpath has changed" not in test.stdout + test.stderr
    assert sorted(p.name for p in (cwd / "runs" / "quick").iterdir()) == ["version_0"]  # no new version
    assert (run / "config.yaml").read_bytes() == config and (run / "config_test_1.yaml").is_file()
    tested = float(summary["test/pos_mse"])
    assert _event_accumulator(run).Scalars("test/pos_mse")[-1].value == pytest.approx(tested, rel=1e-5)
    with open(run / "metrics.csv", newline="") as f:
        assert [float(r["test/pos_mse"]) for r in csv.DictReader(f) if r["stage"] == "test"] == pytest.approx([tested])

    # predict: no data options, so the checkpoint's (history 3, 16 test trajectories), not defaults.yaml's (5, 200)
    pred = run_cli(["predict", *base], cwd=cwd, env=QUIET)
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert _summary(pred.stdout)["run directory"] == "runs/quick/version_0"
    saved = torch.load(run / "predictions.pt")
    assert saved["x"].shape == (16, 3, 5, 3) and saved["x_pred"].shape == (16, 5, 3)
    per = ((saved["x_pred"] - saved["x_target"]) ** 2).mean(dim=(1, 2))
    assert torch.allclose(saved["pos_mse_per_traj"], per, atol=1e-6)
    assert float(tested) == pytest.approx(per.mean().item(), rel=1e-4)  # same trajectories as test
    assert saved["min_dist"].shape == (16,) and (saved["min_dist"] > 0).all()
    assert saved["x_path"].shape == (16, 11, 5, 3)  # frames 30..40
    assert torch.equal(saved["x_path"][:, 0], saved["x"][:, -1]) and torch.equal(saved["x_path"][:, -1],
                                                                                 saved["x_target"])
    assert (run / "predictions.png").stat().st_size > 10000
    assert "predictions" in _event_accumulator(run).Tags()["images"]
    assert sorted(p.name for p in (cwd / "runs" / "quick").iterdir()) == ["version_0"]


def test_conflicting_settings_are_an_error_unless_asked_for(trained):
    cwd, ckpt = trained["cwd"], trained["best"]
    base = [f"--data.cache_dir={trained['cache']}", "--trainer.accelerator=cpu", f"--ckpt_path={ckpt}"]
    files = sorted(p.name for p in trained["run"].iterdir())
    # issue 10's silent wrong answer: EGNN's config (history 1) on a SET checkpoint trained with history 3
    res = run_cli(["test", "--config", str(REPO / "conf" / "egnn.yaml"), *base], cwd=cwd)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    (line,) = error_lines(res.stderr)
    assert "model.net: checkpoint SET, command EGNN" in line and "data.history: checkpoint 3, command 1" in line
    res = run_cli(["validate", "--data.history=5", *base], cwd=cwd)
    (line,) = error_lines(res.stderr)
    assert res.returncode != 0 and "data.history: checkpoint 3, command 5" in line and "--allow_data_override" in line
    assert sorted(p.name for p in trained["run"].iterdir()) == files  # nothing written
    # on purpose: 7 particles instead of the 5 it was trained on
    res = run_cli(["predict", "--data.n_particles=7", "--allow_data_override=true", *base], cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"running on other data .*n_particles=7 \(trained with 5\)", res.stdout)
    assert torch.load(trained["run"] / "predictions.pt")["x"].shape == (16, 3, 7, 3)


def test_resume_keeps_the_runs_config(trained, tmp_path):
    # a copy of the run: resume there (2 more epochs) without touching the shared run
    run = tmp_path / "runs" / "quick" / "version_0"
    shutil.copytree(trained["run"], run)
    config = (run / "config.yaml").read_bytes()
    args = [a for a in tiny_args(trained["cache"]) if not a.startswith("--trainer.max_epochs")]
    res = run_cli(["fit", *args, f"--trainer.max_epochs={EPOCHS + 1}", "--ckpt_path=last"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _summary(res.stdout)["run directory"] == "runs/quick/version_0"
    assert (run / "config.yaml").read_bytes() == config
    assert "max_epochs: 4" in (run / "config_resume_1.yaml").read_text()
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f) if r["stage"] == "fit"] == list(range(EPOCHS + 1))
