"""Generate charged N-body trajectories once and cache them on disk, verified on every load.

One file per split holds the full simulated trajectories (float64 positions, velocities, charges)
plus a metadata dict (every generation parameter) and a SHA-256 checksum of the tensors. The file
name is keyed by all parameters (readable fields plus a hash of the metadata), so changing any of
them is a cache miss. On load the metadata, shapes and checksum are verified; a corrupt, truncated
or mismatching file triggers a :class:`CacheWarning` naming the file and is regenerated, never
silently used. Writes are atomic (temporary file in the same folder + ``os.replace``), so readers
never see a half-written file, even with several processes generating at once.

Slicing history / input / target frames is done afterwards (:mod:`set_lightning.data.datasets`),
so changing those needs no regeneration.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from set_lightning.data.simulator import (
    default_loc_std,
    n_saved_frames,
    sample_initial_conditions,
    simulate_charged,
)

__all__ = [
    "FORMAT_VERSION",
    "CacheWarning",
    "TrajectorySpec",
    "Trajectories",
    "split_seed",
    "generate_trajectories",
    "load_trajectories",
    "save_trajectories",
    "load_or_generate",
]

#: Bump when the file layout or the simulator's output changes: old files then miss the cache.
FORMAT_VERSION = 1

_TENSOR_KEYS = ("x", "v", "charges")


class CacheWarning(UserWarning):
    """A cache file was unreadable, corrupt or did not match its parameters; it is regenerated."""


def split_seed(seed: int, split: str) -> int:
    """Seed of one split, derived from the data set seed (distinct for train / val / test).

    Returns:
        a non-negative 63-bit integer, a deterministic hash of ``(seed, split)``.
    """
    digest = hashlib.sha256(f"set_lightning/charged/{split}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TrajectorySpec:
    """Every parameter that determines the trajectories of one split.

    Attributes:
        split: split name (``"train"``, ``"val"``, ``"test"``); it changes the seed.
        count: number of trajectories ``B``.
        n_particles: particles per trajectory ``N``.
        steps: integration steps.
        sample_freq: steps between saved frames.
        dt: integration time step.
        seed: data set seed (each split derives its own via :func:`split_seed`).
        interaction_strength: Coulomb constant ``c``.
        vel_norm: initial speed of every particle.
        loc_std: initial position scale; None means ``(N / 5) ** (1 / 3)``.
    """

    split: str
    count: int
    n_particles: int
    steps: int = 5000
    sample_freq: int = 100
    dt: float = 0.001
    seed: int = 0
    interaction_strength: float = 1.0
    vel_norm: float = 0.5
    loc_std: float | None = None

    @property
    def n_saved_frames(self) -> int:
        """Saved frames per trajectory, ``steps // sample_freq - 1``."""
        return n_saved_frames(self.steps, self.sample_freq)

    def metadata(self) -> dict[str, Any]:
        """JSON-able dict of every parameter (loc_std resolved), the format version and split seed."""
        meta = asdict(self)
        meta["count"] = int(self.count)
        meta["n_particles"] = int(self.n_particles)
        meta["steps"] = int(self.steps)
        meta["sample_freq"] = int(self.sample_freq)
        meta["seed"] = int(self.seed)
        meta["dt"] = float(self.dt)
        meta["interaction_strength"] = float(self.interaction_strength)
        meta["vel_norm"] = float(self.vel_norm)
        meta["loc_std"] = float(default_loc_std(self.n_particles) if self.loc_std is None else self.loc_std)
        meta["split_seed"] = split_seed(self.seed, self.split)
        meta["format_version"] = FORMAT_VERSION
        meta["simulator"] = "nri_charged_particles"
        return meta

    def key(self) -> str:
        """Short hash of :meth:`metadata`."""
        blob = json.dumps(self.metadata(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def filename(self) -> str:
        """Cache file name: readable parameters plus the metadata hash."""
        return (
            f"charged_{self.split}_N{self.n_particles}_n{self.count}_steps{self.steps}"
            f"_freq{self.sample_freq}_dt{self.dt:g}_seed{self.seed}_{self.key()}.pt"
        )


@dataclass(frozen=True)
class Trajectories:
    """Simulated trajectories of one split.

    Attributes:
        x: ``(B, T, N, 3)`` float64 positions of the saved frames.
        v: ``(B, T, N, 3)`` float64 velocities of the saved frames.
        charges: ``(B, N, 1)`` float64 charges (+1 / -1).
    """

    x: Tensor
    v: Tensor
    charges: Tensor

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by name."""
        return {"x": self.x, "v": self.v, "charges": self.charges}


def generate_trajectories(spec: TrajectorySpec, num_threads: int | None = 1) -> Trajectories:
    """Sample initial conditions with the split's seed and simulate them (batched, float64).

    Args:
        spec: what to generate.
        num_threads: torch threads while simulating (see :func:`simulate_charged`).
    """
    generator = torch.Generator().manual_seed(split_seed(spec.seed, spec.split))
    x0, v0, charges = sample_initial_conditions(
        spec.count, spec.n_particles, generator, loc_std=spec.loc_std, vel_norm=spec.vel_norm
    )
    x, v = simulate_charged(
        x0, v0, charges, steps=spec.steps, dt=spec.dt, sample_freq=spec.sample_freq,
        interaction_strength=spec.interaction_strength, num_threads=num_threads,
    )
    return Trajectories(x=x, v=v, charges=charges)


def _checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the tensors."""
    h = hashlib.sha256()
    for name in _TENSOR_KEYS:
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().reshape(-1).view("uint8").data)
    return h.hexdigest()


def _expected_shapes(spec: TrajectorySpec) -> dict[str, tuple[int, ...]]:
    frames = (spec.count, spec.n_saved_frames, spec.n_particles, 3)
    return {"x": frames, "v": frames, "charges": (spec.count, spec.n_particles, 1)}


def save_trajectories(path: str | os.PathLike, spec: TrajectorySpec, data: Trajectories) -> None:
    """Write ``data`` with its metadata and checksum to ``path`` atomically (tmp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().cpu().contiguous() for k, t in data.tensors().items()}
    payload = {"meta": spec.metadata(), "checksum": _checksum(tensors), "tensors": tensors}
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


def _problem(payload: Any, spec: TrajectorySpec) -> str | None:
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
    tensors = payload["tensors"]
    if not isinstance(tensors, dict) or set(tensors) != set(_TENSOR_KEYS):
        return "missing or unexpected tensors"
    for name, shape in _expected_shapes(spec).items():
        t = tensors[name]
        if not isinstance(t, Tensor) or t.dtype != torch.float64 or tuple(t.shape) != shape:
            got = (t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
            return f"tensor {name!r} is {got}, expected float64 {shape}"
    if _checksum(tensors) != payload["checksum"]:
        return "checksum mismatch"
    return None


def load_trajectories(path: str | os.PathLike, spec: TrajectorySpec) -> Trajectories | None:
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


def load_or_generate(spec: TrajectorySpec, cache_dir: str | os.PathLike) -> Trajectories:
    """Trajectories of ``spec``, from ``cache_dir`` when a valid file exists, else simulated and cached.

    Returns:
        :class:`Trajectories` (float64, CPU).
    """
    path = Path(cache_dir) / spec.filename()
    data = load_trajectories(path, spec)
    if data is None:
        data = generate_trajectories(spec)
        save_trajectories(path, spec, data)
    return data
