"""The GPU path: CUDA-marked tests that skip cleanly without a GPU (``benchmarks/gpu.py`` runs them).

* a fit through the CLI at ``32-true``, ``16-mixed`` and ``bf16-mixed`` on one GPU;
* the optimised EGCL / ETAL paths on CUDA: fp32 against the float64 CPU result, and under CUDA autocast
  (bf16, fp16) against their fp32 forms, with the residual stream kept in fp32;
* the error statistics gathered on CUDA (one GPU: against the CPU; two GPUs: NCCL DDP, both ranks'
  trajectories gathered);
* a 2-GPU NCCL DDP fit with a TimeBudget stopping both ranks at the same step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import REPO, error_lines, run_cli, tiny_args

sys.path.insert(0, str(REPO / "tests" / "models"))  # model_helpers, test_autocast (also when run alone)

CUDA = torch.cuda.is_available()
TWO_GPUS = CUDA and torch.cuda.device_count() >= 2
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
GPU = ["--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false"]


def _gpu_args(cache: Path) -> list[str]:
    return [a for a in tiny_args(cache) if not a.startswith("--trainer.accelerator")]


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_fit_on_one_gpu(precision, tmp_path, data_cache):
    res = run_cli(["fit", *_gpu_args(data_cache), *GPU, f"--trainer.precision={precision}"], cwd=tmp_path)
    assert res.returncode == 0 and not error_lines(res.stderr), res.stderr[-4000:]
    assert "GPU available: True (cuda), used: True" in res.stdout + res.stderr
    last = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
    with open(next((tmp_path / "runs").rglob("metrics.csv"))) as f:
        assert "val/pos_mse" in f.readline()


def _models():
    from model_helpers import TINY_SET
    from set_lightning.models import EGNN, SET

    return {"set": lambda: SET(**{**TINY_SET, "dropout": 0.0}),
            "set_knn": lambda: SET(**{**TINY_SET, "dropout": 0.0}, graph="knn", k=3),
            "egnn": lambda: EGNN(hidden=16, n_layers=2, attention=True, n_heads=2)}


@pytest.mark.parametrize("name", ["set", "set_knn", "egnn"])
def test_fast_paths_on_cuda_match_fp32_and_keep_the_residual_stream_fp32(name):
    from model_helpers import random_inputs
    from test_autocast import _stream_dtypes

    torch.manual_seed(0)
    model = _models()[name]().eval()
    x, v, q = random_inputs(seed=0)
    with torch.no_grad():
        ref_x, ref_v = model.double()(x, v, q)  # float64 on the CPU
        model = model.float().cuda()
        cx, cv = (t.float().cuda() for t in (x, v))
        fx, fv = model(cx, cv, q.float().cuda())
        assert (fx.double().cpu() - ref_x).abs().max() < 1e-4 and (fv.double().cpu() - ref_v).abs().max() < 1e-4
        scale = ref_x.abs().max().item()
        for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
            with torch.autocast("cuda", dtype=dtype):
                ax, av = model(cx, cv, q.float().cuda())
            assert (ax.float() - fx).abs().max().item() < tol * scale, (dtype, name)
            assert (av.float() - fv).abs().max().item() < tol * max(1.0, fv.abs().max().item()), (dtype, name)
    for dtype in (torch.bfloat16, torch.float16):
        assert set(_stream_dtypes(model, "cuda", dtype, device="cuda")) == {torch.float32}


def test_error_statistics_on_cuda_match_the_cpu(data_cache):
    import lightning.pytorch as pl

    from set_lightning.data import NBodyDataModule
    from set_lightning.lit import NBodyLightningModule
    from set_lightning.models import build_model

    stats = {}
    for accelerator in ("cpu", "gpu"):
        dm = NBodyDataModule(n_train=8, n_val=8, n_test=40, history=1, batch_size=6, cache_dir=str(data_cache))
        module = NBodyLightningModule(build_model("linear", time=0.9), lr=1e-3)
        trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.test(module, datamodule=dm, verbose=False)
        stats[accelerator] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert module.per_trajectory["test"].shape == (40, 2)
    assert stats["gpu"].keys() == stats["cpu"].keys()
    for key, value in stats["cpu"].items():
        assert stats["gpu"][key] == pytest.approx(value, rel=1e-5, nan_ok=True), key


@pytest.mark.skipif(not TWO_GPUS, reason="needs 2 CUDA devices")
def test_error_statistics_gathered_across_nccl_ranks(tmp_path):
    out = tmp_path / "metrics.json"
    script = REPO / "tests" / "stats" / "ddp_test_script.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(script), str(tmp_path), str(out), "gpu"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(out.read_text())["n_gathered"] == 40


@pytest.mark.skipif(not TWO_GPUS, reason="needs 2 CUDA devices")
def test_nccl_ddp_time_budget_stops_both_ranks_together(tmp_path, data_cache):
    probe = tmp_path / "probe"
    res = run_cli(["fit", *_gpu_args(data_cache), "--trainer.accelerator=gpu", "--trainer.devices=2",
                   "--trainer.strategy=ddp", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=-1",
                   "--data.n_train=160", "--data.batch_size=8",
                   "--trainer.callbacks+=set_lightning.callbacks.TimeBudget", "--trainer.callbacks.budget_s=5",
                   "--trainer.callbacks.clock=wall",
                   "--trainer.callbacks+=ddp_probe.RankProbe", f"--trainer.callbacks.out_dir={probe}",
                   "--trainer.callbacks.slow_rank=1"],
                  cwd=tmp_path, env={"PL_DISABLE_FORK": "1",
                                     "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "app"), *sys.path])},
                  timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "distributed_backend=nccl" in res.stdout + res.stderr
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["global_step"] == r1["global_step"] and r0["lrs"] == r1["lrs"]
    assert np.isclose(r0["param_sum"], r1["param_sum"], rtol=0, atol=0)


def test_ladder_units_share_one_gpu_and_record_its_wall_clock(tmp_path, data_cache):
    from set_lightning.experiments.ladder import Ladder, Unit, pending

    ladder = Ladder(tmp_path / "results" / "study", REPO, ["conf/data/small.yaml"], tmp_path / "runs")
    tiny = {"config": "conf/egnn.yaml", "model.net.init_args.hidden": 8, "model.net.init_args.n_layers": 1,
            "data.cache_dir": str(data_cache), "data.n_train": 100, "data.n_val": 50, "data.n_test": 50}
    units = [Unit("EGNN", "lr=0.0005", tiny, seed, 1e-7) for seed in (0, 1)]
    statuses = []
    ladder.run_all(pending(ladder, units), parallel=2, log=statuses.append, runs_per_gpu=2)  # both on the first GPU
    assert len(statuses) == 2 and all(s.startswith("done EGNN") for s in statuses), statuses
    for row in ladder.rows():
        assert row["machine"]["device"] == torch.cuda.get_device_name(0) and row["machine"]["clock"] == "wall"
        assert row["machine_key"].endswith(torch.cuda.get_device_name(0) + " shared by 2")  # never meets a CPU's
        assert row["machine"]["gpu_shared_by"] == 2
