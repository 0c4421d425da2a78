"""Batched springs simulator (NRI's ``SpringSim`` in 3-D, as SEGNN ships it), in torch float64.

Physics, clipping and integrator are those of NRI's ``SpringSim`` (3-D, no walls after t = 0, no noise):

* Every pair of particles is joined by a spring with probability ``spring_prob`` (1/2): the
  adjacency ``A`` is symmetric with a zero diagonal. Hooke's force on particle ``i`` (unit mass) is
  ``F_i = -k sum_j A_ij (x_i - x_j)`` with ``k = interaction_strength`` (0.1); every force component
  is clipped to ``+/- max_force`` (``0.1 / dt``).
* The integrator of the charged system (:func:`set_lightning.data.simulator.nri_steps`):
  ``v += dt F(x0)``; then for ``i = 1 .. steps-1``: ``x += dt v``; if ``i % sample_freq == 0`` save
  ``(x, v)``; ``v += dt F(x)``. So ``steps=5000, sample_freq=100`` gives 49 saved frames and frame
  ``k`` is the state at step ``(k + 1) * sample_freq``.
* Initial state: positions ``~ N(0, loc_std^2)`` (0.5), velocities of norm ``vel_norm`` (0.5) in
  random directions. (NRI reflects initial positions beyond its +/-5 box once at t = 0; at
  ``loc_std`` 0.5 that is a 10-sigma event and is not reproduced.)

All trajectories of a chunk are integrated together (vectorised over trajectories and particles);
the only Python loops are over integration steps and chunks of trajectories.
"""

from __future__ import annotations

import torch
from torch import Tensor

from set_lightning.data.simulator import (
    check_initial_state,
    check_time_steps,
    gaussian_positions_fixed_speed,
    n_saved_frames,
    nri_steps,
    simulate_in_chunks,
)
from set_lightning.errors import UserError

__all__ = ["sample_springs", "simulate_springs", "springs_energy"]


def sample_springs(
    batch_size: int,
    n_particles: int,
    generator: torch.Generator | None = None,
    loc_std: float = 0.5,
    vel_norm: float = 0.5,
    spring_prob: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw initial states and spring graphs with the distributions of NRI's ``SpringSim``.

    Args:
        batch_size: number of trajectories ``B``.
        n_particles: number of particles ``N``.
        generator: torch random generator (seed it for reproducible data); global RNG if None.
        loc_std: standard deviation of the initial positions.
        vel_norm: norm of every initial velocity (random direction).
        spring_prob: probability of a spring between two particles.
        dtype: floating dtype of the results.

    Returns:
        ``x0 (B, N, 3)``, ``v0 (B, N, 3)`` and the adjacency ``(B, N, N)``: 1 where a spring joins
        two particles, else 0; symmetric, zero diagonal.
    """
    if not 0.0 <= spring_prob <= 1.0:
        raise UserError(f"spring_prob must be in [0, 1], got {spring_prob}")
    x0, v0 = gaussian_positions_fixed_speed(batch_size, n_particles, generator, loc_std, vel_norm, dtype)
    draws = torch.rand((batch_size, n_particles, n_particles), generator=generator, dtype=torch.float64)
    lower = torch.tril(draws < spring_prob, diagonal=-1)  # one draw per unordered pair, as NRI
    adjacency = (lower | lower.transpose(1, 2)).to(dtype)
    return x0, v0, adjacency


@torch.no_grad()
def _integrate_chunk(
    x: Tensor, v: Tensor, coupling: Tensor, steps: int, dt: float, sample_freq: int, max_force: float
) -> tuple[Tensor, Tensor]:
    """Integrate one chunk in place.

    Args:
        x, v: ``(b, N, 3)`` float64 positions / velocities (updated in place).
        coupling: ``(b, N, N, 1)`` force sizes ``-k A_ij`` (zero diagonal).

    Returns:
        ``(xs, vs)``, each ``(b, T, N, 3)``.
    """
    b, n, _ = x.shape
    n_frames = steps // sample_freq - 1
    xs = torch.empty((b, n_frames, n, 3), dtype=x.dtype, device=x.device)
    vs = torch.empty_like(xs)
    pair = torch.empty((b, n, n, 3), dtype=x.dtype, device=x.device)  # (x_i - x_j) * size, i, j
    force = torch.empty_like(x)
    x_i, x_j = x[:, :, None, :], x[:, None, :, :]

    def kick() -> None:
        """``v += dt * clip(F(x))``, ``F_i = sum_j -k A_ij (x_i - x_j)`` as NRI sums it."""
        torch.sub(x_i, x_j, out=pair)
        pair.mul_(coupling)
        torch.sum(pair, dim=2, out=force)
        force.clamp_(-max_force, max_force)
        v.add_(force.mul_(dt))

    nri_steps(x, v, kick, steps, dt, sample_freq, xs.movedim(1, 0), vs.movedim(1, 0))
    return xs, vs


def simulate_springs(
    x0: Tensor,
    v0: Tensor,
    adjacency: Tensor,
    steps: int = 5000,
    dt: float = 0.001,
    sample_freq: int = 100,
    interaction_strength: float = 0.1,
    max_force: float | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = 1,
) -> tuple[Tensor, Tensor]:
    """Simulate a batch of spring systems (float64, all trajectories of a chunk at once).

    Args:
        x0: ``(B, N, 3)`` initial positions.
        v0: ``(B, N, 3)`` initial velocities.
        adjacency: ``(B, N, N)`` spring graph (symmetric, zero diagonal; its values scale ``k``).
        steps: number of integration steps, a multiple of ``sample_freq``.
        dt: integration time step.
        sample_freq: save the state every ``sample_freq`` steps.
        interaction_strength: spring constant ``k``.
        max_force: per-component force clip; default ``0.1 / dt`` (NRI).
        chunk_size: trajectories integrated together; default: equal chunks of about ``2**18 / (3 N^2)``.
        num_threads: torch intra-op threads while integrating (restored afterwards); None keeps
            torch's setting.

    Returns:
        ``(x, v)``: float64 tensors ``(B, T, N, 3)``, ``T = steps // sample_freq - 1``; frame ``k``
        is the state at step ``(k + 1) * sample_freq`` (as :func:`simulate_charged`).
    """
    check_time_steps(steps, sample_freq, dt)
    adjacency = check_initial_state(x0, v0, adjacency, "adjacency", per_pair=True)
    max_force = 0.1 / dt if max_force is None else max_force
    n = x0.shape[1]
    off_diagonal = 1 - torch.eye(n, dtype=torch.float64, device=x0.device)

    def integrate(sl: slice) -> tuple[Tensor, Tensor]:
        coupling = (-float(interaction_strength)) * adjacency[sl].to(torch.float64) * off_diagonal
        return _integrate_chunk(x0[sl].to(torch.float64).clone(), v0[sl].to(torch.float64).clone(),
                                coupling[..., None], steps, float(dt), sample_freq, float(max_force))

    return simulate_in_chunks(x0, n_saved_frames(steps, sample_freq), chunk_size, num_threads, integrate)


def springs_energy(x: Tensor, v: Tensor, adjacency: Tensor, interaction_strength: float = 0.1) -> Tensor:
    """Kinetic plus spring energy ``sum_i |v_i|^2 / 2 + sum_{i<j} k A_ij |x_i - x_j|^2 / 2`` (unit masses).

    Args:
        x: ``(..., N, 3)`` positions.
        v: ``(..., N, 3)`` velocities.
        adjacency: ``(..., N, N)`` spring graph (broadcast against the leading dims of ``x``).

    Returns:
        ``(...)`` energies.
    """
    kinetic = 0.5 * (v * v).sum(dim=(-1, -2))
    d2 = (x[..., :, None, :] - x[..., None, :, :]).square().sum(-1)  # (..., N, N)
    potential = 0.25 * interaction_strength * (adjacency * d2).sum(dim=(-1, -2))  # each pair counted twice
    return kinetic + potential
