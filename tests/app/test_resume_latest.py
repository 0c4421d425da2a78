"""``last.ckpt`` is the latest validated state, so an interrupted fit resumes where it stopped, not at its
last improvement (Lightning rewrites ``last.ckpt`` only with a new best checkpoint)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from set_lightning.data import NBodyDataModule
from set_lightning.lightning_cli import make_cli
from set_lightning.lit import NBodyLightningModule
from set_lightning.models import build_model
from set_lightning.resume import LastIsLatest


def _fit(tmp_path, data_cache, with_callback: bool) -> tuple[int, int, int]:
    """A fit whose best validation is its first (monitored in "max" mode while the error falls):
    (final step, step in last.ckpt, step in the best checkpoint)."""
    dm = NBodyDataModule(n_train=16, n_val=8, n_test=8, history=1, batch_size=8, cache_dir=str(data_cache))
    torch.manual_seed(0)
    module = NBodyLightningModule(build_model("egnn", hidden=8, n_layers=1), lr=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/pos_mse", mode="max", save_last=True, filename="best")
    callbacks = [ckpt, LastIsLatest()] if with_callback else [ckpt]
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    step = lambda name: torch.load(tmp_path / name, weights_only=False)["global_step"]  # noqa: E731
    return trainer.global_step, step("last.ckpt"), step("best.ckpt")


def test_last_checkpoint_is_the_latest_validation(tmp_path, data_cache):
    final, last, best = _fit(tmp_path / "with", data_cache, with_callback=True)
    assert best < final  # the case in question: no new best after the first validation
    assert last == final
    # without it, Lightning's last.ckpt stays at the last best (what this callback is for)
    final, last, best = _fit(tmp_path / "without", data_cache, with_callback=False)
    assert last == best < final


def test_the_cli_adds_it_to_its_trainer(tmp_path):
    # run=False is how the sweep's and the study's worker build the trainer they fit with
    cli = make_cli(["--config", "conf/egnn.yaml", "--config", "conf/data/small.yaml",
                    f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    assert sum(isinstance(c, LastIsLatest) for c in cli.trainer.callbacks) == 1
