"""Runs written before the renames still test, and their saved configs still train: commit b1aceb6's
(SETLightningModule, lightning_cli.py in one file, no readout option) and an EGNN of commit 12b5566
(``recurrent``, now ``residual``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from cli_helpers import error_lines, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_RUN = FIXTURES / "b1aceb6_run"
#: EGNN (hidden 8, 1 layer) from conf/egnn.yaml, 1 epoch, made by commit 12b5566: its config.yaml and
#: checkpoint say ``recurrent: true``
OLD_EGNN_RUN = FIXTURES / "12b5566_egnn_run"


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


def test_an_egnn_written_with_recurrent_still_tests_and_its_config_still_fits(tmp_path, data_cache):
    run = tmp_path / "runs" / "quick" / "version_0"
    shutil.copytree(OLD_EGNN_RUN, run)
    assert "recurrent: true" in (run / "config.yaml").read_text()
    ckpt = run / "checkpoints" / "best-epoch=000.ckpt"
    warnings = {"PYTHONWARNINGS": "default"}
    out = run_cli(["test", "--ckpt_path", str(ckpt), f"--data.cache_dir={data_cache}",
                   "--trainer.enable_progress_bar=false"], cwd=tmp_path, env=warnings)
    assert out.returncode == 0, out.stderr[-2000:]
    # the checkpoint's old name is read as the new one: nothing to warn the user about
    assert "test/pos_mse:" in out.stdout and "recurrent" not in out.stderr
    fit = run_cli(["fit", "--config", str(run / "config.yaml"), f"--data.cache_dir={data_cache}",
                   "--trainer.max_epochs=1", "--trainer.logger.init_args.version=again"], cwd=tmp_path, env=warnings)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "recurrent is deprecated, it is called residual" in fit.stderr  # a config is the user's to update
    again = tmp_path / "runs" / "quick" / "again"
    assert "recurrent: true" in (again / "config.yaml").read_text()  # the run's config, as it was given
    net = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["net"]
    assert net["init_args"]["residual"] is True and "recurrent" not in net["init_args"]  # the new name
    both = run_cli(["fit", "--config", "conf/egnn.yaml", "--model.net.init_args.residual=false",
                    "--model.net.init_args.recurrent=true", "--trainer.logger=false"], cwd=tmp_path)
    (line,) = error_lines(both.stderr)
    assert both.returncode != 0 and "Traceback" not in both.stderr
    assert "recurrent is the old name of residual: pass residual only" in line


def test_the_old_names_still_import():
    import warnings

    from set_lightning import entry
    from set_lightning.lightning_cli import NBodyLightningCLI, SETLightningCLI
    from set_lightning.lit import NBodyLightningModule, SETLightningModule

    assert SETLightningModule is NBodyLightningModule and SETLightningCLI is NBodyLightningCLI
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from set_lightning.cli import main
    assert main is entry.main
