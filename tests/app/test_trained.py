"""The shipped trained models: each file opens as plain tensors, and `test` on it reproduces its manifest."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli

from set_lightning.trained import TRAINED_DIR, file_sha256, manifest

SHIPPED = manifest()
HEADLINE = ("set_l10_nbody5", "set_l1_nbody5", "egnn_nbody5")
#: the models of README's other-systems table (benchmarks/ship_models.py --study springs5 / gravity100)
OTHER_SYSTEMS = ("egnn_springs5", "set_l1_springs5", "egnn_gravity100", "set_l1_gravity100")
METRICS = {"pos_mse", "pos_mse_median", "pos_mse_p90", "pos_mse_p99"}


def test_the_headline_models_ship_within_the_size_limit():
    assert set(HEADLINE) | set(OTHER_SYSTEMS) <= set(SHIPPED), sorted(SHIPPED)
    total = sum((TRAINED_DIR / e["file"]).stat().st_size for e in SHIPPED.values())
    assert total < 20 * 2**20, total
    for name, entry in SHIPPED.items():
        assert {"config", "data", "seed", "trained_by", "test"} <= set(entry), name
        assert "budget_tflop" in entry or {"budget_s", "budget_clock"} <= set(entry), name  # FLOPs or seconds
        assert {"revision", "machine"} <= set(entry["trained_by"]), name
        assert METRICS <= set(entry["test"]), name
        if "test_slice" in entry:  # a smaller test split the suite reproduces instead of the full one
            assert METRICS | {"n_test"} <= set(entry["test_slice"]), name
            assert entry["test_slice"]["n_test"] < entry["data"]["n_test"], name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_file_is_weights_only_and_is_the_manifests(name):
    entry = SHIPPED[name]
    path = TRAINED_DIR / entry["file"]
    assert file_sha256(path) == entry["sha256"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    assert set(ckpt) >= {"state_dict", "hyper_parameters", "datamodule_hyper_parameters"}
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
    assert ckpt["hyper_parameters"]["net"] == entry["config"]["net"]


#: the split is simulated afresh and the model evaluated in float32: on another CPU the sums round
#: differently (vector width, MKL or ATen kernels). The N = 5 models reproduce their manifests to 1e-6 on
#: both CPUs measured; the N = 100 gravity ones (manifests from an AMD EPYC) to 3.0e-6 and 3.3e-6 on an
#: Intel Xeon with AMX. A wrong model, split or metric is off by percents.
REL_TOL = 2e-5


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_test_reproduces_the_manifest_and_predict_draws(name, tmp_path, data_cache, monkeypatch):
    """From any working directory, by name: the regenerated test split gives the manifest's MSE (to
    :data:`REL_TOL`); a model whose full split takes minutes to simulate (gravity, N = 100) is checked on
    its manifest's smaller split (``test_slice``), and predicts on that split too."""
    from set_lightning.lightning_cli import make_cli

    monkeypatch.chdir(tmp_path)
    expected = SHIPPED[name].get("test_slice", SHIPPED[name]["test"])
    n_test = [f"--data.n_test={expected['n_test']}"] if "n_test" in expected else []
    cli = make_cli(["test", "--ckpt_path", name, f"--data.cache_dir={data_cache}", "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false", *n_test])
    got = float(cli.trainer.callback_metrics["test/pos_mse"])
    assert abs(got / expected["pos_mse"] - 1) < REL_TOL, (got, expected)
    assert (tmp_path / "runs" / "shipped" / name / "metrics.csv").is_file()
    pred = run_cli(["predict", "--ckpt_path", name, f"--data.cache_dir={data_cache}", *(n_test or ["--data.n_test=100"]),
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


def test_a_time_to_accuracy_run_ships_with_its_budget_and_machine(tmp_path, data_cache, monkeypatch):
    """benchmarks/ship_models.py --study: a run of time_to_accuracy.py's worker (tiny, on springs) records who
    trained it on what budget; its best-validation checkpoint ships weights-only, the package's `test` of the
    shipped file gives the run's own test MSE, and the row holds the budget, machine and the smaller split's
    figure."""
    from benchmarks import ship_models
    from benchmarks import time_to_accuracy as tta
    from set_lightning.experiments.spec import variant_run

    monkeypatch.chdir(tmp_path)
    study = tta.STUDIES["springs5"]
    run_dir = tmp_path / "runs" / "springs5" / "egnn" / "seed_0"
    tiny = {"data.n_train": 8, "data.n_val": 4, "data.n_test": 6, "data.batch_size": 4,
            "data.cache_dir": str(data_cache), "model.net.init_args.hidden": 8, "model.net.init_args.n_layers": 1}
    spec = variant_run(study.models["EGNN"], "egnn", 0, run_dir, tta.REPO, base=study.data,
                       overrides={**tta.COMMON, **tiny})
    spec.save()
    tta.worker(str(run_dir), 0.5, "process")
    trained_by = json.loads((run_dir / tta.TRAINED_BY_FILE).read_text())
    assert trained_by["budget_s"] == 0.5 and trained_by["clock"] == "process" and trained_by["train_s"] >= 0.5
    assert {"cpu", "threads", "revision"} <= set(trained_by["machine"])
    curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    assert trained_by["train_s"] == pytest.approx(curve[-1]["train_s"], abs=0.01)  # at train end, not after the test

    row = ship_models.ship_run(run_dir, "EGNN", "tiny_springs", test_slice=3, trained_dir=tmp_path / "trained")
    path = tmp_path / "trained" / "tiny_springs.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in ckpt and row["sha256"] == file_sha256(path)
    result = json.loads((run_dir / "result.json").read_text())
    assert row["test"]["pos_mse"] == pytest.approx(result["test_pos_mse"], rel=1e-6)
    assert row["best_val_pos_mse"] == result["best_val_pos_mse"] and row["seed"] == 0
    assert (row["budget_s"], row["budget_clock"]) == (0.5, "process") and "CPU seconds" in row["budget"]
    assert row["data"]["system"] == "springs" and "cache_dir" not in row["data"]
    assert row["test_slice"]["n_test"] == 3 and METRICS <= set(row["test_slice"])
    assert row["trained_by"]["revision"] == trained_by["revision"]
    assert row["trained_by"]["train_cpu_s"] == curve[-1]["train_s"] and row["steps"] == curve[-1]["step"]
