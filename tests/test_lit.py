"""NBodyLightningModule: every registered model trains, validates and tests through the same module."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from set_lightning.data import NBodyDataModule
from set_lightning.lit import NonFiniteLossError, NBodyLightningModule
from set_lightning.models import MODELS, build_model

TINY = {
    "set": dict(hidden=8, n_blocks=1, n_spatial_layers=1, n_heads=2),
    "egnn": dict(hidden=8, n_layers=2),
    "mlp": dict(hidden=8, n_frames=2),
    "linear": dict(),
    "lstm": dict(hidden=8),
}


@pytest.fixture(scope="module")
def tiny_data(data_cache):
    dm = NBodyDataModule(n_train=16, n_val=8, n_test=8, history=2, batch_size=8, cache_dir=str(data_cache))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_fits_and_tests(name, tiny_data):
    assert set(TINY) == set(MODELS)
    torch.manual_seed(0)
    module = NBodyLightningModule(build_model(name, **TINY[name]), lr=1e-3)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, datamodule=tiny_data)
    out = trainer.test(module, datamodule=tiny_data, verbose=False)[0]
    assert 0 < out["test/pos_mse"] < 10 and 0 < out["test/vel_mse"] < 10
    # the reported figure is the MSE of absolute positions over batch x N x 3
    batch = next(iter(tiny_data.test_dataloader()))
    module.eval()
    with torch.no_grad():
        x_pred, _ = module(batch)
    full = torch.cat([b["x_target"] for b in tiny_data.test_dataloader()])
    preds = torch.cat([module(b)[0] for b in tiny_data.test_dataloader()]).detach()
    assert out["test/pos_mse"] == pytest.approx(torch.mean((preds - full) ** 2).item(), rel=1e-5)
    assert x_pred.shape == batch["x_target"].shape


def test_loss_weights_and_schedulers(tiny_data):
    for scheduler in ("none", "cosine", "plateau"):
        module = NBodyLightningModule(build_model("linear"), lr=1e-2, vel_weight=0.0, scheduler=scheduler)
        _trainer(max_epochs=1).fit(module, datamodule=tiny_data)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"), ({"pos_weight": 0.0, "vel_weight": 0.0}, "pos_weight"),
     ({"scheduler": "step"}, "scheduler"), ({"plateau_patience": 0}, "plateau_patience")],
)
def test_bad_hyperparameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NBodyLightningModule(build_model("linear"), **kwargs)


class _Exploding(torch.nn.Module):
    """A stand-in model whose prediction becomes NaN."""

    equivariant = False

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, v, charges):
        return x[:, -1] * self.w * float("nan"), v[:, -1] * self.w


def test_nan_loss_raises_a_clear_error(tiny_data):
    module = NBodyLightningModule(_Exploding())
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        _trainer(max_epochs=1).fit(module, datamodule=tiny_data)


class _SetTime(pl.Callback):
    """Sets Linear's time per epoch (lr is ~0): a good epoch, then a bad one."""

    def __init__(self, times):
        self.times, self.val = times, []

    def on_train_epoch_start(self, trainer, module):
        module.net.time.data.fill_(self.times[trainer.current_epoch])

    def on_validation_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.val.append(float(trainer.callback_metrics["val/pos_mse"]))


def test_hp_val_pos_mse_is_the_best_not_the_last(tiny_data, tmp_path):
    module = NBodyLightningModule(build_model("linear"), lr=1e-12)
    cb = _SetTime([0.7, 5.0])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_epochs=2, callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=tiny_data)
    assert cb.val[1] > 2 * cb.val[0]  # the second epoch is worse
    assert float(trainer.callback_metrics["hp/val_pos_mse"]) == pytest.approx(cb.val[0])
    assert module.best_val_pos_mse == pytest.approx(cb.val[0])
    # kept in the checkpoint, and the checkpoint rebuilds the module without the CLI
    restored = NBodyLightningModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert restored.best_val_pos_mse == pytest.approx(cb.val[0])
    assert restored.hparams["net"] == {"class_path": "set_lightning.models.baselines.Linear", "init_args": {"time": 0.7}}


def test_hparams_for_logging_has_every_setting_and_no_internal_key(tiny_data, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    module = NBodyLightningModule(build_model("set", **TINY["set"]), lr=2e-3)
    flat = module.hparams_for_logging(tiny_data)
    assert flat["model"] == "SET" and flat["lr"] == 2e-3 and flat["seed"] == 7
    assert flat["net.hidden"] == 8 and flat["net.equivariant"] is True and "net.adjacency" in flat
    assert flat["data.history"] == 2 and flat["data.n_train"] == 16 and "data.cache_dir" not in flat
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert not [k for k in flat if k.startswith("_")]
