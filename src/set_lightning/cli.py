"""``python -m set_lightning {fit,validate,test,predict,sweep}``: Lightning's own CLI.

``fit``/``validate``/``test``/``predict`` are :class:`lightning.pytorch.cli.LightningCLI`
subcommands (OmegaConf parser mode, so config files may interpolate). Every subcommand starts from
the packaged ``conf/defaults.yaml`` and ``conf/data/small.yaml`` (a small N-body run that finishes
on a laptop CPU in minutes); ``--config conf/<model>.yaml --config conf/data/<data set>.yaml`` and
dotted overrides such as ``--trainer.max_epochs 5`` refine it. ``conf/...`` names resolve to the
packaged configs from any working directory (:mod:`set_lightning.configs`). MLP's ``n_frames`` is
linked to ``data.history``. ``sweep`` is the ablation runner (:mod:`set_lightning.sweep`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from set_lightning.configs import DEFAULT_CONFIGS, resolve_config_args
from set_lightning.errors import UserError, run_with_clean_errors

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _build_cli_class():
    from lightning.pytorch.cli import LightningCLI

    from set_lightning.data import NBodyDataModule
    from set_lightning.lit import SETLightningModule

    class SETLightningCLI(LightningCLI):
        """LightningCLI bound to :class:`SETLightningModule` and :class:`NBodyDataModule`."""

        def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True, **kwargs) -> None:
            # exit_on_error=False: parse errors are raised and shown as one line by main()
            common = {"parser_mode": "omegaconf", "exit_on_error": False}
            with_defaults = {**common, "default_config_files": [str(p) for p in DEFAULT_CONFIGS]}
            # without a subcommand (run=False) the main parser takes the config
            parser_kwargs: dict = dict(common if run else with_defaults)
            parser_kwargs.update({sub: dict(with_defaults) for sub in LIGHTNING_SUBCOMMANDS})
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            super().__init__(
                SETLightningModule,
                NBodyDataModule,
                parser_kwargs=parser_kwargs,
                args=args,
                run=run,
                **kwargs,
            )

        def add_arguments_to_parser(self, parser) -> None:
            # MLP reads the last n_frames frames: exactly the data's history (ignored by models
            # without an n_frames argument; a value given for it is replaced by data.history)
            parser.link_arguments("data.history", "model.net.init_args.n_frames")

        def instantiate_trainer(self, **kwargs):
            # `--trainer.enable_progress_bar false` drops the default RichProgressBar instead of
            # failing on the conflict (handy for logs of batch jobs and sweeps).
            from lightning.pytorch.callbacks import ProgressBar

            config = self.config_init.get(str(self.subcommand), self.config_init)["trainer"]
            if config.get("enable_progress_bar") is False and "callbacks" not in kwargs:
                kwargs["callbacks"] = [c for c in config.get("callbacks") or [] if not isinstance(c, ProgressBar)]
            return super().instantiate_trainer(**kwargs)

        def before_fit(self) -> None:
            cfg = self.config_init[self.subcommand]
            if cfg.get("ckpt_path") == "last":
                cfg["ckpt_path"] = _resume_latest(self.trainer)
            _check_ckpt_path(cfg.get("ckpt_path"))

        def _check_subcommand_ckpt(self) -> None:
            _check_ckpt_path(self.config_init[self.subcommand].get("ckpt_path"))

        before_validate = before_test = before_predict = _check_subcommand_ckpt

    return SETLightningCLI


def _resume_latest(trainer) -> str:
    """``fit --ckpt_path last``: the newest ``last.ckpt`` of this logger name, logging into its folder.

    Lightning's own ``"last"`` only looks in the new run's (empty) checkpoint folder; users mean
    "continue my latest run", so resolve it to ``<save_dir>/<name>/version_<k>/checkpoints/last.ckpt``
    and keep logging into ``version_<k>``.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger):
        raise UserError("ckpt_path: 'last' needs the TensorBoard logger; pass a checkpoint file instead")
    root = Path(logger.save_dir) / logger.name
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"ckpt_path: 'last' found no {root}/version_*/checkpoints/last.ckpt to resume from")
    version = found[-1].parent.parent.name
    logger._version = int(version.split("_")[-1]) if version.split("_")[-1].isdigit() else version
    print(f"resuming from {found[-1]}")
    return str(found[-1])


def _check_ckpt_path(ckpt_path: Optional[str]) -> None:
    """Fail early, with one line, on a checkpoint file that does not exist."""
    if ckpt_path in (None, "last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        return
    if not os.path.isfile(ckpt_path):
        raise UserError(f"ckpt_path: no such checkpoint file: {ckpt_path}")


def make_cli(args: Optional[Sequence[str]] = None, run: bool = True, **kwargs):
    """Build (and by default run) the LightningCLI on ``args`` (``None`` = ``sys.argv[1:]``).

    ``--config`` values resolve through :func:`set_lightning.configs.resolve_config`. With
    ``run=False`` there is no subcommand: ``cli.model``, ``cli.datamodule`` and ``cli.trainer`` are
    built from the config and nothing runs. ``kwargs`` go to
    :class:`~lightning.pytorch.cli.LightningCLI` (e.g. ``trainer_defaults={"callbacks": [...]}`` adds
    callbacks to those of the config).
    """
    if args is not None:
        args = resolve_config_args(args)
    return _build_cli_class()(args=args, run=run, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point: ``set-lightning`` / ``python -m set_lightning``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "sweep":
        from set_lightning.sweep import main as sweep_main

        sys.exit(run_with_clean_errors(lambda: sweep_main(words[1:])))
    if argv is not None:
        sys.exit(run_with_clean_errors(lambda: make_cli(words)))
    # LightningCLI reads sys.argv itself (it warns when given both), and so do DDP's child
    # processes: resolve the config names in place
    sys.argv[1:] = resolve_config_args(words)
    sys.exit(run_with_clean_errors(lambda: make_cli(None)))


if __name__ == "__main__":
    main()
