"""Callbacks used by the CLI: a compute budget for training, a per-epoch metrics CSV, a quieter
progress bar and model summary, and writing predicted trajectories (drawn by :mod:`set_lightning.plots`)."""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, RichModelSummary, RichProgressBar

from set_lightning.compute import machine_info
from set_lightning.errors import UserError
from set_lightning.files import append_jsonl, write_text_atomic
from set_lightning.plots import SELECT, pick_trajectories, prediction_figure

CLOCKS = ("process", "wall", "auto")


class TimeBudget(Callback):
    """Train for a fixed amount of compute, and record the validation curve against it.

    The clock runs only while training (it pauses for validation and sanity checks), and training
    stops after the first optimiser step past ``budget_s``. ``clock="process"`` counts the CPU time
    of this process (with one torch thread, the wall-clock time on an idle core: a fair clock on a
    machine whose cores are shared with other work); ``clock="wall"`` counts wall-clock time (the
    clock to use on GPUs or with several threads), synchronising CUDA where the clock starts and pauses
    so that the queued GPU work of the last step is counted; ``clock="auto"`` takes ``wall`` when the
    model trains on an accelerator and ``process`` on a CPU, decided when the fit starts (also when a
    resumed fit has no step left): ``timing`` is the clock in use and ``device`` where it trained.
    A module with ``scheduler: cosine`` decays its learning rate to 0 at the budget (``progress`` is
    the fraction spent).

    Under DDP every rank decides the same: at the end of each training step the ranks' clocks are
    reduced (their maximum: the budget is spent when the slowest rank's clock says so), and every rank
    stops at the same step and gives its module the same ``progress`` (``budget_progress``, read by the
    cosine schedule), so the replicas' learning rates, and their weights, stay identical.

    With ``curve_file``, each validation appends one JSON line ``{"epoch", "step", "train_s",
    "wall_s", "val_pos_mse", ...}`` (every logged ``val/*`` value, ``train_s`` on the budget's clock).

    Args:
        budget_s: training budget in seconds on ``clock`` (> 0).
        clock: ``process`` (CPU seconds of this process), ``wall``, or ``auto`` (``wall`` on a GPU).
        curve_file: JSON-lines file for the validation curve (``None``: keep it in ``self.curve``).
    """

    def __init__(self, budget_s: float, clock: Literal["process", "wall", "auto"] = "process",
                 curve_file: Optional[str] = None) -> None:
        super().__init__()
        if not budget_s > 0:
            raise UserError(f"budget_s must be > 0, got {budget_s}")
        if clock not in CLOCKS:
            raise UserError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.budget_s, self.clock, self.curve_file = float(budget_s), clock, curve_file
        self.device: Optional[str] = None  # where the model trained (set when the fit starts)
        self.timing: str = "process" if clock == "auto" else clock  # the clock in use (auto: see resolve)
        self.elapsed = 0.0  # seconds spent training, on `clock`
        self.curve: list[dict[str, Any]] = []
        self._since: Optional[float] = None
        self._wall0: Optional[float] = None
        self._synced = 0.0  # seconds spent at the last optimiser step, the maximum over the DDP ranks

    def resolve(self, trainer: pl.Trainer) -> None:
        """Record the device the fit runs on and, for ``clock="auto"``, choose the clock (idempotent)."""
        root = trainer.strategy.root_device
        self.device = str(root)
        if self.clock == "auto":
            self.timing = "process" if root.type == "cpu" else "wall"

    def _now(self, sync: bool = False) -> float:
        if self.timing == "wall":
            if sync and self.device is not None and self.device.startswith("cuda"):
                torch.cuda.synchronize()  # at a start or pause: the queued GPU work belongs before it
            return time.perf_counter()
        return time.process_time()

    def _start(self) -> None:
        if self._since is None:
            self._since = self._now(sync=True)

    def _pause(self) -> None:
        if self._since is not None:
            self.elapsed += self._now(sync=True) - self._since
            self._since = None

    @property
    def spent(self) -> float:
        """Training seconds spent so far (including the running stretch)."""
        return self.elapsed + (self._now() - self._since if self._since is not None else 0.0)

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, in ``[0, 1]``."""
        return min(1.0, self.spent / self.budget_s)

    def synced_spent(self, trainer: pl.Trainer) -> float:
        """Training seconds spent, the same on every rank: the maximum over the DDP ranks (a collective:
        every rank must call it at the same point)."""
        spent = self.spent
        if trainer.world_size > 1:
            value = torch.tensor([spent], dtype=torch.float64, device=trainer.strategy.root_device)
            spent = float(trainer.strategy.reduce(value, reduce_op="max"))
        return spent

    def _share(self, pl_module: pl.LightningModule, spent: float) -> None:
        """Give the module the fraction of the budget spent (a module with ``budget_progress`` reads it)."""
        if hasattr(pl_module, "budget_progress"):
            pl_module.budget_progress = min(1.0, spent / self.budget_s)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resolve(trainer)  # every rank alike: the same accelerator type on all of them

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._synced = self.synced_spent(trainer)  # a resumed run starts part-way
        self._share(pl_module, self._synced)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._wall0 is None:
            self._wall0 = time.perf_counter()
        self._start()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # the one collective of a step: before the optimiser and learning-rate scheduler step, so the rate
        # of the next step follows the budget spent up to this one, on every rank alike
        self._synced = self.synced_spent(trainer)
        self._share(pl_module, self._synced)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._synced >= self.budget_s:  # the same value on every rank: they stop at the same step
            trainer.should_stop = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.global_rank == 0:
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "train_s": round(self.elapsed, 3),
                   "wall_s": round(time.perf_counter() - (self._wall0 or time.perf_counter()), 3)}
            row.update({k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith("val/")})
            self.curve.append(row)
            if self.curve_file:
                append_jsonl(self.curve_file, [row])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.spent, "curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))
        self.curve = list(state_dict.get("curve", []))


class RecordMachine(Callback):
    """Write what a timed run needs to know about its machine to a JSON file when the fit starts: the CPU,
    threads, torch version and code revision (:func:`~set_lightning.compute.machine_info`), the device the
    fit runs on (the GPU's name on CUDA) and the clock of its ``budget`` (``process`` or ``wall``), plus
    ``extra`` values (e.g. how many runs shared the GPU). At the start, so that it names the revision that
    trains, and so that the file exists before any result does.

    Args:
        path: the JSON file.
        budget: the run's :class:`TimeBudget` (its clock is resolved here first).
        extra: more keys for the file.
    """

    def __init__(self, path: str, budget: TimeBudget, extra: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.path, self.budget, self.extra = path, budget, dict(extra or {})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget.resolve(trainer)
        if trainer.global_rank == 0:
            info = {**machine_info(str(trainer.strategy.root_device)), "clock": self.budget.timing, **self.extra}
            write_text_atomic(Path(self.path), json.dumps(info, sort_keys=True))


class RemoveRunOnError(Callback):
    """Removes the folder of a new run that stopped on a user error before its first optimiser step and
    checkpoint (a model that does not fit the data, say): a one-line error leaves nothing half-written.

    The CLI adds it to a ``fit`` that starts a new, automatically numbered run; the folder's parents
    (``runs/<name>``, ``runs``) go too when that leaves them empty. Rank 0 removes.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        log_dir = getattr(trainer.logger, "log_dir", None)  # not trainer.log_dir: a collective under DDP
        if (not isinstance(exception, UserError) or not trainer.is_global_zero or trainer.global_step > 0
                or log_dir is None or not Path(log_dir).is_dir() or any(Path(log_dir).rglob("*.ckpt"))):
            return
        import shutil

        run = Path(log_dir)
        shutil.rmtree(run, ignore_errors=True)
        save_dir = getattr(trainer.logger, "save_dir", None)
        stop = Path(save_dir).resolve().parent if save_dir else run.parent
        for parent in run.parents:
            if parent.resolve() == stop or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


class InterruptHint(Callback):
    """On Ctrl-C, says how to go on: the command that resumes the run from its ``last.ckpt``.

    Lightning shuts down gracefully on Ctrl-C (checkpoints written so far are kept); this callback
    then prints the command line with ``--ckpt_path <run>/checkpoints/last.ckpt`` (or, before the
    first checkpoint, the command to start again) and sets ``interrupted``.

    Args:
        command: the interrupted command, program first (``["python -m set_lightning", "fit", ...]``).
    """

    def __init__(self, command: Sequence[str]) -> None:
        super().__init__()
        self.command = list(command)
        self.interrupted = False

    def resume_command(self, trainer: pl.Trainer) -> Optional[str]:
        """The command that resumes from the run's ``last.ckpt`` (``None`` when none was written)."""
        cb = trainer.checkpoint_callback
        last = Path(cb.dirpath) / "last.ckpt" if cb is not None and cb.dirpath else None
        if last is None or not last.is_file():
            return None
        words, skip = [], False
        for word in self.command[1:]:
            if skip:
                skip = False
            elif word == "--ckpt_path":
                skip = True
            elif not word.startswith("--ckpt_path="):
                words.append(word)
        return " ".join([self.command[0], shlex.join([*words, "--ckpt_path", str(last)])])

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        if not trainer.is_global_zero:
            return
        resume = self.resume_command(trainer) if trainer.state.fn == "fit" else None
        if resume:
            print(f"interrupted; the checkpoints written so far are kept. Resume with:\n  {resume}", file=sys.stderr)
        else:
            print("interrupted; rerun the command to start again:\n  "
                  + " ".join([self.command[0], shlex.join(self.command[1:])]), file=sys.stderr)


class QuietProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's version number (``v_num``), which says nothing
    a user can act on (the run directory is printed at the end instead)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class CompactModelSummary(RichModelSummary):
    """Lightning's rich model summary, without the FLOPs column when nothing was counted (the models
    take a batch dict, so Lightning has no example input to count FLOPs with)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from lightning.pytorch.utilities.model_summary import get_human_readable_count
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name in ("Params", "FLOPs") else "left",
                             style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        line = (f"Trainable params: {get_human_readable_count(int(trainable_parameters))}   "
                f"Total params: {get_human_readable_count(int(total_parameters))}   "
                f"Size: {model_size:.3f} MB")
        if total_flops:
            line += f"   FLOPs: {get_human_readable_count(total_flops)}"
        console.print(line)



#: the names before they were told apart from Lightning's ``ProgressBar`` / ``ModelSummary`` (configs
#: written earlier name them)
ProgressBar = QuietProgressBar
ModelSummary = CompactModelSummary

class MetricsCSV(Callback):
    """Writes ``metrics.csv`` in the trainer's log directory: one row per training epoch, validation
    run and test run, for users who do not run TensorBoard.

    Columns: ``stage`` (``fit``, ``validate`` or ``test``), ``epoch``, ``step``, then every logged
    metric of the epoch (``train/loss_epoch``, ``val/pos_mse``, ``test/pos_mse``, ...; per-step values
    are left out). Rows already in the file (a resumed run, or a test of its checkpoint) are kept.

    Args:
        filename: the file's name inside the log directory.
    """

    def __init__(self, filename: str = "metrics.csv") -> None:
        super().__init__()
        self.filename = filename
        self.rows: list[dict[str, Any]] = []
        self.path: Optional[Path] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.path is None and trainer.log_dir is not None:
            self.path = Path(trainer.log_dir) / self.filename
            if self.path.is_file():
                with open(self.path, newline="") as f:
                    self.rows = list(csv.DictReader(f))

    def _append(self, trainer: pl.Trainer, stage: str) -> None:
        if not trainer.is_global_zero or self.path is None:
            return
        row: dict[str, Any] = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step}
        prefix = {"fit": "", "validate": "val/", "test": "test/"}[stage]
        metrics = trainer.callback_metrics
        for key, value in sorted(metrics.items()):
            # per-step values are left out, and so are the unsuffixed twins of on_step+on_epoch metrics
            if key.startswith(prefix) and not key.endswith("_step") and f"{key}_epoch" not in metrics and key != "loss":
                row[key] = f"{float(value):.6g}"
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, text.getvalue())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._append(trainer, "fit")  # after the epoch's validation: both are in callback_metrics

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._append(trainer, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._append(trainer, "test")


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs to ``<output_dir>/predictions.pt`` and draws some trajectories.

    The ``.pt`` file holds a dict of tensors concatenated over the predict set: ``x``/``v``
    ``(S, L, N, 3)`` history, ``charges`` ``(S, N, 1)``, ``x_target``/``v_target``/``x_pred``/
    ``v_pred`` ``(S, N, 3)``, ``x_path`` ``(S, K, N, 3)`` (the simulated positions from the input to
    the target frame), ``pos_mse_per_traj`` ``(S,)`` (each trajectory's position MSE), ``min_dist``
    ``(S,)`` (closest particle pair between the input and the target frame) and ``pos_mse`` (the
    scalar over all of them). Under DDP each rank writes ``predictions_rank<r>.pt`` holding its shard.

    The figure (``predictions.png``, and the TensorBoard image ``predictions`` when the trainer logs
    to TensorBoard) shows ``n_plot`` trajectories, one row each, in the x-y, x-z and y-z planes: each
    particle's history, its true path from the simulation up to the true target, the prediction, and
    the error as a red segment from the true target to the prediction.

    Args:
        output_dir: folder for the files; ``None`` = the trainer's log directory (or ``predictions``).
        n_plot: how many trajectories to draw (0: no figure).
        select: which ones: ``worst`` (the highest position MSE) or ``first`` (in data order).
    """

    def __init__(self, output_dir: Optional[str] = None, n_plot: int = 4,
                 select: Literal["worst", "first"] = "worst") -> None:
        super().__init__(write_interval="epoch")
        if n_plot < 0:
            raise UserError(f"n_plot must be >= 0, got {n_plot}")
        if select not in SELECT:
            raise UserError(f"select must be one of {SELECT}, got {select!r}")
        self.output_dir = output_dir
        self.n_plot = n_plot
        self.select = select
        self.written: list[Path] = []

    def _dir(self, trainer: pl.Trainer) -> Path:
        out = Path(self.output_dir or trainer.log_dir or "predictions")
        out.mkdir(parents=True, exist_ok=True)
        return out

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Optional[Sequence[Any]],
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        merged = {k: torch.cat([b[k].detach().cpu() for b in batches]) for k in batches[0]}
        merged["pos_mse"] = torch.mean((merged["x_pred"] - merged["x_target"]) ** 2)
        out = self._dir(trainer)
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.pt"
        torch.save(merged, out / name)
        self.written.append(out / name)
        if trainer.global_rank == 0 and self.n_plot > 0:
            import matplotlib.pyplot as plt
            from lightning.pytorch.loggers import TensorBoardLogger

            fig = prediction_figure(merged, pick_trajectories(merged, self.n_plot, self.select), self.select)
            png = out / "predictions.png"
            fig.savefig(png, dpi=100)
            self.written.append(png)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure("predictions", fig, global_step=trainer.global_step, close=False)
                    logger.experiment.flush()
            plt.close(fig)
        if trainer.global_rank == 0:
            print(f"wrote predictions to {out / name} (position MSE {merged['pos_mse'].item():.5f})")
