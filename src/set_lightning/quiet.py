"""Silences two messages Lightning prints on every run that tell a user nothing they can act on.

Exactly these two, nothing else: torch's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is
deprecated (raised inside Lightning's own pytree helper) and Lightning's "Tip" advertising LitLogger.
Every other warning and log line is left as it is.
"""

from __future__ import annotations

import logging
import warnings

LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LITLOGGER_TIP = "Tip: For seamless cloud logging and experiment tracking"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LITLOGGER_TIP not in record.getMessage()


def silence_lightning_noise() -> None:
    """Install the two filters (idempotent)."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
    import lightning.pytorch.utilities.rank_zero  # noqa: F401 - it points rank_zero_info at its own logger
    from lightning.fabric.utilities.rank_zero import rank_zero_module

    for log in {rank_zero_module.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")}:
        if not any(isinstance(f, _DropLitLoggerTip) for f in log.filters):
            log.addFilter(_DropLitLoggerTip())
