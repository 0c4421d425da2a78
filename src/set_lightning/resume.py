"""What a run resumes from: ``last.ckpt`` kept at the latest validated state (:class:`LastIsLatest`)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class LastIsLatest(Callback):
    """Keeps the :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s ``last.ckpt`` at the run's latest
    validated state.

    Lightning (2.6) rewrites ``last.ckpt`` only at a validation that also saved a new best checkpoint, so a
    run whose validation stopped improving would resume (``fit --ckpt_path last``, a study's or a sweep's
    interrupted run) from its last improvement and train the steps since then again. After every validation
    of a fit, once the ModelCheckpoint has written its ``last.ckpt``, this writes that file again with the
    current state (where the ModelCheckpoint itself saves, at validation end; the losses were checked for
    NaN before the validation). Saving draws no random number and changes nothing the run computes.

    The CLI adds it to every ``fit`` (``NBodyLightningCLI.instantiate_trainer``); it is not a setting of
    the run, so it is not part of a run's identity.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.sanity_checking or trainer.state.fn != "fit" or checkpoint is None:
            return
        if checkpoint.save_last and checkpoint.last_model_path:
            trainer.save_checkpoint(checkpoint.last_model_path)
