"""Lightning's own CLI bound to this package: :class:`NBodyLightningCLI`, and the config schema.

``fit``/``validate``/``test``/``predict`` are :class:`lightning.pytorch.cli.LightningCLI`
subcommands (OmegaConf parser mode, so config files may interpolate). Every subcommand starts from
the packaged ``conf/defaults.yaml`` (a small N-body run that finishes on a laptop CPU in minutes);
``--config conf/<model>.yaml`` and dotted overrides such as ``--trainer.max_epochs 5`` refine it.

With ``--ckpt_path FILE``, the run is the checkpoint's: the model and data settings it was trained
with are used (an option that contradicts them is an error naming both values, unless
``--allow_data_override true`` asks for other data on purpose), and logs, metrics and predictions
go into its run directory. Every subcommand ends by printing the run directory, the best checkpoint
and its validation MSE. ``test`` and ``validate`` run on one device (a DistributedSampler pads the
last shard and would count some trajectories twice).

Only LightningCLI's public hooks are used (``add_arguments_to_parser``, ``parse_arguments``,
``before_instantiate_classes``, ``instantiate_classes``, ``instantiate_trainer``, ``after_<sub>``).
How the settings are reconciled with a checkpoint and the data lives in :mod:`set_lightning.settings`;
the schema that checks a sweep's keys (a parse-only CLI) in :mod:`set_lightning.config_schema`.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from set_lightning import program_name, trained
from set_lightning.callbacks import CompactModelSummary, RemoveRunOnError
from set_lightning.checkpoints import (
    CheckpointInfo,
    is_checkpoint_file_path,
    latest_best_checkpoint,
    latest_last_checkpoint,
)
from set_lightning.configs import DEFAULT_CONFIGS, resolve_config_args
from set_lightning.data import NBodyDataModule
from set_lightning.errors import UserError
from set_lightning.files import unwritable_reason
from set_lightning.lit import NBodyLightningModule
from set_lightning.quiet import silence_lightning_noise
from set_lightning.resume import LastIsLatest
from set_lightning.settings import (
    canonical_model_names,
    check_config_files,
    class_name,
    current_model_names,
    follow_data_dims,
    named_keys,
    reconcile_with_checkpoint,
)

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: subcommands that report a metric over a split: one device (DistributedSampler pads the last shard)
SINGLE_DEVICE_SUBCOMMANDS = ("validate", "test")


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` of a new run. In an existing run (a resumed fit,
    or a test / validate / predict of one of its checkpoints) the run's ``config.yaml`` is kept and
    the new invocation goes beside it as ``config_<resume|test|validate|predict>_<k>.yaml``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # trainer.log_dir is a collective (it broadcasts under DDP): read it once, on every rank
        log_dir = trainer.log_dir
        if not self.already_saved and log_dir is not None:
            name = "config.yaml"
            if trainer.is_global_zero and (Path(log_dir) / name).is_file():
                stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
                kind = "resume" if stage == "fit" else stage
                k = 1
                while (Path(log_dir) / f"config_{kind}_{k}.yaml").exists():
                    k += 1
                name = f"config_{kind}_{k}.yaml"
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


class NBodyLightningCLI(LightningCLI):
    """LightningCLI bound to :class:`NBodyLightningModule` and :class:`NBodyDataModule`.

    Args:
        args: the command line without the program (``None``: ``sys.argv[1:]``).
        run: run the subcommand (``False``: only parse and instantiate, no subcommand).
        parse_only: with ``run=False``, only parse (no model, data or trainer is built).
        trainer_kwargs: extra :class:`~lightning.pytorch.Trainer` arguments that cannot come from a
            config file (e.g. a cluster-environment plugin), over the config's.
        kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI`.
    """

    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True, parse_only: bool = False,
                 trainer_kwargs: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        self.parse_only = parse_only
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.argv: list[str] = []
        self.ckpt_info: Optional[CheckpointInfo] = None
        # exit_on_error=False: parse errors are raised and shown as one line by main()
        common = {"parser_mode": "omegaconf", "exit_on_error": False}
        with_defaults = {**common, "default_config_files": [str(p) for p in DEFAULT_CONFIGS]}
        # without a subcommand (run=False) the main parser takes the config
        parser_kwargs: dict = dict(common if run else with_defaults, prog=program_name())
        parser_kwargs.update({sub: dict(with_defaults) for sub in LIGHTNING_SUBCOMMANDS})
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(NBodyLightningModule, NBodyDataModule, parser_kwargs=parser_kwargs, args=args, run=run,
                         **kwargs)

    # ------------------------------------------------------------ parsing
    def add_arguments_to_parser(self, parser) -> None:
        # MLP reads the last n_frames frames: exactly the data's history (ignored by models without an
        # n_frames argument; a value given for it is replaced by data.history)
        parser.link_arguments("data.history", "model.net.init_args.n_frames")
        parser.add_argument(
            "--allow_data_override", type=bool, default=False,
            help="With --ckpt_path: use data settings (n_particles, history, seed, ...) that differ from "
                 "those the checkpoint was trained with, on purpose (e.g. test a model trained on N=5 on N=20). "
                 "Without it such a difference is an error.",
        )

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        # conf/... names resolve to the packaged configs from any working directory; DDP's child
        # processes re-read sys.argv, so resolve it in place
        if args is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        self.argv = resolve_config_args(list(sys.argv[1:] if args is None else args))
        check_config_files(self.argv)
        self.config = parser.parse_args(canonical_model_names(self.argv))
        sub = self.config.get("subcommand")
        if sub:
            self._use_checkpoint_settings(parser, sub)

    def _use_checkpoint_settings(self, parser, sub: str) -> None:
        """Make ``--ckpt_path`` authoritative: its run's model and data settings and directory."""
        cfg = self.config[sub]
        ckpt = cfg.get("ckpt_path")
        if sub != "fit" and ckpt is None:
            raise UserError(f"ckpt_path: {sub} evaluates a trained model: pass --ckpt_path FILE (a .ckpt of a run), "
                            "--ckpt_path last / best (the newest run's last / best checkpoint) or a shipped "
                            "model's name (listed by --help)")
        if ckpt in ("last", "best") and (sub != "fit" or ckpt == "last"):
            logger = cfg.get("trainer.logger")
            if not _is_dir_logger(logger):
                raise UserError(f"ckpt_path: {ckpt!r} needs a logger with save_dir and name (e.g. the "
                                "TensorBoard logger); pass a checkpoint file instead")
            root = Path(logger.init_args.save_dir) / logger.init_args.name
            cfg["ckpt_path"] = str(latest_last_checkpoint(root) if ckpt == "last" else latest_best_checkpoint(root))
            print(f"{'resuming from' if sub == 'fit' else 'checkpoint:'} {cfg['ckpt_path']}")
        elif ckpt == "best":
            raise UserError("ckpt_path: 'best' names the best checkpoint of a run to evaluate (test, validate, "
                            "predict); to go on training, pass --ckpt_path last or a checkpoint file")
        shipped = trained.shipped_path(cfg.get("ckpt_path"))
        if shipped is not None:  # a shipped model's name (trained/manifest.json)
            cfg["ckpt_path"] = str(shipped)
        if not is_checkpoint_file_path(cfg.get("ckpt_path")):
            return
        info = CheckpointInfo.read(cfg["ckpt_path"])
        defaults = parser.parse_args([sub])[sub]
        reconcile_with_checkpoint(cfg, defaults, named_keys(self.argv), info, sub)
        logger = cfg.get("trainer.logger")
        if _is_dir_logger(logger):  # log into the checkpoint's run directory
            run = info.run_dir
            if trained.is_shipped_file(info.path):  # never into the package: runs/shipped/<name>
                run = Path(logger.init_args.save_dir) / "shipped" / trained.shipped_name(info.path)
            logger.init_args.save_dir, logger.init_args.name, logger.init_args.version = (
                str(run.parent.parent), run.parent.name, run.name)
        self.ckpt_info = info

    # ------------------------------------------------------------ instantiation
    def before_instantiate_classes(self) -> None:
        if self.parse_only:
            return
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        logger = cfg.get("trainer.logger")
        if _is_dir_logger(logger):
            folder, field = logger.init_args.save_dir, "trainer.logger.init_args.save_dir"
        else:
            folder, field = cfg.get("trainer.default_root_dir") or ".", "trainer.default_root_dir"
        reason = unwritable_reason(folder)
        if reason is not None:
            raise UserError(f"{field}: the run's logs and checkpoints cannot be written to {folder}: {reason}; "
                            f"choose a writable folder with --{field}")
        if self.subcommand in SINGLE_DEVICE_SUBCOMMANDS:
            _check_single_device(self.subcommand, cfg.trainer)
        elif "trainer.devices" not in named_keys(self.argv):
            _check_ddp_devices(cfg.trainer)
        if self.ckpt_info is None:  # a checkpoint's model keeps the dims it was trained with
            follow_data_dims(cfg, named_keys(self.argv))
        else:
            current_model_names(cfg)
        if self.subcommand in (None, "fit"):
            _cap_log_every_n_steps(cfg)
        else:  # evaluation writes no checkpoints: that a run was moved since it wrote them is no news
            warnings.filterwarnings("ignore", message="The dirpath has changed")

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with the progress bar and model summary managed here.

        ``--trainer.enable_progress_bar false`` / ``--trainer.enable_model_summary false`` drop the
        configured progress bar / summary callbacks instead of failing on the conflict (handy for
        logs of batch jobs and sweeps); Lightning's own default summary is never added.
        """
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = config["trainer"]
        callbacks = kwargs.pop("callbacks", None) or trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if trainer_cfg.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LightningProgressBar)]
        if trainer_cfg.get("enable_model_summary") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LightningModelSummary)]
        elif not any(isinstance(c, LightningModelSummary) for c in callbacks):
            callbacks.append(CompactModelSummary(max_depth=2))
        if trainer_cfg.get("logger") in (False, None):
            needy = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
            if needy:
                callbacks = [c for c in callbacks if c not in needy]
                print(f"note: trainer.logger is off: {', '.join(sorted({type(c).__name__ for c in needy}))} "
                      "left out (it needs a logger)")
        if trainer_cfg.get("fast_dev_run"):
            for c in callbacks:  # Lightning saves last.ckpt at train end even under fast_dev_run
                if isinstance(c, ModelCheckpoint):
                    c.save_last = False
        logger_cfg = (self.config[self.subcommand] if self.subcommand else self.config).get("trainer.logger")
        if self.subcommand == "fit" and self.ckpt_info is None and _is_dir_logger(logger_cfg) \
                and logger_cfg.init_args.version is None:  # a new, numbered run folder
            callbacks.append(RemoveRunOnError())
        callbacks.append(LastIsLatest())  # a fit resumes from its latest validation, not its last best
        kwargs.setdefault("enable_model_summary", False)  # the callbacks above decide
        return super().instantiate_trainer(callbacks=callbacks, **{**self.trainer_kwargs, **kwargs})

    # ------------------------------------------------------------ reports
    def after_fit(self) -> None:
        self._report("fit")

    def after_validate(self) -> None:
        self._report("validate")

    def after_test(self) -> None:
        self._report("test")

    def after_predict(self) -> None:
        self._report("predict")

    def _report(self, sub: str) -> None:
        """Where the run went and what it got."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        # not trainer.log_dir: that is a collective under DDP, and only rank 0 reports
        log_dir = getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir
        rows = [("run directory", str(log_dir))]
        cb = trainer.checkpoint_callback
        best, score, monitor = (cb.best_model_path or None, cb.best_model_score, cb.monitor) if cb else (
            None, None, "val/pos_mse")
        if self.ckpt_info is not None and sub != "fit":
            info = self.ckpt_info
            rows.append(("checkpoint", str(info.path)))
            best, score, monitor = info.best_path, info.best_score, info.monitor
        rows.append(("best checkpoint", best or "– (none saved)"))
        rows.append((f"best {monitor}", "–" if score is None else f"{float(score):.6g}"))
        metric = {"validate": "val/pos_mse", "test": "test/pos_mse"}.get(sub)
        if metric and metric in trainer.callback_metrics:
            rows.append((metric, f"{float(trainer.callback_metrics[metric]):.6g}"))
        if sub == "predict":
            from set_lightning.callbacks import PredictionWriter

            for writer in (c for c in trainer.callbacks if isinstance(c, PredictionWriter)):
                rows += [("predictions", str(p)) for p in writer.written]
        width = max(len(k) for k, _ in rows) + 1
        print("\n".join(f"{k + ':':<{width}} {v}" for k, v in rows))


def _is_dir_logger(logger: Any) -> bool:
    """A logger config with ``save_dir``, ``name`` and ``version`` (TensorBoard, CSV): it has a run directory."""
    init_args = getattr(logger, "init_args", None)
    return init_args is not None and all(k in init_args for k in ("save_dir", "name", "version"))


def _cap_log_every_n_steps(cfg: Any) -> None:
    """Log at least once per training epoch: cap ``trainer.log_every_n_steps`` at the batches per epoch
    (Lightning warns on every small run otherwise)."""
    n_train, batch_size = cfg.get("data.n_train"), cfg.get("data.batch_size")
    every, devices = cfg.get("trainer.log_every_n_steps"), cfg.get("trainer.devices")
    if not (isinstance(n_train, int) and isinstance(batch_size, int) and isinstance(every, int) and batch_size > 0):
        return
    per_device = math.ceil(n_train / devices) if isinstance(devices, int) and devices > 0 else n_train
    batches = max(1, math.ceil(per_device / batch_size))
    if every > batches:
        cfg["trainer.log_every_n_steps"] = batches


def _check_single_device(subcommand: str, trainer_cfg: Any) -> None:
    """``test``/``validate`` on one device: DistributedSampler pads the last shard, counting samples twice."""
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    one = devices in (1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
    if not one or nodes != 1:
        raise UserError(
            f"trainer.devices/num_nodes: {subcommand} runs on one device (a DistributedSampler pads the last "
            f"shard and would count some trajectories twice), got devices={devices!r}, num_nodes={nodes!r}; "
            "pass --trainer.devices 1 --trainer.num_nodes 1"
        )


def _check_ddp_devices(trainer_cfg: Any) -> None:
    """A DDP strategy with the default ``devices: 1`` starts one process: say so, naming trainer.devices."""
    strategy, devices = trainer_cfg.get("strategy"), trainer_cfg.get("devices", 1)
    name = strategy if isinstance(strategy, str) else str(getattr(strategy, "class_path", "") or "")
    ddp = name.lower().startswith("ddp") or name.endswith("DDPStrategy")
    if ddp and devices in (1, "1") and trainer_cfg.get("num_nodes", 1) == 1:
        raise UserError(
            f"trainer.devices: strategy {class_name(name)!r} starts one process per device, and trainer.devices is "
            "1 (the default): one process; pass --trainer.devices N (N GPUs, or N CPU processes with "
            "--trainer.accelerator cpu) or drop --trainer.strategy"
        )



#: the name before it was clear that the CLI trains any model (kept for code that imports it)
SETLightningCLI = NBodyLightningCLI

def make_cli(args: Optional[Sequence[str]] = None, run: bool = True, **kwargs: Any) -> NBodyLightningCLI:
    """Build (and by default run) the CLI on ``args`` (``None`` = ``sys.argv[1:]``).

    ``kwargs`` go to :class:`NBodyLightningCLI` (e.g. ``trainer_defaults={"callbacks": [...]}`` adds
    callbacks to those of the config; ``parse_only=True`` with ``run=False`` stops after parsing).
    """
    silence_lightning_noise()
    return NBodyLightningCLI(args=args, run=run, **kwargs)


