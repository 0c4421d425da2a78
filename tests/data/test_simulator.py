"""Physics, reference equivalence and batching of the charged N-body simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from set_lightning.data import (
    default_loc_std,
    n_saved_frames,
    sample_initial_conditions,
    simulate_charged,
    total_energy,
)
from benchmarks.reference_sims import nri_forces, nri_simulate


def _ics(batch: int, n: int, seed: int, loc_std: float | None = None):
    return sample_initial_conditions(batch, n, torch.Generator().manual_seed(seed), loc_std=loc_std)


def _min_pair_distance(x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-trajectory minimum pairwise distance over x0 ``(B, N, 3)`` and all frames ``(B, T, N, 3)``."""
    pos = torch.cat([x0[:, None], x], dim=1)
    r = torch.linalg.vector_norm(pos[..., :, None, :] - pos[..., None, :, :], dim=-1)
    n = pos.shape[-2]
    r = r + torch.eye(n, dtype=r.dtype) * 1e9
    return r.amin(dim=(1, 2, 3))


def test_frames_shapes_and_dtype():
    x0, v0, q = _ics(3, 5, 0)
    x, v = simulate_charged(x0, v0, q, steps=5000, sample_freq=100)
    assert n_saved_frames(5000, 100) == 49
    assert x.shape == v.shape == (3, 49, 5, 3)
    assert x.dtype == v.dtype == torch.float64
    assert torch.isfinite(x).all() and torch.isfinite(v).all()


def test_frame_k_is_state_at_step_k_plus_one_times_freq():
    x0, v0, q = _ics(4, 5, 1)
    x100, v100 = simulate_charged(x0, v0, q, steps=1000, sample_freq=100)
    x1, v1 = simulate_charged(x0, v0, q, steps=1000, sample_freq=1)
    # with sample_freq=1, frame j is the state at step j + 1
    steps = torch.arange(1, 10) * 100  # (k + 1) * 100 for k = 0..8
    assert torch.equal(x100, x1[:, steps - 1])
    assert torch.equal(v100, v1[:, steps - 1])


def test_does_not_modify_inputs():
    x0, v0, q = _ics(2, 5, 2)
    copies = [t.clone() for t in (x0, v0, q)]
    simulate_charged(x0, v0, q, steps=200, sample_freq=100)
    assert all(torch.equal(a, b) for a, b in zip(copies, (x0, v0, q)))


def test_matches_nri_reference_full_horizon():
    """Full 5000-step trajectories agree with NRI's per-trajectory NumPy loop to 1e-10.

    Compared on trajectories without close encounters: there the dynamics is chaotic and
    1-ulp differences (NumPy's BLAS dot uses FMA, pow vs sqrt, summation order) grow
    exponentially, for NRI's own code run on two machines just the same.
    """
    x0, v0, q = _ics(12, 5, 0, loc_std=3.0)
    x_all, _ = simulate_charged(x0, v0, q, sample_freq=10)
    keep = (_min_pair_distance(x0, x_all) > 0.5).nonzero().flatten()[:5]
    assert len(keep) >= 3
    x0, v0, q = x0[keep], v0[keep], q[keep]
    x, v = simulate_charged(x0, v0, q)
    xr, vr = nri_simulate(x0.numpy(), v0.numpy(), q.numpy())
    assert x.shape == xr.shape == (len(keep), 49, 5, 3)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v.numpy(), vr, rtol=0, atol=1e-10)


def test_matches_nri_reference_default_distribution_and_clipping():
    """Default initial conditions (plus one very close pair, so forces are clipped), short horizon."""
    x0, v0, q = _ics(8, 5, 3)
    x0[:, 1] = x0[:, 0] + torch.tensor([0.01, 0.0, 0.0], dtype=x0.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        f0 = nri_forces(x0[0].numpy().T, q[0].numpy() @ q[0].numpy().T, 1.0, 100.0)
    assert np.abs(f0).max() == 100.0  # the clip is active
    x, v = simulate_charged(x0, v0, q, steps=20, sample_freq=1)
    xr, vr = nri_simulate(x0.numpy(), v0.numpy(), q.numpy(), steps=20, sample_freq=1)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), vr, rtol=0, atol=1e-10)


def test_matches_nri_reference_n20():
    x0, v0, q = _ics(2, 20, 4, loc_std=3.0 * default_loc_std(20))
    x, v = simulate_charged(x0, v0, q, steps=1000, sample_freq=100)
    xr, vr = nri_simulate(x0.numpy(), v0.numpy(), q.numpy(), steps=1000, sample_freq=100)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v.numpy(), vr, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n", [5, 20])
def test_batched_equals_one_by_one(n):
    """Bitwise: the result of a trajectory does not depend on the batch or chunk it is in."""
    x0, v0, q = _ics(6, n, 5)
    kw = {"steps": 600, "sample_freq": 100}
    xb, vb = simulate_charged(x0, v0, q, **kw)
    singles = [simulate_charged(x0[i : i + 1], v0[i : i + 1], q[i : i + 1], **kw) for i in range(6)]
    assert torch.equal(xb, torch.cat([s[0] for s in singles]))
    assert torch.equal(vb, torch.cat([s[1] for s in singles]))
    for chunk in (2, 4):
        xc, vc = simulate_charged(x0, v0, q, chunk_size=chunk, **kw)
        assert torch.equal(xb, xc) and torch.equal(vb, vc)


def test_energy_conserved_without_close_encounters():
    """Kinetic + Coulomb energy stays constant (to the integrator's O(dt) error) when unclipped."""
    x0, v0, q = _ics(24, 5, 6, loc_std=3.0)
    x, v = simulate_charged(x0, v0, q, steps=10000, dt=2e-4, sample_freq=10)  # physical time 2
    keep = _min_pair_distance(x0, x) > 0.5  # well separated: no clipping, smooth dynamics
    assert keep.sum() >= 8
    e = total_energy(x[keep], v[keep], q[keep][:, None])  # (B, T)
    scale = e.abs().amax(dim=1, keepdim=True).clamp_min(0.5)
    drift = ((e - e[:, :1]).abs() / scale).amax()
    assert drift < 1e-3, drift


def test_energy_error_shrinks_with_dt():
    x0, v0, q = _ics(24, 5, 6, loc_std=3.0)
    errors = []
    for dt, steps in ((2e-3, 1000), (5e-4, 4000)):  # same physical time 2.0
        x, v = simulate_charged(x0, v0, q, steps=steps, dt=dt, sample_freq=steps // 10)
        keep = _min_pair_distance(x0, x) > 0.5
        e = total_energy(x[keep], v[keep], q[keep][:, None])
        errors.append((e - total_energy(x0[keep], v0[keep], q[keep])[:, None]).abs().max())
    assert errors[1] < errors[0] / 2


def test_momentum_conserved_without_clipping():
    x0, v0, q = _ics(16, 5, 7, loc_std=2.0)
    x, v = simulate_charged(x0, v0, q, steps=2000, sample_freq=1)
    # |F_ij| <= 1 / r^2, so r > 0.25 keeps every component under the 100 clip even summed over 4 partners
    keep = _min_pair_distance(x0, x) > 0.25
    assert keep.sum() >= 4
    p = v[keep].sum(dim=2)  # (B, T, 3)
    p0 = v0[keep].sum(dim=1)  # pairwise forces cancel in the sum, kicks included
    assert (p - p0[:, None]).abs().max() < 1e-10


def test_first_kick_is_clipped():
    """Two opposite charges 0.01 apart: |F| = 1e4 is clipped to 0.1 / dt = 100 per component."""
    x0 = torch.tensor([[[0.0, 0.0, 0.0], [0.01, 0.0, 0.0]]], dtype=torch.float64)
    v0 = torch.zeros_like(x0)
    q = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    x, v = simulate_charged(x0, v0, q, steps=2, sample_freq=1)
    # the first kick is the clipped force 100 * dt = 0.1, pulling the particles together
    assert torch.allclose(v[0, 0, :, 0], torch.tensor([0.1, -0.1], dtype=torch.float64), atol=0, rtol=0)


def test_sampler_distributions():
    g = torch.Generator().manual_seed(0)
    x0, v0, q = sample_initial_conditions(4000, 20, g)
    assert x0.shape == v0.shape == (4000, 20, 3) and q.shape == (4000, 20, 1)
    assert x0.dtype == v0.dtype == q.dtype == torch.float64
    assert torch.allclose(torch.linalg.vector_norm(v0, dim=-1), torch.full((4000, 20), 0.5, dtype=torch.float64))
    assert set(q.unique().tolist()) == {-1.0, 1.0}
    assert abs((q > 0).double().mean().item() - 0.5) < 0.01
    assert abs(x0.std().item() - default_loc_std(20)) < 0.01
    assert abs(default_loc_std(5) - 1.0) < 1e-15
    # velocity directions are isotropic: mean direction ~ 0
    assert v0.mean(dim=(0, 1)).abs().max() < 0.01


def test_sampler_seeding():
    a = sample_initial_conditions(3, 5, torch.Generator().manual_seed(1))
    b = sample_initial_conditions(3, 5, torch.Generator().manual_seed(1))
    c = sample_initial_conditions(3, 5, torch.Generator().manual_seed(2))
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_total_energy_two_particles():
    x = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    assert total_energy(x, v, q).item() == pytest.approx(0.5 - 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 1050}, "sample_freq"),
        ({"sample_freq": 0}, "sample_freq"),
        ({"dt": 0.0}, "dt"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    x0, v0, q = _ics(1, 3, 0)
    with pytest.raises(ValueError, match=match):
        simulate_charged(x0, v0, q, **kwargs)


def test_bad_shapes():
    x0, v0, q = _ics(2, 3, 0)
    with pytest.raises(ValueError, match="x0"):
        simulate_charged(x0[0], v0, q, steps=200)
    with pytest.raises(ValueError, match="v0"):
        simulate_charged(x0, v0[:1], q, steps=200)
    with pytest.raises(ValueError, match="charges"):
        simulate_charged(x0, v0, q[:, :2], steps=200)


def test_thread_setting_is_restored():
    x0, v0, q = _ics(3, 4, 0)
    before = torch.get_num_threads()
    a = simulate_charged(x0, v0, q, steps=300, num_threads=1)
    b = simulate_charged(x0, v0, q, steps=300, num_threads=2)
    c = simulate_charged(x0, v0, q, steps=300, num_threads=None)
    assert torch.get_num_threads() == before
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="num_threads"):
        simulate_charged(x0, v0, q, steps=300, num_threads=0)


def test_empty_batch():
    x0, v0, q = _ics(0, 5, 0)
    x, v = simulate_charged(x0, v0, q, steps=300)
    assert x.shape == v.shape == (0, 2, 5, 3)
