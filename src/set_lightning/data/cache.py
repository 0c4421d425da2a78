"""Generate N-body trajectories once and cache them on disk, verified on every load.

One spec class per system (:mod:`set_lightning.data.specs`: :class:`TrajectorySpec` for the charged
particles, :class:`SpringsSpec`, :class:`GravitySpec`) holds every parameter of one split. One file per split holds the full
simulated trajectories (float64 positions, velocities, the per-node attribute ``charges`` and, for
springs, the spring graphs ``edge_attr``) plus a metadata dict (the system, every generation
parameter) and a SHA-256 checksum of the tensors. The file name is keyed by all parameters (readable
fields plus a hash of the metadata), so changing any of them is a cache miss; the charged keys are
those of the files written before the other systems existed. On load the metadata, shapes and
checksum are verified; a corrupt, truncated or mismatching file triggers a :class:`CacheWarning`
naming the file and is regenerated, never silently used. Writes are atomic (temporary file in the
same folder + ``os.replace``), so readers never see a half-written file, even with several processes
generating at once.

Slicing history / input / target frames is done afterwards (:mod:`set_lightning.data.datasets`), so
changing those needs no regeneration.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor

from set_lightning.data.specs import (
    FORMAT_VERSION,
    SIMULATOR_CODE,
    SPECS,
    SYSTEMS,
    GravitySpec,
    Spec,
    SpringsSpec,
    Trajectories,
    TrajectorySpec,
    generate_trajectories,
    split_seed,
)
from set_lightning.errors import UserError
from set_lightning.files import unwritable_reason

__all__ = [
    "FORMAT_VERSION",
    "SIMULATOR_CODE",
    "SPECS",
    "SYSTEMS",
    "CacheWarning",
    "GravitySpec",
    "Spec",
    "SpringsSpec",
    "TrajectorySpec",
    "Trajectories",
    "split_seed",
    "generate_trajectories",
    "load_trajectories",
    "save_trajectories",
    "load_or_generate",
]

class CacheWarning(UserWarning):
    """A cache file was unreadable, corrupt or did not match its parameters; it is regenerated."""


def _checksum(tensors: dict[str, Tensor], names: Iterable[str]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the tensors ``names`` (in that order)."""
    h = hashlib.sha256()
    for name in names:
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().reshape(-1).view("uint8").data)
    return h.hexdigest()


def save_trajectories(path: str | os.PathLike, spec: Spec, data: Trajectories) -> None:
    """Write ``data`` with its metadata and checksum to ``path`` atomically (tmp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().cpu().contiguous() for k, t in data.tensors().items()}
    payload = {"meta": spec.metadata(), "checksum": _checksum(tensors, spec.tensor_shapes()), "tensors": tensors}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _problem(payload: Any, spec: Spec) -> str | None:
    """Why ``payload`` is not a valid cache entry for ``spec``; None if it is."""
    if not isinstance(payload, dict) or not {"meta", "checksum", "tensors"} <= payload.keys():
        return "unexpected file structure"
    meta, expected = payload["meta"], spec.metadata()
    if meta != expected:
        if not isinstance(meta, dict):
            return "metadata is not a dict"
        diff = sorted(k for k in expected.keys() | meta.keys() if meta.get(k) != expected.get(k))
        details = ", ".join(f"{k}: file {meta.get(k)!r} != expected {expected.get(k)!r}" for k in diff)
        return f"metadata mismatch ({details})"
    tensors, shapes = payload["tensors"], spec.tensor_shapes()
    if not isinstance(tensors, dict) or set(tensors) != set(shapes):
        return "missing or unexpected tensors"
    for name, shape in shapes.items():
        t = tensors[name]
        if not isinstance(t, Tensor) or t.dtype != torch.float64 or tuple(t.shape) != shape:
            got = (t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
            return f"tensor {name!r} is {got}, expected float64 {shape}"
    if _checksum(tensors, shapes) != payload["checksum"]:
        return "checksum mismatch"
    return None


def load_trajectories(path: str | os.PathLike, spec: Spec) -> Trajectories | None:
    """Load and verify a cache file.

    Returns:
        the trajectories, or None when the file does not exist or is invalid (unreadable,
        truncated, wrong metadata / shapes / checksum); an invalid file also raises a
        :class:`CacheWarning` naming it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure means a corrupt file
        warnings.warn(f"cache file {path} is unreadable or corrupt ({type(err).__name__}: {err}); regenerating it",
                      CacheWarning, stacklevel=2)
        return None
    problem = _problem(payload, spec)
    if problem is not None:
        warnings.warn(f"cache file {path} is invalid: {problem}; regenerating it", CacheWarning, stacklevel=2)
        return None
    return Trajectories(**payload["tensors"])


def load_or_generate(spec: Spec, cache_dir: str | os.PathLike) -> Trajectories:
    """Trajectories of ``spec``, from ``cache_dir`` when a valid file exists, else simulated and cached.

    Returns:
        :class:`Trajectories` (float64, CPU).

    Raises:
        UserError: the split must be simulated but ``cache_dir`` is not writable (checked before
            simulating, so no minutes are spent on data that cannot be kept).
    """
    path = Path(cache_dir) / spec.filename()
    data = load_trajectories(path, spec)
    if data is None:
        reason = unwritable_reason(cache_dir)
        if reason is not None:
            raise UserError(
                f"cache_dir: the {spec.split} split ({spec.count} trajectories) must be simulated and cached in "
                f"{cache_dir}, but {reason}; choose a writable cache_dir"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        seen = _file_state(path)
        # one process simulates a split; the others asking for it meanwhile wait, then load its file
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            if _file_state(path) != seen:
                data = load_trajectories(path, spec)
            if data is None:
                data = generate_trajectories(spec)
                save_trajectories(path, spec, data)
    return data


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``: tells whether another process replaced it; None if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
