"""Training options: warm-up, cosine to the end of training, an EMA of the weights, and the TimeBudget callback."""

from __future__ import annotations

import json
import math
import time

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from set_lightning.callbacks import TimeBudget
from set_lightning.data import NBodyDataModule
from set_lightning.lit import NBodyLightningModule
from set_lightning.models import build_model


@pytest.fixture(scope="module")
def dm(data_cache):
    return NBodyDataModule(n_train=40, n_val=8, n_test=8, history=1, batch_size=10, cache_dir=str(data_cache))


class LrLog(Callback):
    """Records the learning rate used by every optimiser step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.progress: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        budgets = [cb for cb in trainer.callbacks if isinstance(cb, TimeBudget)]
        self.progress.append(budgets[0].progress if budgets else 0.0)


def _fit(dm, module, callbacks=(), **kw):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=list(callbacks), **kw)
    trainer.fit(module, datamodule=dm)
    return trainer


def test_warmup_ramps_the_learning_rate_linearly(dm):
    log = LrLog()
    _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2, warmup_steps=8), [log], max_epochs=3)
    assert log.lrs[:8] == pytest.approx([1e-2 * (k + 1) / 8 for k in range(8)])
    assert log.lrs[8:] == pytest.approx([1e-2] * (len(log.lrs) - 8))  # scheduler "none": constant after


def test_cosine_is_stepped_per_batch_to_the_last_step(dm):
    log = LrLog()
    _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2, scheduler="cosine", warmup_steps=2), [log],
         max_epochs=3)
    total = 12  # 3 epochs x 4 batches
    expected = [1e-2 * min(1, (k + 1) / 2) * 0.5 * (1 + math.cos(math.pi * k / total)) for k in range(total)]
    assert log.lrs == pytest.approx(expected)


class WeightLog(Callback):
    """Records Linear's one weight after every optimiser step (before any averaging callback acts)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.values.append(pl_module.net.time.item())


def test_ema_of_the_weights_is_what_training_leaves(dm):
    """``--trainer.callbacks+=EMAWeightAveraging``: the trained weights are the exponential moving average
    of the per-step weights (from the first step), not the last step's."""
    log = WeightLog()
    module = NBodyLightningModule(build_model("linear"), lr=1e-2)
    _fit(dm, module, [log, EMAWeightAveraging(decay=0.5)], max_epochs=2)
    ema = log.values[0]
    for value in log.values[1:]:
        ema = 0.5 * ema + 0.5 * value
    assert len(log.values) == 8
    assert module.net.time.item() == pytest.approx(ema, abs=1e-6)
    assert abs(module.net.time.item() - log.values[-1]) > 1e-4


def test_bad_training_options_name_the_field():
    with pytest.raises(ValueError, match="warmup_steps"):
        NBodyLightningModule(build_model("linear"), warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        NBodyLightningModule(build_model("linear"), warmup_steps=5, scheduler="plateau")
    with pytest.raises(ValueError, match="budget_s"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="clock"):
        TimeBudget(1, clock="gpu")


class Slow(Callback):
    """Makes every training step take at least ``seconds`` of wall-clock time (sleeping)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


def test_time_budget_stops_training_and_records_the_curve(dm, tmp_path):
    curve = tmp_path / "curve.jsonl"
    budget = TimeBudget(0.6, clock="wall", curve_file=str(curve))
    trainer = _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2), [Slow(0.05), budget], max_epochs=-1)
    # stops at the first step past the budget: 0.6 s at >= 0.05 s a step is at most 13 steps
    assert 1 <= trainer.global_step <= 13
    assert 0.6 <= budget.elapsed < 1.5
    rows = [json.loads(line) for line in curve.read_text().splitlines()]
    assert rows == budget.curve and len(rows) == math.ceil(trainer.global_step / 4)  # every epoch started is validated
    for r in rows:
        assert r["train_s"] <= budget.elapsed + 1e-3, (r, budget.elapsed)
        assert {"pos_mse", "pos_mse_median"} <= set(r), r
    assert [r["train_s"] for r in rows] == sorted(r["train_s"] for r in rows)


def test_time_budget_excludes_validation(dm):
    class SlowVal(Callback):
        def on_validation_batch_end(self, *args) -> None:
            time.sleep(0.2)

    budget = TimeBudget(10.0, clock="wall")
    _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2), [SlowVal(), budget], max_epochs=3)
    assert len(budget.curve) == 3 and budget.elapsed < 0.6 * 3  # 3 x 0.2 s of validation sleep not counted


def test_process_clock_ignores_sleep(dm):
    budget = TimeBudget(0.5, clock="process")
    _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2), [Slow(0.1), budget], max_epochs=2)
    assert budget.elapsed < 0.5  # 8 steps x 0.1 s of sleep is wall time, not CPU time: budget not reached


def test_auto_clock_counts_process_time_on_a_cpu(dm):
    budget = TimeBudget(0.5, clock="auto")
    _fit(dm, NBodyLightningModule(build_model("linear"), lr=1e-2), [Slow(0.1), budget], max_epochs=2)
    assert budget.timing == "process" and budget.device == "cpu" and budget.clock == "auto"
    assert budget.elapsed < 0.5  # the sleeps are not counted: process time, as on a CPU it should be


def test_the_machine_record_names_device_and_clock_also_when_a_resumed_fit_has_no_step_left(dm, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from set_lightning.callbacks import RecordMachine

    def fit(ckpt_path=None):
        budget = TimeBudget(100.0, clock="auto")
        record = tmp_path / "machine.json"
        record.unlink(missing_ok=True)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             max_steps=4, callbacks=[budget, RecordMachine(str(record), budget, {"gpu_shared_by": 2}),
                                                     ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        trainer.fit(NBodyLightningModule(build_model("linear"), lr=1e-2), datamodule=dm, ckpt_path=ckpt_path)
        return trainer, json.loads(record.read_text())

    trainer, info = fit()
    assert trainer.global_step == 4 and info["device"] == "cpu" and info["clock"] == "process"
    assert info["revision"] and info["threads"] >= 1 and info["gpu_shared_by"] == 2
    # resumed at max_steps (a worker stopped while testing): the fit loop never starts, the record is still right
    trainer, info = fit(ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 4 and info["device"] == "cpu" and info["clock"] == "process"


def test_cosine_decays_to_the_time_budget(dm):
    log = LrLog()
    budget = TimeBudget(0.5, clock="wall")
    module = NBodyLightningModule(build_model("linear"), lr=1e-2, scheduler="cosine")
    _fit(dm, module, [Slow(0.05), budget, log], max_epochs=-1)
    assert log.lrs[0] == pytest.approx(1e-2)
    # each step's rate follows the spent fraction of the budget, down to ~0 at the end
    assert all(b <= a + 1e-12 for a, b in zip(log.lrs, log.lrs[1:]))
    assert log.lrs[-1] < 0.15 * 1e-2
    # max_epochs is unbounded, so the decay comes from the budget alone: the rate of each step is the
    # cosine of the budget fraction spent when the step was scheduled (the step before it)
    assert log.progress[1:] == sorted(log.progress[1:]) and log.progress[-1] > 0.85
    for lr, spent in zip(log.lrs[1:], log.progress[:-1]):
        assert lr <= 1e-2 * 0.5 * (1 + math.cos(math.pi * spent)) + 1e-9
