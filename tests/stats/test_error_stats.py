"""Per-trajectory error statistics (issue: what a mean MSE hides) and paired comparisons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from set_lightning.data import CLOSE_ENCOUNTER, NBodyDataModule, min_pair_distance
from set_lightning.experiments.stats import benjamini_hochberg, paired_comparison
from set_lightning.lit import NBodyLightningModule, error_summary
from set_lightning.models import build_model

HERE = Path(__file__).resolve().parent


def test_error_summary_matches_numpy():
    rng = np.random.default_rng(0)
    per = rng.lognormal(size=257)
    dist = rng.uniform(0.0, 0.5, size=257)
    out = error_summary(torch.tensor(per), torch.tensor(dist), close_below=0.1)
    for key, q in (("median", 50), ("p90", 90), ("p99", 99)):
        assert out[f"pos_mse_{key}"] == pytest.approx(np.percentile(per, q), rel=1e-12)
    assert out["pos_mse_max"] == per.max()
    assert out["pos_mse_close"] == pytest.approx(per[dist < 0.1].mean(), rel=1e-12)
    assert out["pos_mse_calm"] == pytest.approx(per[dist >= 0.1].mean(), rel=1e-12)
    assert out["close_frac"] == pytest.approx(np.mean(dist < 0.1))
    # the mean of the two groups, weighted by their shares, is the overall mean
    f = out["close_frac"]
    assert f * out["pos_mse_close"] + (1 - f) * out["pos_mse_calm"] == pytest.approx(per.mean(), rel=1e-12)


def test_min_dist_is_the_closest_pair_over_the_stored_frames(tmp_path):
    dm = NBodyDataModule(n_train=4, n_val=4, n_test=30, history=2, batch_size=30, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("test")
    traj = dm.trajectories("test").x  # (B, T, N, 3) float64
    window = traj[:, 30:41].numpy()
    brute = np.full(len(window), np.inf)
    for b in range(len(window)):  # straightforward loop: the oracle
        for t in range(window.shape[1]):
            for i in range(window.shape[2]):
                for j in range(i + 1, window.shape[2]):
                    brute[b] = min(brute[b], np.linalg.norm(window[b, t, i] - window[b, t, j]))
    np.testing.assert_allclose(dm.datasets["test"].min_dist.numpy(), brute, rtol=1e-6)
    np.testing.assert_allclose(min_pair_distance(traj[:, 30:41]).numpy(), brute, rtol=1e-12)
    batch = next(iter(dm.test_dataloader()))
    assert batch["min_dist"].shape == (30,)


def test_logged_split_statistics_equal_a_recomputation(tmp_path):
    dm = NBodyDataModule(n_train=8, n_val=8, n_test=64, history=1, batch_size=10, cache_dir=str(tmp_path))
    module = NBodyLightningModule(build_model("linear", time=0.9), lr=1e-3, close_encounter=0.3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(module, datamodule=dm, verbose=False)[0]
    ds = dm.datasets["test"]
    with torch.no_grad():
        x_pred = ds.x[:, -1] + 0.9 * ds.v[:, -1]
    per = (x_pred - ds.x_target).square().mean((-1, -2)).double().numpy()
    close = ds.min_dist.numpy() < 0.3
    assert 0 < close.sum() < len(close)  # both groups are present at this threshold
    assert out["test/pos_mse"] == pytest.approx(per.mean(), rel=1e-5)
    assert out["test/pos_mse_median"] == pytest.approx(np.median(per), rel=1e-5)
    assert out["test/pos_mse_p90"] == pytest.approx(np.percentile(per, 90), rel=1e-5)
    assert out["test/pos_mse_max"] == pytest.approx(per.max(), rel=1e-5)
    assert out["test/pos_mse_close"] == pytest.approx(per[close].mean(), rel=1e-5)
    assert out["test/pos_mse_calm"] == pytest.approx(per[~close].mean(), rel=1e-5)
    assert module.per_trajectory["test"].shape == (64, 2)
    assert CLOSE_ENCOUNTER == NBodyLightningModule(build_model("linear")).hparams.close_encounter


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_percentiles_are_gathered_across_ddp_ranks(tmp_path):
    out = tmp_path / "metrics.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(HERE / "ddp_test_script.py"), str(tmp_path), str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["n_gathered"] == 40  # both ranks' 20 trajectories, not one rank's
    dm = NBodyDataModule(n_train=8, n_val=8, n_test=40, history=1, batch_size=6, cache_dir=str(tmp_path))
    dm.setup("test")
    ds = dm.datasets["test"]
    per = ((ds.x[:, -1] + 0.9 * ds.v[:, -1]) - ds.x_target).square().mean((-1, -2)).double().numpy()
    assert ddp["test/pos_mse_median"] == pytest.approx(np.median(per), rel=1e-5)
    assert ddp["test/pos_mse_p99"] == pytest.approx(np.percentile(per, 99), rel=1e-5)
    assert ddp["test/pos_mse_max"] == pytest.approx(per.max(), rel=1e-5)
    # a single rank's half would give another median
    halves = [np.median(per[r::2]) for r in range(2)]
    assert all(abs(h - np.median(per)) > 1e-9 for h in halves)


def _synthetic(gap: float, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed per-trajectory errors of B, and A = B scaled by (1 - gap) times paired noise."""
    rng = np.random.default_rng(seed)
    b = rng.lognormal(mean=-6, sigma=1.5, size=n)
    a = b * (1 - gap) * rng.lognormal(mean=-0.02, sigma=0.2, size=n)
    return a, b


def test_paired_bootstrap_covers_the_true_ratio():
    covered = 0
    for seed in range(20):
        a, b = _synthetic(0.1, seed=seed)
        # the true ratio of population means: (1 - gap) * E[lognormal(-0.02, 0.2)]
        truth = 0.9 * np.exp(-0.02 + 0.2**2 / 2)
        c = paired_comparison(a, b, n_boot=2000, seed=seed)
        covered += c.ratio_lo <= truth <= c.ratio_hi
        assert c.ratio_lo < c.ratio < c.ratio_hi
    assert covered >= 16  # a 95% interval: 19 of 20 expected


def test_paired_comparison_separates_a_large_gap_and_not_a_null():
    a, b = _synthetic(0.3)
    c = paired_comparison(a, b)
    assert c.ratio_hi < 1.0 and c.p_wilcoxon < 1e-10 and c.frac_a_better > 0.8
    rng = np.random.default_rng(1)
    base = rng.lognormal(size=500)
    null = paired_comparison(base * rng.lognormal(0, 0.1, 500), base * rng.lognormal(0, 0.1, 500))
    assert null.ratio_lo < 1.0 < null.ratio_hi and null.p_wilcoxon > 0.01
    with pytest.raises(ValueError, match="same length"):
        paired_comparison(a, b[:-1])


def test_benjamini_hochberg_matches_the_definition():
    p = [0.01, 0.04, 0.03, None, 0.5]
    adj = benjamini_hochberg(p)
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.0533, 0.0533, 0.5
    assert adj[3] is None
    assert adj[0] == pytest.approx(0.04) and adj[2] == pytest.approx(0.04 * 4 / 3)
    assert adj[1] == pytest.approx(0.04 * 4 / 3) and adj[4] == pytest.approx(0.5)


def test_sweep_report_pairs_each_variant_with_the_reference_on_shared_trajectories(tmp_path, monkeypatch):
    from set_lightning.experiments.report import paired_markdown

    monkeypatch.chdir(tmp_path)
    a, b = _synthetic(0.3)
    rows = []
    for group, errs in (("full", b), ("other", a)):
        for seed in (0, 1):
            run_dir = tmp_path / group / f"seed_{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "per_traj_test.json").write_text(json.dumps({"pos_mse": list(errs), "min_dist": []}))
            rows.append({"group": group, "variant": group, "seed": seed, "run_dir": f"{group}/seed_{seed}"})
    text = paired_markdown(rows, "full")
    c = paired_comparison(a, b)
    assert f"| other | {c.ratio:.3f} [{c.ratio_lo:.3f}, {c.ratio_hi:.3f}] |" in text and "| full |" not in text
    # a report rebuilt from results.jsonl alone (no run directories) has no paired table
    assert paired_markdown([dict(r, run_dir="missing") for r in rows], "full") == ""
