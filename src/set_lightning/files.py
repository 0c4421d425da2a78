"""Small file-system helpers shared by the layers: atomic writes and writability checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never half-written."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")  # processes writing one file do not collide
    tmp.write_text(text)
    os.replace(tmp, path)


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why files cannot be created in ``folder`` (``None`` when they can); creates nothing.

    A missing folder is judged by its nearest existing parent (where it would be created). The
    check creates and removes a temporary file there, so it also sees read-only file systems and
    holds for root, for whom permission bits do not apply.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write_check_", dir=existing)
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    os.close(fd)
    os.unlink(tmp)
    return None
