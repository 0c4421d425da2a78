"""A test-only callback that holds a run at the start of training until the test opens a gate."""

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class WaitForFile(Callback):
    """Block in ``on_train_start`` until ``path`` exists (at most ``timeout`` seconds, then fail)."""

    def __init__(self, path: str, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout

    def on_train_start(self, trainer, pl_module) -> None:
        deadline = time.monotonic() + self.timeout
        while not Path(self.path).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {self.path} was not opened within {self.timeout} s")
            time.sleep(0.05)
