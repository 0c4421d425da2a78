"""Batched softened-gravity simulator (SEGNN's ``GravitySim``), in torch float64.

Physics and integrator are those of SEGNN's gravity benchmark (Brandstetter et al. 2022,
RobDHess/Steerable-E3-GNN, ``nbody/dataset/synthetic_sim.py``), itself P. Mocz's educational N-body
script; the public SET code's "classical N-body" experiment uses the same script:

* Acceleration of body ``i``: ``a_i = G sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + softening^2)^(3/2)``.
  No clipping, no walls.
* Kick-drift-kick leapfrog: ``v += a dt / 2``; ``x += v dt``; ``a = a(x)``; ``v += a dt / 2``.
* A frame every ``sample_freq`` steps *starting with the initial state*: ``steps // sample_freq``
  frames, frame ``k`` is the state at step ``k * sample_freq`` (50 frames for 5000 / 100; SEGNN
  integrates past the last frame for nothing, this stops there).
* Initial state: positions and velocities ``~ N(0, 1)`` (scales ``loc_std``, ``vel_std``), then the
  velocities shifted to the centre-of-mass frame (``v -= mean(m v) / mean(m)``; positions are not
  shifted). Masses ``~ U(mass_range)``: ``(1, 1)`` gives SEGNN's unit masses, ``(0.1, 1)`` the SET
  code's.

Presets: SEGNN's benchmark is N = 100, unit masses, G = 1, softening 0.1, dt = 0.001, 5000 steps,
a frame every 100 (input frame 30 -> target frame 40). The SET code's classical N-body set is
N = 5, masses ``~ U(0.1, 1)``, G = 1, softening 0.1, dt = 0.01, a frame every 20 steps.

All trajectories of a chunk are integrated together (vectorised over trajectories and pairs of
particles); the only Python loops are over integration steps and chunks of trajectories.
"""

from __future__ import annotations

import torch
from torch import Tensor

from set_lightning.data.simulator import (
    check_initial_state,
    check_time_steps,
    simulate_in_chunks,
)
from set_lightning.errors import UserError

__all__ = [
    "gravity_energy",
    "gravity_frames",
    "sample_gravity",
    "simulate_gravity",
]


def gravity_frames(steps: int, sample_freq: int) -> int:
    """Number of frames :func:`simulate_gravity` saves: ``steps // sample_freq`` (50 for 5000 / 100)."""
    check_time_steps(steps, sample_freq)
    return steps // sample_freq


def sample_gravity(
    batch_size: int,
    n_particles: int,
    generator: torch.Generator | None = None,
    mass_range: tuple[float, float] = (1.0, 1.0),
    loc_std: float = 1.0,
    vel_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw initial states as SEGNN's ``GravitySim`` (and the SET code's classical N-body) do.

    Args:
        batch_size: number of trajectories ``B``.
        n_particles: number of bodies ``N``.
        generator: torch random generator (seed it for reproducible data); global RNG if None.
        mass_range: masses ``~ U(low, high)``; equal bounds give constant masses (no draw).
        loc_std: standard deviation of the positions.
        vel_std: standard deviation of the velocities before the centre-of-mass shift.
        dtype: floating dtype of the results.

    Returns:
        ``x0 (B, N, 3)``, ``v0 (B, N, 3)`` (total momentum zero) and ``masses (B, N, 1)``.
    """
    low, high = (float(m) for m in mass_range)
    if not 0.0 < low <= high:
        raise UserError(f"mass_range must be (low, high) with 0 < low <= high, got {tuple(mass_range)}")
    shape = (batch_size, n_particles, 3)
    if low == high:
        masses = torch.full((batch_size, n_particles, 1), low, dtype=dtype)
    else:
        masses = low + (high - low) * torch.rand((batch_size, n_particles, 1), generator=generator, dtype=dtype)
    x0 = torch.randn(shape, generator=generator, dtype=dtype) * loc_std
    v0 = torch.randn(shape, generator=generator, dtype=dtype) * vel_std
    v0 = v0 - (masses * v0).mean(dim=1, keepdim=True) / masses.mean(dim=1, keepdim=True)
    return x0, v0, masses


@torch.no_grad()
def _integrate_chunk(
    x: Tensor, v: Tensor, m: Tensor, n_frames: int, sample_freq: int, dt: float, g: float, softening: float
) -> tuple[Tensor, Tensor]:
    """Integrate one chunk in place, coordinate-major layout.

    Args:
        x, v: ``(b, 3, N)`` float64 positions / velocities (updated in place).
        m: ``(b, 1, N, 1)`` masses (the partner ``j`` axis is the matrix-product axis).

    Returns:
        ``(xs, vs)``, each ``(b, T, 3, N)``.
    """
    b, _, n = x.shape
    xs = torch.empty((b, n_frames, 3, n), dtype=x.dtype, device=x.device)
    vs = torch.empty_like(xs)
    diff = torch.empty((b, 3, n, n), dtype=x.dtype, device=x.device)  # x_j - x_i at [.., i, j]
    d2 = torch.empty((b, n, n), dtype=x.dtype, device=x.device)
    root = torch.empty_like(d2)
    acc = torch.empty((b, 3, n, 1), dtype=x.dtype, device=x.device)
    acc_flat = acc[..., 0]
    half_kick = torch.empty_like(x)
    drift = torch.empty_like(x)
    d2_diag = d2.diagonal(dim1=1, dim2=2)
    soft2 = softening * softening

    def accelerate() -> None:
        """``acc = G sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + softening^2)^(3/2)``."""
        torch.sub(x[:, :, None, :], x[:, :, :, None], out=diff)
        torch.mul(diff[:, 0], diff[:, 0], out=d2)
        d2.addcmul_(diff[:, 1], diff[:, 1]).addcmul_(diff[:, 2], diff[:, 2]).add_(soft2)
        d2_diag.fill_(1.0)  # any finite value: x_i - x_i = 0, so self forces are 0 even without softening
        torch.sqrt(d2, out=root)
        d2.mul_(root).reciprocal_()  # 1 / (r^2 + s^2)^(3/2)
        diff.mul_(d2[:, None])
        torch.matmul(diff, m, out=acc)  # sum over partners j, weighted by their masses
        if g != 1.0:
            acc.mul_(g)

    accelerate()
    for frame in range(n_frames):
        xs[:, frame] = x
        vs[:, frame] = v
        if frame == n_frames - 1:
            break
        for _ in range(sample_freq):
            v.add_(torch.mul(acc_flat, dt / 2.0, out=half_kick))
            x.add_(torch.mul(v, dt, out=drift))
            accelerate()
            v.add_(torch.mul(acc_flat, dt / 2.0, out=half_kick))
    return xs, vs


def simulate_gravity(
    x0: Tensor,
    v0: Tensor,
    masses: Tensor,
    steps: int = 5000,
    dt: float = 0.001,
    sample_freq: int = 100,
    interaction_strength: float = 1.0,
    softening: float = 0.1,
    chunk_size: int | None = None,
    num_threads: int | None = 1,
) -> tuple[Tensor, Tensor]:
    """Simulate a batch of softened-gravity systems (float64, all trajectories of a chunk at once).

    Args:
        x0: ``(B, N, 3)`` initial positions.
        v0: ``(B, N, 3)`` initial velocities.
        masses: ``(B, N, 1)`` (or ``(B, N)``) masses.
        steps: number of integration steps, a multiple of ``sample_freq``.
        dt: integration time step.
        sample_freq: save the state every ``sample_freq`` steps, from step 0.
        interaction_strength: gravitational constant ``G``.
        softening: softening length (>= 0).
        chunk_size: trajectories integrated together; default: equal chunks of about ``2**18 / (3 N^2)``.
        num_threads: torch intra-op threads while integrating (restored afterwards); None keeps
            torch's setting.

    Returns:
        ``(x, v)``: float64 tensors ``(B, T, N, 3)``, ``T = steps // sample_freq``; frame ``k`` is
        the state at step ``k * sample_freq`` (frame 0 is ``x0, v0``).
    """
    check_time_steps(steps, sample_freq, dt)
    if not softening >= 0:
        raise UserError(f"softening must be >= 0, got {softening}")
    m = check_initial_state(x0, v0, masses, "masses").to(torch.float64)

    def integrate(sl: slice) -> tuple[Tensor, Tensor]:
        # (b, N, 3) -> (b, 3, N): each coordinate's pair matrix is one contiguous (N, N) block
        xc = x0[sl].to(torch.float64).transpose(1, 2).contiguous()
        vc = v0[sl].to(torch.float64).transpose(1, 2).contiguous()
        xs, vs = _integrate_chunk(xc, vc, m[sl][:, None, :, None].contiguous(), gravity_frames(steps, sample_freq),
                                  sample_freq, float(dt), float(interaction_strength), float(softening))
        return xs.transpose(2, 3), vs.transpose(2, 3)  # (b, T, 3, N) -> (b, T, N, 3)

    return simulate_in_chunks(x0, gravity_frames(steps, sample_freq), chunk_size, num_threads, integrate)


def gravity_energy(
    x: Tensor, v: Tensor, masses: Tensor, interaction_strength: float = 1.0, softening: float = 0.1
) -> Tensor:
    """Kinetic plus softened potential energy, the quantity the softened dynamics conserves.

    ``sum_i m_i |v_i|^2 / 2 - G sum_{i<j} m_i m_j / sqrt(|x_i - x_j|^2 + softening^2)``.

    Args:
        x: ``(..., N, 3)`` positions.
        v: ``(..., N, 3)`` velocities.
        masses: ``(..., N, 1)`` masses (broadcast against the leading dims of ``x``).

    Returns:
        ``(...)`` energies.
    """
    kinetic = 0.5 * (masses * v * v).sum(dim=(-1, -2))
    d2 = (x[..., :, None, :] - x[..., None, :, :]).square().sum(-1)  # (..., N, N)
    mm = masses * masses.transpose(-1, -2)
    n = x.shape[-2]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
    pair = torch.where(upper, mm / torch.sqrt(d2 + softening * softening), 0.0)
    return kinetic - interaction_strength * pair.sum(dim=(-1, -2))
