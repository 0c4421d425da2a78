"""A run written before the renames (commit b1aceb6: SETLightningModule, lightning_cli.py in one file,
no readout option) still tests, and its saved config still trains."""

from __future__ import annotations

import shutil
from pathlib import Path

from cli_helpers import run_cli

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "b1aceb6_run"


def test_a_b1aceb6_checkpoint_still_tests_and_its_config_still_fits(tmp_path, data_cache):
    run = tmp_path / "runs" / "quick" / "version_0"
    shutil.copytree(OLD_RUN, run)
    ckpt = run / "checkpoints" / "best-epoch=000.ckpt"
    out = run_cli(["test", "--ckpt_path", str(ckpt), f"--data.cache_dir={data_cache}",
                   "--trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test/pos_mse:" in out.stdout
    fit = run_cli(["fit", "--config", str(run / "config.yaml"), f"--data.cache_dir={data_cache}",
                   "--trainer.max_epochs=1", "--trainer.logger.init_args.version=again"], cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert (tmp_path / "runs" / "quick" / "again" / "checkpoints" / "last.ckpt").is_file()


def test_the_old_class_names_still_import():
    from set_lightning.lightning_cli import NBodyLightningCLI, SETLightningCLI
    from set_lightning.lit import NBodyLightningModule, SETLightningModule

    assert SETLightningModule is NBodyLightningModule and SETLightningCLI is NBodyLightningCLI
