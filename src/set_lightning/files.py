"""Small file-system helpers shared by the layers: atomic writes, JSON-lines files, writability checks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never half-written."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")  # processes writing one file do not collide
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped); ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` as whole lines, flushed and fsynced: a killed writer never leaves half a row."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


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
