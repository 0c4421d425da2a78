"""Straightforward per-trajectory NumPy re-implementation of NRI's ``ChargedParticlesSim``.

The oracle the batched torch simulator (:mod:`set_lightning.data.simulator`) is tested against
(``tests/data/test_simulator.py``) and timed against (``benchmarks/simulate.py``); not part of the
installed package. It follows NRI's ``sample_trajectory`` line by line (3-D positions as EGNN uses
them, no box / walls, no noise), one trajectory at a time. It is deliberately *not* optimised: do
not use it to generate data sets.
"""

from __future__ import annotations

import numpy as np


def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared pairwise distances ``|a|^2 + |b|^2 - 2 a.b`` of ``a (n, d)`` and ``b (m, d)`` -> ``(n, m)``."""
    a_norm = (a**2).sum(axis=1).reshape(a.shape[0], 1)
    b_norm = (b**2).sum(axis=1).reshape(1, b.shape[0])
    return a_norm + b_norm - 2 * a.dot(b.transpose())


def nri_forces(loc: np.ndarray, edges: np.ndarray, interaction_strength: float, max_f: float) -> np.ndarray:
    """Clipped Coulomb forces of NRI for ``loc (d, n)`` and ``edges = q q^T (n, n)`` -> ``(d, n)``."""
    n = loc.shape[1]
    l2_dist_power3 = np.power(_l2(loc.transpose(), loc.transpose()), 3.0 / 2.0)
    forces_size = interaction_strength * edges / l2_dist_power3
    np.fill_diagonal(forces_size, 0)  # self forces are zero (fixes division by zero)
    diffs = np.concatenate([np.subtract.outer(loc[d, :], loc[d, :]).reshape(1, n, n) for d in range(loc.shape[0])])
    f = (forces_size.reshape(1, n, n) * diffs).sum(axis=-1)
    f[f > max_f] = max_f
    f[f < -max_f] = -max_f
    return f


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
    if steps % sample_freq != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of sample_freq ({sample_freq})")
    max_f = 0.1 / dt
    t_save = steps // sample_freq - 1
    q = np.asarray(charges, dtype=np.float64).reshape(-1, 1)
    edges = q.dot(q.transpose())
    loc_next = np.array(x0, dtype=np.float64).transpose().copy()  # (d, n), NRI's layout
    vel_next = np.array(v0, dtype=np.float64).transpose().copy()
    loc = np.zeros((t_save,) + loc_next.shape)
    vel = np.zeros((t_save,) + vel_next.shape)
    counter = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        vel_next += dt * nri_forces(loc_next, edges, interaction_strength, max_f)
        for i in range(1, steps):
            loc_next += dt * vel_next
            if i % sample_freq == 0:
                loc[counter], vel[counter] = loc_next, vel_next
                counter += 1
            vel_next += dt * nri_forces(loc_next, edges, interaction_strength, max_f)
    return loc.transpose(0, 2, 1).copy(), vel.transpose(0, 2, 1).copy()


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
