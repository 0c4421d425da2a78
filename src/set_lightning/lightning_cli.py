"""Lightning's own CLI bound to this package: :class:`SETLightningCLI`.

``fit``/``validate``/``test``/``predict`` are :class:`lightning.pytorch.cli.LightningCLI`
subcommands (OmegaConf parser mode, so config files may interpolate). Every subcommand starts from
the packaged ``conf/defaults.yaml`` (a small N-body run that finishes on a laptop CPU in minutes);
``--config conf/<model>.yaml`` and dotted overrides such as ``--trainer.max_epochs 5`` refine it.

Only LightningCLI's public hooks are used: ``before_instantiate_classes`` edits the parsed config
(drop the progress bar when ``--trainer.enable_progress_bar false``, resolve ``fit --ckpt_path last``
to the newest run and log into its folder, refuse multi-device evaluation), ``instantiate_classes``
is skipped for a parse-only CLI, and ``instantiate_trainer`` adds trainer arguments that cannot come
from a config file (e.g. a cluster-environment plugin).
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from set_lightning.data import NBodyDataModule
from set_lightning.errors import UserError
from set_lightning.lit import SETLightningModule

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULTS = CONF_DIR / "defaults.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: subcommands that report a metric over a split: one device (DistributedSampler pads the last shard)
SINGLE_DEVICE_SUBCOMMANDS = ("validate", "test")


class SETLightningCLI(LightningCLI):
    """LightningCLI bound to :class:`SETLightningModule` and :class:`NBodyDataModule`.

    Args:
        args: command-line style arguments (``None``: ``sys.argv[1:]``).
        run: run the subcommand given in ``args`` (``False``: no subcommand; the config is parsed
            and, unless ``parse_only``, model, data module and trainer are built).
        parse_only: only parse (``self.config``, ``self.parser``); instantiate nothing.
        trainer_kwargs: extra :class:`~lightning.pytorch.Trainer` arguments, over the config's.
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI` (e.g. ``trainer_defaults``).
    """

    def __init__(
        self,
        args: Optional[Sequence[str]] = None,
        run: bool = True,
        parse_only: bool = False,
        trainer_kwargs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.parse_only = parse_only
        self.trainer_kwargs = dict(trainer_kwargs or {})
        # exit_on_error=False: parse errors are raised and shown as one line by the entry point
        common = {"parser_mode": "omegaconf", "exit_on_error": False}
        with_defaults = {**common, "default_config_files": [str(DEFAULTS)]}
        # without a subcommand (run=False) the main parser takes the config
        parser_kwargs: dict = dict(common if run else with_defaults)
        parser_kwargs.update({sub: dict(with_defaults) for sub in LIGHTNING_SUBCOMMANDS})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            SETLightningModule, NBodyDataModule, parser_kwargs=parser_kwargs, args=args, run=run, **kwargs
        )

    # ------------------------------------------------------------------ public LightningCLI hooks
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.trainer.get("enable_progress_bar") is False:
            # `--trainer.enable_progress_bar false` drops the config's progress bar instead of failing
            # on the conflict (handy for logs of batch jobs and sweeps)
            cfg.trainer.callbacks = [c for c in cfg.trainer.callbacks or [] if not _is_progress_bar(c)]
        if self.subcommand in SINGLE_DEVICE_SUBCOMMANDS:
            _check_single_device(self.subcommand, cfg.trainer)
        ckpt_path = cfg.get("ckpt_path")
        if self.subcommand == "fit" and ckpt_path == "last":
            cfg.ckpt_path = resume_latest(cfg.trainer)
        elif self.subcommand:
            check_ckpt_path(ckpt_path)

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        return super().instantiate_trainer(**{**self.trainer_kwargs, **kwargs})


def import_class(class_path: str) -> Any:
    """The object a config's ``class_path`` names (``package.module.Name``)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_progress_bar(callback: Any) -> bool:
    from lightning.pytorch.callbacks import ProgressBar

    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    try:
        return class_path is not None and issubclass(import_class(class_path), ProgressBar)
    except (ImportError, AttributeError, TypeError):
        return False


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


def resume_latest(trainer_cfg: Any) -> str:
    """``fit --ckpt_path last``: the newest ``last.ckpt`` of this logger name, logging into its folder.

    Lightning's own ``"last"`` only looks in the new run's (empty) checkpoint folder; users mean
    "continue my latest run", so resolve it to ``<save_dir>/<name>/version_<k>/checkpoints/last.ckpt``
    and set the logger's ``version`` in the config to ``k`` (it keeps logging into ``version_<k>``).
    """
    logger = trainer_cfg.get("logger")
    class_path = logger.get("class_path", "") if hasattr(logger, "get") else ""
    if not class_path.endswith("TensorBoardLogger"):
        raise UserError("ckpt_path: 'last' needs the TensorBoard logger; pass a checkpoint file instead")
    init = logger.init_args
    root = Path(init.get("save_dir") or ".") / (init.get("name") or "lightning_logs")
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"ckpt_path: 'last' found no {root}/version_*/checkpoints/last.ckpt to resume from")
    version = found[-1].parent.parent.name.split("_", 1)[1]
    init.version = int(version) if version.isdigit() else f"version_{version}"
    print(f"resuming from {found[-1]}")
    return str(found[-1])


def check_ckpt_path(ckpt_path: Optional[str]) -> None:
    """Fail early, with one line, on a checkpoint file that does not exist."""
    if ckpt_path in (None, "last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        return
    if not os.path.isfile(ckpt_path):
        raise UserError(f"ckpt_path: no such checkpoint file: {ckpt_path}")


def make_cli(args: Optional[Sequence[str]] = None, run: bool = True, **kwargs: Any) -> SETLightningCLI:
    """Build (and by default run) the CLI on ``args`` (``None`` = ``sys.argv[1:]``).

    ``kwargs`` go to :class:`SETLightningCLI` (e.g. ``trainer_defaults={"callbacks": [...]}`` adds
    callbacks to those of the config). Explicit ``args`` are the only arguments: LightningCLI's warning
    about ``sys.argv`` holding other words (those of the calling program) is silenced.
    """
    with warnings.catch_warnings():
        if args is not None:
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return SETLightningCLI(args=args, run=run, **kwargs)


def config_parser() -> Any:
    """The parser of a run's configuration (``conf/defaults.yaml`` first), built without running anything.

    ``config_parser().parse_args(args)`` resolves the arguments of ``fit`` (minus the subcommand) to
    the full configuration, ``.dump(cfg)`` writes it back.
    """
    import logging

    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to ..." means nothing here
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        return make_cli(args=[], run=False, parse_only=True).parser
    finally:
        seed_log.setLevel(level)


def model_hint(text: str) -> str:
    """Append the allowed model names to an error about ``model.net``'s class."""
    if "model.net" in text and ("import path" in text or "class_path" in text):
        from set_lightning.models import MODELS

        names = ", ".join(cls.__name__ for cls in MODELS.values())
        text += f" (allowed models: {names}, or a full class path)"
    return text
