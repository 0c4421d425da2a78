"""User-facing errors: one clear line on stderr and a non-zero exit code, no traceback wall."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """A problem with the user's input (config value, file, checkpoint) rather than a bug."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from argparse import ArgumentError

    from set_lightning.lit import NonFiniteLossError

    return (UserError, ValueError, FileNotFoundError, NonFiniteLossError, ArgumentError)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` folded onto one line, with a hint where the error is a config key."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if "model.net" in text and ("import path" in text or "class_path" in text):
        from set_lightning.models import MODELS

        names = ", ".join(cls.__name__ for cls in MODELS.values())
        text += f" (allowed models: {names}, or a full class path)"
    if "unrecognized arguments" in text or "No action for key" in text:
        text += " (see --help for the options, --print_config for the full configuration)"
    return text


def run_with_clean_errors(fn: Callable[[], Any]) -> int:
    """Run ``fn``; turn user errors into ``error: <message>`` on stderr and exit code 1.

    Set ``SET_LIGHTNING_TRACEBACK=1`` to get the full traceback instead.
    """
    if os.environ.get("SET_LIGHTNING_TRACEBACK"):
        fn()
        return 0
    try:
        fn()
    except _user_error_types() as err:  # noqa: PERF203
        cause = err
        # jsonargparse wraps errors raised while instantiating classes; show the root message.
        while cause.__cause__ is not None and isinstance(cause.__cause__, _user_error_types()):
            cause = cause.__cause__
        print(f"error: {_one_line(cause)}", file=sys.stderr)
        return 1
    return 0
