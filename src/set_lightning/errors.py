"""User-facing errors: one clear line on stderr and a non-zero exit code, no traceback wall.

The bottom of the package: it imports nothing from ``set_lightning``. Config checks everywhere
(data module, Lightning module, models, callbacks, sweeps) raise :class:`UserError`; the entry
point runs commands through :func:`run_with_clean_errors`, which shows those, the command-line
parser's errors and Lightning's verdicts on trainer settings as one ``error: ...`` line. Any other
exception, a ``ValueError`` from a bug included, keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional


class UserError(ValueError):
    """A problem with the user's input (a config value, a file, a checkpoint), not a bug.

    A ``ValueError`` subclass, so callers that catch bad values as ``ValueError`` keep working; but
    only this type (not every ``ValueError``) is shown as a one-line error. A subclass whose
    ``same_on_every_rank`` is true is raised by every DDP rank at once with the same message: only
    rank 0 prints it.
    """

    same_on_every_rank = False


def _global_rank() -> int:
    """This process's DDP rank as Lightning set it (0 outside DDP)."""
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only
    except ImportError:
        return 0
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from argparse import ArgumentError  # jsonargparse's parse errors (exit_on_error=False)

    types: tuple[type[BaseException], ...] = (UserError, ArgumentError, PermissionError)
    try:  # Lightning's verdict on a trainer setting (e.g. max_epochs -3)
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:
        return types
    return (*types, MisconfigurationException)


def one_line(err: BaseException) -> str:
    """The message of ``err`` folded onto one line."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if "unrecognized arguments" in text or "No action for key" in text:
        text += " (see --help for the options, --print_config for the full configuration)"
    return text


def _root_user_error(err: BaseException) -> Optional[BaseException]:
    """``err`` or, when a wrapper (jsonargparse, Lightning) raised it from a user error, that user error."""
    seen = set()
    cause: Optional[BaseException] = err
    found = None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _user_error_types()):
            found = cause
        cause = cause.__cause__
    return found


def run_with_clean_errors(fn: Callable[[], Any], hint: Optional[Callable[[str], str]] = None) -> int:
    """Run ``fn``; turn user errors into ``error: <message>`` on stderr and return 1 (0 on success).

    ``hint`` may append advice to a message (e.g. the allowed model names). Set
    ``SET_LIGHTNING_TRACEBACK=1`` to get the full traceback instead.
    """
    if os.environ.get("SET_LIGHTNING_TRACEBACK"):
        fn()
        return 0
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is (or wraps) a user error
        cause = _root_user_error(err)
        if cause is None:
            raise
        text = one_line(cause)
        if hint is not None:
            hinted = hint(text)
            if hinted == text and cause is not err:
                # the advice may need context only the outer message has (e.g. which class_path)
                outer = one_line(err)
                hinted = text + hint(outer)[len(outer):]
            text = hinted
        if not (getattr(cause, "same_on_every_rank", False) and _global_rank() != 0):
            print(f"error: {text}", file=sys.stderr)
        return 1
    return 0
