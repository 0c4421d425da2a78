"""A test-only callback that kills the training process (SIGKILL, like a crash or a pre-emption)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class CrashAtEpochStart(Callback):
    """Kill the process when training epoch ``epoch`` starts (the earlier epochs are checkpointed)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
