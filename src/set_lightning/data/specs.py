"""What one split of simulated trajectories is: a spec per system (its every parameter, the cache key and
file name it gives), the split seeds, the simulators' code version, and the trajectories themselves.

One spec class per system (:class:`TrajectorySpec` for the charged particles, :class:`SpringsSpec`,
:class:`GravitySpec`) holds every parameter of one split; :func:`generate_trajectories` simulates it.
The on-disk cache of generated splits is :mod:`set_lightning.data.cache`.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from set_lightning.data.gravity import gravity_frames, sample_gravity, simulate_gravity
from set_lightning.data.simulator import (
    default_loc_std,
    n_saved_frames,
    sample_initial_conditions,
    simulate_charged,
)
from set_lightning.data.springs import sample_springs, simulate_springs

#: Bump when the file layout changes: old files then miss the cache.
FORMAT_VERSION = 1



def _code_digest(*functions: Any) -> str:
    """Hash of the source of the modules defining ``functions`` (parsed: comments and layout do not count)."""
    h = hashlib.sha256()
    for path in sorted({inspect.getsourcefile(f) for f in functions}):
        h.update(ast.dump(ast.parse(Path(path).read_text())).encode())
    return h.hexdigest()[:16]


#: the simulators' code version (every system's module), part of every cache key
SIMULATOR_CODE = _code_digest(simulate_charged, simulate_springs, simulate_gravity)

#: The simulated systems, by ``--data.system`` name.
SYSTEMS = ("charged", "springs", "gravity")


def split_seed(seed: int, split: str, system: str = "charged") -> int:
    """Seed of one split, derived from the data set seed (distinct for train / val / test and per system).

    Returns:
        a non-negative 63-bit integer, a deterministic hash of ``(system, seed, split)``.
    """
    digest = hashlib.sha256(f"set_lightning/{system}/{split}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _jsonable(value: Any, annotation: str) -> Any:
    """``value`` as the JSON type its field declares (``1`` for a float field becomes ``1.0``)."""
    if value is None:
        return None
    if annotation.startswith("int"):
        return int(value)
    if annotation.startswith("float"):
        return float(value)
    if annotation.startswith("tuple"):
        return [float(v) for v in value]
    return value


@dataclass(frozen=True)
class _SpecBase:
    """The fields, metadata, cache key and file name shared by the per-system specs.

    Subclasses set :attr:`system` and :attr:`simulator` and add their physics parameters as fields.
    """

    system: ClassVar[str]
    simulator: ClassVar[str]

    split: str
    count: int
    n_particles: int
    steps: int = 5000
    sample_freq: int = 100
    dt: float = 0.001
    seed: int = 0

    @property
    def n_frames(self) -> int:
        """Saved frames per trajectory."""
        return n_saved_frames(self.steps, self.sample_freq)

    def _extra_metadata(self) -> dict[str, Any]:
        """Resolved defaults and other entries of :meth:`metadata` beyond the fields."""
        return {"system": self.system}

    def metadata(self) -> dict[str, Any]:
        """JSON-able dict of every parameter (defaults resolved), the format version and split seed."""
        meta = {f.name: _jsonable(getattr(self, f.name), str(f.type)) for f in fields(self)}
        meta.update(self._extra_metadata())
        meta["split_seed"] = split_seed(self.seed, self.split, self.system)
        meta["format_version"] = FORMAT_VERSION
        meta["simulator"] = self.simulator
        meta["simulator_code"] = SIMULATOR_CODE
        return meta

    def key(self) -> str:
        """Short hash of :meth:`metadata`."""
        blob = json.dumps(self.metadata(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def filename(self) -> str:
        """Cache file name: readable parameters plus the metadata hash."""
        return (
            f"{self.system}_{self.split}_N{self.n_particles}_n{self.count}_steps{self.steps}"
            f"_freq{self.sample_freq}_dt{self.dt:g}_seed{self.seed}_{self.key()}.pt"
        )

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor of a split, by name (the names a cache file holds)."""
        frames = (self.count, self.n_frames, self.n_particles, 3)
        return {"x": frames, "v": frames, "charges": (self.count, self.n_particles, 1)}


@dataclass(frozen=True)
class TrajectorySpec(_SpecBase):
    """Every parameter that determines the charged trajectories of one split.

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

    system: ClassVar[str] = "charged"
    simulator: ClassVar[str] = "nri_charged_particles"

    interaction_strength: float = 1.0
    vel_norm: float = 0.5
    loc_std: float | None = None

    def _extra_metadata(self) -> dict[str, Any]:
        # no "system" entry: the charged keys predate the other systems and must not change
        return {"loc_std": float(default_loc_std(self.n_particles) if self.loc_std is None else self.loc_std)}

    def simulate(self, generator: torch.Generator, num_threads: int | None) -> Trajectories:
        """Sample the initial conditions with ``generator`` and simulate them."""
        x0, v0, charges = sample_initial_conditions(
            self.count, self.n_particles, generator, loc_std=self.loc_std, vel_norm=self.vel_norm
        )
        x, v = simulate_charged(
            x0, v0, charges, steps=self.steps, dt=self.dt, sample_freq=self.sample_freq,
            interaction_strength=self.interaction_strength, num_threads=num_threads,
        )
        return Trajectories(x=x, v=v, charges=charges)


@dataclass(frozen=True)
class SpringsSpec(_SpecBase):
    """Every parameter that determines the spring trajectories of one split (NRI's ``SpringSim``, 3-D).

    Attributes:
        split, count, n_particles, steps, sample_freq, dt, seed: as :class:`TrajectorySpec`.
        interaction_strength: spring constant ``k``.
        vel_norm: initial speed of every particle.
        loc_std: standard deviation of the initial positions.
        spring_prob: probability of a spring between two particles.
    """

    system: ClassVar[str] = "springs"
    simulator: ClassVar[str] = "nri_springs"

    interaction_strength: float = 0.1
    vel_norm: float = 0.5
    loc_std: float = 0.5
    spring_prob: float = 0.5

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """As for the charged system, plus the spring graphs ``edge_attr`` ``(B, N, N)``."""
        return {**super().tensor_shapes(), "edge_attr": (self.count, self.n_particles, self.n_particles)}

    def simulate(self, generator: torch.Generator, num_threads: int | None) -> Trajectories:
        """Sample initial states and spring graphs with ``generator`` and simulate them (unit masses)."""
        x0, v0, adjacency = sample_springs(
            self.count, self.n_particles, generator, loc_std=self.loc_std, vel_norm=self.vel_norm,
            spring_prob=self.spring_prob,
        )
        x, v = simulate_springs(
            x0, v0, adjacency, steps=self.steps, dt=self.dt, sample_freq=self.sample_freq,
            interaction_strength=self.interaction_strength, num_threads=num_threads,
        )
        masses = torch.ones((self.count, self.n_particles, 1), dtype=torch.float64)
        return Trajectories(x=x, v=v, charges=masses, edge_attr=adjacency)


@dataclass(frozen=True)
class GravitySpec(_SpecBase):
    """Every parameter that determines the gravity trajectories of one split (SEGNN's ``GravitySim``).

    Attributes:
        split, count, n_particles, steps, sample_freq, dt, seed: as :class:`TrajectorySpec`.
        interaction_strength: gravitational constant ``G``.
        softening: softening length.
        mass_range: masses ``~ U(low, high)`` (equal bounds: constant masses).
        loc_std: standard deviation of the initial positions.
        vel_std: standard deviation of the initial velocities (before the centre-of-mass shift).
    """

    system: ClassVar[str] = "gravity"
    simulator: ClassVar[str] = "segnn_gravity"

    interaction_strength: float = 1.0
    softening: float = 0.1
    mass_range: tuple[float, float] = (1.0, 1.0)
    loc_std: float = 1.0
    vel_std: float = 1.0

    @property
    def n_frames(self) -> int:
        """Saved frames per trajectory, ``steps // sample_freq`` (frame 0 is the initial state)."""
        return gravity_frames(self.steps, self.sample_freq)

    def simulate(self, generator: torch.Generator, num_threads: int | None) -> Trajectories:
        """Sample initial states and masses with ``generator`` and simulate them (masses in ``charges``)."""
        x0, v0, masses = sample_gravity(
            self.count, self.n_particles, generator, mass_range=self.mass_range, loc_std=self.loc_std,
            vel_std=self.vel_std,
        )
        x, v = simulate_gravity(
            x0, v0, masses, steps=self.steps, dt=self.dt, sample_freq=self.sample_freq,
            interaction_strength=self.interaction_strength, softening=self.softening, num_threads=num_threads,
        )
        return Trajectories(x=x, v=v, charges=masses)


#: Any of the per-system specs.
Spec = TrajectorySpec | SpringsSpec | GravitySpec

#: The spec class of each system.
SPECS: dict[str, type] = {"charged": TrajectorySpec, "springs": SpringsSpec, "gravity": GravitySpec}


@dataclass(frozen=True)
class Trajectories:
    """Trajectories of one split (simulated or loaded from a user's file).

    Attributes:
        x: ``(B, T, N, 3)`` float64 positions of the saved frames.
        v: ``(B, T, N, 3)`` float64 velocities of the saved frames.
        charges: ``(B, N, 1)`` float64 per-node scalar attribute: charges (+1 / -1) of the charged
            system, masses of gravity, ones (unit masses) for springs, the first column of
            ``node_attr`` for a file source.
        edge_attr: optional per-pair attributes, ``(B, N, N)`` (the spring graph) or ``(B, N, N, E)``.
        node_attr: optional ``(B, N, F)`` node attributes of a file source.
    """

    x: Tensor
    v: Tensor
    charges: Tensor
    edge_attr: Tensor | None = None
    node_attr: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The tensors that are set, by name."""
        named = {"x": self.x, "v": self.v, "charges": self.charges, "edge_attr": self.edge_attr,
                 "node_attr": self.node_attr}
        return {k: t for k, t in named.items() if t is not None}


def generate_trajectories(spec: Spec, num_threads: int | None = 1) -> Trajectories:
    """Sample initial conditions with the split's seed and simulate them (batched, float64).

    Args:
        spec: what to generate (:class:`TrajectorySpec`, :class:`SpringsSpec` or :class:`GravitySpec`).
        num_threads: torch threads while simulating (see :func:`simulate_charged`).
    """
    generator = torch.Generator().manual_seed(split_seed(spec.seed, spec.split, spec.system))
    return spec.simulate(generator, num_threads)
