"""Physics, reference equivalence and batching of the springs simulator (NRI's SpringSim in 3-D)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.reference_sims import simulate_each, springs_simulate_one
from set_lightning.data.springs import sample_springs, simulate_springs, springs_energy


def _ics(batch: int, n: int, seed: int, **kwargs):
    return sample_springs(batch, n, torch.Generator().manual_seed(seed), **kwargs)


def test_frames_shapes_and_convention():
    x0, v0, a = _ics(3, 5, 0)
    x, v = simulate_springs(x0, v0, a)
    assert x.shape == v.shape == (3, 49, 5, 3) and x.dtype == v.dtype == torch.float64
    x1, v1 = simulate_springs(x0, v0, a, steps=1000, sample_freq=1)
    x100, v100 = simulate_springs(x0, v0, a, steps=1000, sample_freq=100)
    steps = torch.arange(1, 10) * 100  # frame k of sample_freq 100 is the state at step (k + 1) * 100
    assert torch.equal(x100, x1[:, steps - 1]) and torch.equal(v100, v1[:, steps - 1])


def test_sampler_graph_and_initial_state():
    x0, v0, a = _ics(4000, 6, 1)
    assert a.shape == (4000, 6, 6)
    assert torch.equal(a, a.transpose(1, 2))
    assert (a.diagonal(dim1=1, dim2=2) == 0).all()
    assert set(a.unique().tolist()) == {0.0, 1.0}
    off = a[:, ~torch.eye(6, dtype=torch.bool)]
    assert abs(off.mean().item() - 0.5) < 0.01
    assert abs(x0.std().item() - 0.5) < 0.01
    assert torch.allclose(torch.linalg.vector_norm(v0, dim=-1), torch.full((4000, 6), 0.5, dtype=torch.float64))
    assert _ics(5, 4, 0, spring_prob=0.0)[2].sum() == 0
    assert _ics(5, 4, 0, spring_prob=1.0)[2].sum() == 5 * 4 * 3
    again = _ics(4000, 6, 1)
    assert all(torch.equal(s, t) for s, t in zip((x0, v0, a), again))
    assert not torch.equal(a, _ics(4000, 6, 2)[2])


def test_matches_reference_full_horizon():
    """5000 steps, 49 frames: the batched simulator equals the per-trajectory NumPy loop to rounding."""
    x0, v0, a = _ics(4, 5, 3)
    x, v = simulate_springs(x0, v0, a)
    xr, vr = simulate_each(springs_simulate_one, x0.numpy(), v0.numpy(), a.numpy())
    assert xr.shape == (4, 49, 5, 3)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), vr, rtol=0, atol=1e-12)


def test_matches_reference_with_clipping():
    """A stiff spring (k = 1e4) between distant particles: the force clip 0.1 / dt is active."""
    x0, v0, a = _ics(3, 4, 4)
    x0 = x0 * 10.0
    f = -1e4 * (a[..., None] * (x0[:, :, None] - x0[:, None])).sum(2)
    assert f.abs().max() > 1000.0  # well beyond the clip of 100
    kw = {"steps": 40, "sample_freq": 2, "interaction_strength": 1e4}
    x, v = simulate_springs(x0, v0, a, **kw)
    xr, vr = simulate_each(springs_simulate_one, x0.numpy(), v0.numpy(), a.numpy(), **kw)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v.numpy(), vr, rtol=0, atol=1e-10)
    v_first = simulate_springs(x0, v0, a, steps=2, sample_freq=1, interaction_strength=1e4)[1][:, 0]
    assert (v_first - v0).abs().max() == pytest.approx(0.1)  # the first kick: clipped force 100 times dt


def test_batched_equals_one_by_one():
    x0, v0, a = _ics(6, 5, 5)
    kw = {"steps": 600, "sample_freq": 100}
    xb, vb = simulate_springs(x0, v0, a, **kw)
    singles = [simulate_springs(x0[i : i + 1], v0[i : i + 1], a[i : i + 1], **kw) for i in range(6)]
    assert torch.equal(xb, torch.cat([s[0] for s in singles])) and torch.equal(vb, torch.cat([s[1] for s in singles]))
    xc, vc = simulate_springs(x0, v0, a, chunk_size=4, **kw)
    assert torch.equal(xb, xc) and torch.equal(vb, vc)


def test_energy_and_momentum_conserved_without_clipping():
    """Default physics (no clipping at these forces): energy to the integrator's O(dt), momentum exactly."""
    x0, v0, a = _ics(8, 5, 6)
    errors = []
    for dt, steps in ((2e-3, 2500), (1e-3, 5000)):  # same physical time 5
        x, v = simulate_springs(x0, v0, a, steps=steps, dt=dt, sample_freq=steps // 50)
        force = 0.1 * (a[:, None, :, :, None] * (x[:, :, :, None] - x[:, :, None])).sum(3)
        assert force.abs().max() < 0.1 / dt  # never clipped
        e = springs_energy(x, v, a[:, None])  # (B, T)
        errors.append(((e - e[:, :1]).abs() / e[:, :1]).max())
        p = v.sum(dim=2)  # (B, T, 3): pairwise forces cancel
        assert (p - v0.sum(dim=1)[:, None]).abs().max() < 1e-13
    assert errors[1] < 1e-3
    assert errors[1] < errors[0] / 1.5  # first-order integrator: the error halves with dt


def test_two_particle_spring_oscillates_at_sqrt_2k():
    """One spring, particles at rest 1 apart: the separation is cos(sqrt(2 k) t) to O(dt)."""
    x0 = torch.tensor([[[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]], dtype=torch.float64)
    v0 = torch.zeros_like(x0)
    a = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    x, _ = simulate_springs(x0, v0, a, steps=10000, sample_freq=100, interaction_strength=0.4)
    t = torch.arange(1, 100, dtype=torch.float64) * 100 * 1e-3
    separation = x[0, :, 1, 0] - x[0, :, 0, 0]
    assert torch.allclose(separation, torch.cos(math.sqrt(0.8) * t), atol=2e-3)
    assert torch.allclose(x[0, :, :, 1:], torch.zeros(99, 2, 2, dtype=torch.float64))  # stays on the axis


def test_without_springs_particles_fly_straight():
    x0, v0, _ = _ics(3, 4, 7)
    x, v = simulate_springs(x0, v0, torch.zeros(3, 4, 4, dtype=torch.float64), steps=1000)
    t = torch.arange(1, 10, dtype=torch.float64)[None, :, None, None] * 0.1
    assert torch.allclose(x, x0[:, None] + t * v0[:, None], atol=1e-12)
    assert torch.equal(v, v0[:, None].expand_as(v))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"steps": 1050}, "sample_freq"), ({"dt": 0.0}, "dt"), ({"chunk_size": 0}, "chunk_size"),
     ({"num_threads": 0}, "num_threads")],
)
def test_bad_arguments(kwargs, match):
    x0, v0, a = _ics(1, 3, 0)
    with pytest.raises(ValueError, match=match):
        simulate_springs(x0, v0, a, **kwargs)


def test_bad_shapes():
    x0, v0, a = _ics(2, 3, 0)
    with pytest.raises(ValueError, match="adjacency"):
        simulate_springs(x0, v0, a[:, :2], steps=200)
    with pytest.raises(ValueError, match="v0"):
        simulate_springs(x0, v0[:1], a, steps=200)
    with pytest.raises(ValueError, match="spring_prob"):
        _ics(2, 3, 0, spring_prob=1.5)
