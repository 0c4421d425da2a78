"""Bring your own trajectories: load, validate and split a user's ``.npz`` / ``.pt`` file.

File layout (``--data.source PATH``); ``B`` trajectories, ``T`` saved frames, ``N`` particles:

=============  ===========================  ====================================================
key            shape                        meaning
=============  ===========================  ====================================================
``x``          ``(B, T, N, 3)``             positions of every saved frame
``v``          ``(B, T, N, 3)``             velocities of the same frames
``node_attr``  ``(B, N, F)``, ``F >= 1``    per-particle attributes (charge, mass, ...); the
                                            first column is what today's models read as
                                            ``charges``
``edge_attr``  ``(B, N, N)`` or             optional per-pair attributes (an interaction graph,
               ``(B, N, N, E)``             spring constants, ...)
=============  ===========================  ====================================================

A ``.npz`` file is written with ``numpy.savez(path, x=..., v=..., node_attr=...)``; a ``.pt`` file
holds a dict of tensors with these keys (``torch.save({...}, path)``). Values may be of any real
(float, integer or boolean) dtype, are stored as float64 and must be finite. Frames are indexed
0 .. T-1 in the file's order, and the ``history`` / ``input_frame`` / ``target_frame`` options window
them as they window simulated frames. Trajectories are split into train / val / test by a
permutation drawn from ``seed``: the first ``n_train`` permuted trajectories train, the next
``n_val`` validate, the next ``n_test`` test (or, with ``split_fractions``, ``floor(f * B)`` each).

Every problem is one line naming the key and the expected shape, e.g.
``data.source: key 'x' must have shape (B, T, N, 3), got (10, 5, 3)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from set_lightning.errors import UserError
from set_lightning.data.cache import Trajectories, split_seed

__all__ = ["SOURCE_KEYS", "load_source", "split_source"]

#: Keys of a source file and the shape each must have.
SOURCE_KEYS = {
    "x": "(B, T, N, 3)",
    "v": "(B, T, N, 3)",
    "node_attr": "(B, N, F)",
    "edge_attr": "(B, N, N) or (B, N, N, E)",
}
_REQUIRED = ("x", "v", "node_attr")
_LAYOUT = "keys x (B, T, N, 3), v (B, T, N, 3), node_attr (B, N, F) and optionally edge_attr (B, N, N) or (B, N, N, E)"


def _fail(message: str) -> UserError:
    return UserError(f"data.source: {message}")


def _read(path: Path) -> dict[str, object]:
    """The raw arrays / tensors of a ``.npz`` or ``.pt`` file, by key."""
    if path.is_dir():
        raise _fail(f"{path} is a directory; pass a .npz or .pt trajectory file")
    if not path.is_file():
        raise _fail(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt"):
        raise _fail(f"{path} must be a .npz or .pt file, got a {suffix or 'file without'} suffix")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt archive, pickled objects that are not tensors, ...
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise _fail(f"cannot read {path} ({type(err).__name__}: {first_line})") from err
    if not isinstance(payload, dict):
        raise _fail(f"a .pt file must hold a dict of tensors with {_LAYOUT}; got a {type(payload).__name__}")
    return payload


def _as_float64(name: str, value: object) -> Tensor:
    """``value`` as a float64 tensor; a one-line error for a non-numeric or non-finite one."""
    if isinstance(value, Tensor):
        array = value.detach().cpu()
        ok = not (array.is_complex() or array.dtype in (torch.quint8, torch.qint8, torch.qint32))
        dtype = str(array.dtype).replace("torch.", "")
    elif isinstance(value, np.ndarray):
        ok = value.dtype.kind in "biuf"
        dtype = str(value.dtype)
        array = torch.from_numpy(value) if ok else None
    else:
        raise _fail(f"key {name!r} must be an array of shape {SOURCE_KEYS[name]}, got a {type(value).__name__}")
    if not ok:
        raise _fail(f"key {name!r} must hold real numbers (float, int or bool), got dtype {dtype}")
    out = array.to(torch.float64)
    if not torch.isfinite(out).all():
        where = ""
        if out.dim() >= 1:
            first = (~torch.isfinite(out)).reshape(out.shape[0], -1).any(dim=1).nonzero()[0, 0].item()
            where = f" (first in trajectory {first})"
        raise _fail(f"key {name!r} holds NaN or infinite values{where}")
    return out


def _shape_error(name: str, expected: str, got: Tensor) -> ValueError:
    return _fail(f"key {name!r} must have shape {expected}, got {tuple(got.shape)}")


def load_source(path: str | os.PathLike) -> Trajectories:
    """Load and validate a trajectory file (layout in the module docstring).

    Returns:
        :class:`Trajectories` (float64): ``x``, ``v``, ``node_attr``, ``charges`` (the first column of
        ``node_attr``) and ``edge_attr`` when the file has it.

    Raises:
        ValueError: ``data.source: ...``, one line naming the key and the expected shape.
    """
    path = Path(path)
    raw = _read(path)
    unknown = sorted(set(raw) - set(SOURCE_KEYS))
    if unknown:
        raise _fail(f"unexpected key {unknown[0]!r} in {path} (allowed: {_LAYOUT})")
    for name in _REQUIRED:
        if name not in raw:
            raise _fail(f"missing key {name!r} {SOURCE_KEYS[name]} in {path} (expected {_LAYOUT})")
    t = {name: _as_float64(name, value) for name, value in raw.items()}
    x, v, node_attr = t["x"], t["v"], t["node_attr"]
    if x.dim() != 4 or x.shape[-1] != 3 or min(x.shape) < 1:
        raise _shape_error("x", "(B, T, N, 3) with B, T, N >= 1", x)
    b, _, n, _ = x.shape
    if n < 2:
        raise _shape_error("x", "(B, T, N, 3) with N >= 2 particles", x)
    if v.shape != x.shape:
        raise _shape_error("v", f"(B, T, N, 3) = {tuple(x.shape)} like 'x'", v)
    if node_attr.dim() != 3 or tuple(node_attr.shape[:2]) != (b, n) or node_attr.shape[2] < 1:
        raise _shape_error("node_attr", f"(B, N, F) = ({b}, {n}, F) with F >= 1", node_attr)
    edge_attr = t.get("edge_attr")
    if edge_attr is not None and (edge_attr.dim() not in (3, 4) or tuple(edge_attr.shape[:3]) != (b, n, n)
                                  or (edge_attr.dim() == 4 and edge_attr.shape[3] < 1)):
        raise _shape_error("edge_attr", f"(B, N, N) = ({b}, {n}, {n}) or (B, N, N, E) = ({b}, {n}, {n}, E)", edge_attr)
    return Trajectories(x=x, v=v, charges=node_attr[..., :1].contiguous(), edge_attr=edge_attr, node_attr=node_attr)


def split_source(
    data: Trajectories,
    counts: dict[str, int],
    seed: int,
    fractions: tuple[float, float, float] | None = None,
) -> tuple[dict[str, Trajectories], dict[str, Tensor]]:
    """Split a loaded file into train / val / test deterministically.

    Args:
        data: the whole file (:func:`load_source`).
        counts: ``{"train": n_train, "val": n_val, "test": n_test}``, used when ``fractions`` is None.
        seed: seeds the permutation of the trajectories.
        fractions: ``(train, val, test)`` fractions of ``B`` (each split gets ``floor(f * B)``).

    Returns:
        ``(splits, indices)``: the trajectories of each split, and the indices into the file they came from.
    """
    b = data.x.shape[0]
    if fractions is not None:
        counts = {split: int(np.floor(f * b + 1e-9)) for split, f in zip(("train", "val", "test"), fractions)}
    total = sum(counts.values())
    if total > b:
        raise _fail(
            f"n_train + n_val + n_test = {counts['train']} + {counts['val']} + {counts['test']} = {total} exceeds "
            f"the {b} trajectories in the file; set data.n_train / n_val / n_test or data.split_fractions"
        )
    generator = torch.Generator().manual_seed(split_seed(seed, "permutation", "source"))
    order = torch.randperm(b, generator=generator)
    splits, indices, start = {}, {}, 0
    for split in ("train", "val", "test"):
        idx = order[start : start + counts[split]]
        start += counts[split]
        indices[split] = idx
        splits[split] = Trajectories(**{name: t[idx] for name, t in data.tensors().items()})
    return splits, indices
