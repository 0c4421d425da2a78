"""User-facing errors: one clear line on stderr and a non-zero exit code, no traceback wall."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """A problem with the user's input (config value, file, checkpoint) rather than a bug."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from set_lightning.lit import NonFiniteLossError

    # MisconfigurationException: Lightning's verdict on a trainer setting (e.g. max_epochs -3);
    # PermissionError: a folder the run must write to is read-only
    return (UserError, ValueError, FileNotFoundError, PermissionError, NonFiniteLossError, ArgumentError,
            MisconfigurationException)


def one_line(err: BaseException) -> str:
    """The message of ``err`` folded onto one line, with a hint where the error is a config key."""
    import re

    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    rejected = re.search(r"class_path '([\w.]+)': Option '(\w+)' is not accepted", text)
    if rejected:
        from set_lightning.models.registry import model_class, model_kwargs

        cls = model_class(rejected.group(1))
        names = model_kwargs(cls) if cls is not None else []
        if names:
            import difflib

            close = difflib.get_close_matches(rejected.group(2), names, n=1)
            text += (f" (did you mean '{close[0]}'? " if close else " (") + \
                f"{rejected.group(1).rsplit('.', 1)[-1]} takes: {', '.join(names)})"
    elif "model.net" in text and "import path" in text:
        from set_lightning.models import MODELS

        names = ", ".join(cls.__name__ for cls in MODELS.values())
        text += f" (allowed models: {names}, in any case, or a full class path)"
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
        print(f"error: {one_line(cause)}", file=sys.stderr)
        return 1
    return 0
