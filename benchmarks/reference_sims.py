"""Straightforward per-trajectory NumPy reference simulators: the oracles of the tests and benchmarks.

These loops follow the published simulators line by line, one trajectory at a time. They are the
reference the batched torch simulators of :mod:`set_lightning.data` are checked and benchmarked
against; they are deliberately *not* optimised and not installed with the package. Do not use them
to generate data sets.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# Springs and gravity
#
# springs: NRI's ``SpringSim`` in 3-D as SEGNN ships it (RobDHess/Steerable-E3-GNN,
#          nbody/dataset/synthetic_sim.py): walls off after t = 0, no noise.
# gravity: SEGNN's ``GravitySim`` (same file), P. Mocz's kick-drift-kick leapfrog with softening.
# ---------------------------------------------------------------------------------------------


def _clipped_pair_forces(loc: np.ndarray, forces_size: np.ndarray, max_f: float) -> np.ndarray:
    """NRI's ``sum_j forces_size[i, j] (x_i - x_j)`` for ``loc (d, n)``, each component clipped to
    ``+/- max_f`` -> ``(d, n)`` (``forces_size`` ``(n, n)`` with a zero diagonal)."""
    n = loc.shape[1]
    diffs = np.concatenate([np.subtract.outer(loc[d, :], loc[d, :]).reshape(1, n, n) for d in range(loc.shape[0])])
    f = (forces_size.reshape(1, n, n) * diffs).sum(axis=-1)
    f[f > max_f] = max_f
    f[f < -max_f] = -max_f
    return f


def _spring_forces(loc: np.ndarray, edges: np.ndarray, interaction_strength: float, max_f: float) -> np.ndarray:
    """Clipped Hooke forces of NRI for ``loc (d, n)`` and the spring graph ``edges (n, n)`` -> ``(d, n)``."""
    forces_size = -interaction_strength * edges
    np.fill_diagonal(forces_size, 0)  # no self forces
    return _clipped_pair_forces(loc, forces_size, max_f)


def springs_simulate_one(
    x0: np.ndarray,
    v0: np.ndarray,
    edges: np.ndarray,
    steps: int = 5000,
    dt: float = 0.001,
    sample_freq: int = 100,
    interaction_strength: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ONE spring system the way NRI's ``SpringSim.sample_trajectory`` does.

    Args:
        x0: ``(N, 3)`` initial positions.
        v0: ``(N, 3)`` initial velocities.
        edges: ``(N, N)`` spring graph (symmetric, zero diagonal).
        steps: number of integration steps (a multiple of ``sample_freq``).
        dt: time step; forces are clipped per component to ``+/- 0.1 / dt``.
        sample_freq: save every ``sample_freq`` steps.
        interaction_strength: spring constant ``k``.

    Returns:
        ``(x, v)``, each ``(T, N, 3)`` float64 with ``T = steps // sample_freq - 1``; frame ``k`` is the
        state right after the position update of step ``(k + 1) * sample_freq``.
    """
    edges = np.asarray(edges, dtype=np.float64)
    return nri_integrate_one(
        x0, v0, lambda loc: _spring_forces(loc, edges, interaction_strength, 0.1 / dt), steps, dt, sample_freq
    )


def nri_integrate_one(
    x0: np.ndarray, v0: np.ndarray, forces, steps: int, dt: float, sample_freq: int
) -> tuple[np.ndarray, np.ndarray]:
    """NRI's integration loop for ONE trajectory, as its ``sample_trajectory`` methods write it.

    ``v += dt F(x0)``; then for ``i = 1 .. steps-1``: ``x += dt v``; save if ``i % sample_freq == 0``;
    ``v += dt F(x)``. ``forces`` maps positions ``(d, n)`` (NRI's layout) to clipped forces ``(d, n)``.

    Returns:
        ``(x, v)``, each ``(T, N, 3)`` float64 with ``T = steps // sample_freq - 1``.
    """
    if steps % sample_freq != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of sample_freq ({sample_freq})")
    t_save = steps // sample_freq - 1
    loc_next = np.array(x0, dtype=np.float64).transpose().copy()  # (d, n), NRI's layout
    vel_next = np.array(v0, dtype=np.float64).transpose().copy()
    loc = np.zeros((t_save,) + loc_next.shape)
    vel = np.zeros((t_save,) + vel_next.shape)
    counter = 0
    vel_next += dt * forces(loc_next)
    for i in range(1, steps):
        loc_next += dt * vel_next
        if i % sample_freq == 0:
            loc[counter], vel[counter] = loc_next, vel_next
            counter += 1
        vel_next += dt * forces(loc_next)
    return loc.transpose(0, 2, 1).copy(), vel.transpose(0, 2, 1).copy()


def _gravity_acceleration(pos: np.ndarray, mass: np.ndarray, g: float, softening: float) -> np.ndarray:
    """SEGNN's ``compute_acceleration``: ``pos (n, 3)``, ``mass (n, 1)`` -> ``(n, 3)``."""
    x, y, z = pos[:, 0:1], pos[:, 1:2], pos[:, 2:3]
    dx, dy, dz = x.T - x, y.T - y, z.T - z  # r_j - r_i
    inv_r3 = dx**2 + dy**2 + dz**2 + softening**2
    inv_r3[inv_r3 > 0] = inv_r3[inv_r3 > 0] ** (-1.5)
    return np.hstack((g * (dx * inv_r3) @ mass, g * (dy * inv_r3) @ mass, g * (dz * inv_r3) @ mass))


def gravity_simulate_one(
    x0: np.ndarray,
    v0: np.ndarray,
    masses: np.ndarray,
    steps: int = 5000,
    dt: float = 0.001,
    sample_freq: int = 100,
    interaction_strength: float = 1.0,
    softening: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ONE softened-gravity system the way SEGNN's ``GravitySim.sample_trajectory`` does.

    Args:
        x0: ``(N, 3)`` initial positions.
        v0: ``(N, 3)`` initial velocities (already in the centre-of-mass frame).
        masses: ``(N,)`` or ``(N, 1)`` masses.
        steps: number of kick-drift-kick steps (a multiple of ``sample_freq``).
        dt: time step.
        sample_freq: save every ``sample_freq`` steps, from step 0.
        interaction_strength: gravitational constant ``G``.
        softening: softening length.

    Returns:
        ``(x, v)``, each ``(T, N, 3)`` float64 with ``T = steps // sample_freq``; frame ``k`` is the state
        at step ``k * sample_freq``.
    """
    if steps % sample_freq != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of sample_freq ({sample_freq})")
    t_save = steps // sample_freq
    mass = np.asarray(masses, dtype=np.float64).reshape(-1, 1)
    pos = np.array(x0, dtype=np.float64)
    vel = np.array(v0, dtype=np.float64)
    pos_save = np.zeros((t_save,) + pos.shape)
    vel_save = np.zeros((t_save,) + vel.shape)
    acc = _gravity_acceleration(pos, mass, interaction_strength, softening)
    for i in range(steps):
        if i % sample_freq == 0:
            pos_save[i // sample_freq] = pos
            vel_save[i // sample_freq] = vel
        vel += acc * dt / 2.0
        pos += vel * dt
        acc = _gravity_acceleration(pos, mass, interaction_strength, softening)
        vel += acc * dt / 2.0
    return pos_save, vel_save


def simulate_each(
    simulate_one, x0: np.ndarray, v0: np.ndarray, attr: np.ndarray, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Run a ``*_simulate_one`` reference on each trajectory of ``x0 (B, N, 3)`` in turn (the slow baseline).

    ``attr`` is the per-trajectory attribute: ``(B, N, N)`` spring graphs or ``(B, N, 1)`` masses.

    Returns:
        ``(x, v)``, each ``(B, T, N, 3)`` float64.
    """
    outs = [simulate_one(x0[b], v0[b], attr[b], **kwargs) for b in range(len(x0))]  # the loop is the point
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


# ---------------------------------------------------------------------------------------------
# Charged particles: NRI's ChargedParticlesSim (3-D, no walls, no noise), line by line
# ---------------------------------------------------------------------------------------------

def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared pairwise distances ``|a|^2 + |b|^2 - 2 a.b`` of ``a (n, d)`` and ``b (m, d)`` -> ``(n, m)``."""
    a_norm = (a**2).sum(axis=1).reshape(a.shape[0], 1)
    b_norm = (b**2).sum(axis=1).reshape(1, b.shape[0])
    return a_norm + b_norm - 2 * a.dot(b.transpose())


def nri_forces(loc: np.ndarray, edges: np.ndarray, interaction_strength: float, max_f: float) -> np.ndarray:
    """Clipped Coulomb forces of NRI for ``loc (d, n)`` and ``edges = q q^T (n, n)`` -> ``(d, n)``."""
    l2_dist_power3 = np.power(_l2(loc.transpose(), loc.transpose()), 3.0 / 2.0)
    forces_size = interaction_strength * edges / l2_dist_power3
    np.fill_diagonal(forces_size, 0)  # self forces are zero (fixes division by zero)
    return _clipped_pair_forces(loc, forces_size, max_f)


def nri_simulate_one(
    x0: np.ndarray,
    v0: np.ndarray,
    charges: np.ndarray,
    steps: int = 5000,
    dt: float = 0.001,
    sample_freq: int = 100,
    interaction_strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ONE trajectory the way NRI does (Python loop over integration steps).

    Args:
        x0: ``(N, 3)`` initial positions.
        v0: ``(N, 3)`` initial velocities.
        charges: ``(N,)`` or ``(N, 1)`` charges.
        steps: number of integration steps (a multiple of ``sample_freq``).
        dt: time step; forces are clipped per component to ``+/- 0.1 / dt``.
        sample_freq: save every ``sample_freq`` steps.
        interaction_strength: Coulomb constant ``c``.

    Returns:
        ``(x, v)``, each ``(T, N, 3)`` float64 with ``T = steps // sample_freq - 1``; frame ``k`` is the
        state right after the position update of step ``(k + 1) * sample_freq``.
    """
    max_f = 0.1 / dt
    q = np.asarray(charges, dtype=np.float64).reshape(-1, 1)
    edges = q.dot(q.transpose())
    with np.errstate(divide="ignore", invalid="ignore"):
        return nri_integrate_one(
            x0, v0, lambda loc: nri_forces(loc, edges, interaction_strength, max_f), steps, dt, sample_freq
        )


def nri_simulate(
    x0: np.ndarray, v0: np.ndarray, charges: np.ndarray, **kwargs: float
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`nri_simulate_one` (same keyword arguments) on each trajectory of ``x0 (B, N, 3)``
    in turn: the slow baseline.

    Returns:
        ``(x, v)``, each ``(B, T, N, 3)`` float64.
    """
    outs = [
        nri_simulate_one(x0[b], v0[b], charges[b], **kwargs)
        for b in range(len(x0))  # the per-trajectory loop is the point of this baseline
    ]
    if not outs:
        t_save = kwargs.get("steps", 5000) // kwargs.get("sample_freq", 100) - 1
        empty = np.zeros((0, t_save) + tuple(np.shape(x0)[1:]))
        return empty, empty.copy()
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
