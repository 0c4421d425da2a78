"""Helpers for the model tests: random inputs, orthogonal matrices, tiny model configs."""

from __future__ import annotations

import itertools

import torch

from set_lightning.models import EGNN, LSTM, MLP, SET, Linear

FLAGS = ("equivariant", "spatial_attention", "temporal_attention", "adjacency")
ALL_FLAG_COMBOS = [dict(zip(FLAGS, c)) for c in itertools.product([True, False], repeat=4)]
TINY_SET = dict(hidden=8, n_blocks=2, n_spatial_layers=1, n_heads=2, dropout=0.1)


def combo_id(flags: dict) -> str:
    return "-".join(f"{'' if v else 'no_'}{k[:4]}" for k, v in flags.items())


def random_inputs(b=2, ell=3, n=4, dtype=torch.float64, scale=1.0, seed=0):
    """x, v ``(B, L, N, 3)`` and charges ``(B, N, 1)`` in {-1, +1}."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(b, ell, n, 3, generator=g, dtype=dtype)
    v = 0.5 * torch.randn(b, ell, n, 3, generator=g, dtype=dtype)
    q = torch.randint(0, 2, (b, n, 1), generator=g).to(dtype) * 2 - 1
    return x, v, q


def random_orthogonal(det: float = 1.0, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A random 3x3 orthogonal matrix (QR of a gaussian) with determinant ``det`` (+1 or -1)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.sign(torch.linalg.det(q)) != det:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def tiny_models() -> dict:
    """One small instance of every model (constructors, to be called after seeding)."""
    return {
        "set": lambda: SET(**TINY_SET),
        "set_adj": lambda: SET(**TINY_SET, adjacency=True),
        "egnn": lambda: EGNN(hidden=8, n_layers=2),
        "egnn_opts": lambda: EGNN(hidden=8, n_layers=2, norm_diff=True, tanh=True, attention=True, n_heads=2),
        "mlp": lambda: MLP(hidden=8, n_frames=2),
        "linear": lambda: Linear(),
        "lstm": lambda: LSTM(hidden=8),
    }
