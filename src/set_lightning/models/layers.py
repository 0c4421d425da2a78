"""Small building blocks shared by the models: MLPs, vector heads, positional codes, dense graphs."""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-8


def mlp(
    d_in: int, d_hidden: int, d_out: int, n_layers: int = 2, act: type[nn.Module] = nn.SiLU,
    last_act: bool = False, bias: bool = True,
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` with ``n_layers`` linear maps (``last_act`` adds a final act)."""
    dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == n_layers - 1
        layers.append(nn.Linear(a, b, bias=bias or not last))
        if not last or last_act:
            layers.append(act())
    return nn.Sequential(*layers)


class VectorOut(nn.Module):
    r"""Maps invariant features ``f`` and ``k`` vectors ``V`` to one output vector.

    * ``equivariant=True``: :math:`\sum_k g_k(f)\, V_k` with scalar gates ``g = MLP(f)`` (``O(n)``-equivariant).
    * ``equivariant=False``: ``MLP([f, V_1, ..., V_k])`` predicts a raw 3-vector (breaks rotations).

    With ``tanh`` the gates (or the raw vector) are bounded: ``scale * tanh(.)``.

    Args:
        d_in: size of ``f``.
        n_vectors: number ``k`` of input vectors.
        d_hidden: hidden width of the MLP.
        equivariant: gate the vectors (True) or predict a raw vector (False).
        tanh: bound the output with ``scale * tanh``.
        scale: bound used with ``tanh``.
        last_gain: if given, xavier-init the last layer with this gain (EGNN uses 0.001 for ``phi_x``).
        last_bias: bias in the last linear layer.
        n_layers: linear layers in the MLP (1: a single ``Linear``, for inputs that are already hidden features).

    Shapes:
        f: ``(*, d_in)``, vecs: ``(*, k, 3)`` -> ``(*, 3)``.
    """

    def __init__(
        self, d_in: int, n_vectors: int, d_hidden: int, equivariant: bool = True, tanh: bool = False,
        scale: float = 1.0, last_gain: float | None = None, last_bias: bool = True, n_layers: int = 2,
    ) -> None:
        super().__init__()
        self.equivariant, self.tanh, self.scale, self.k = equivariant, tanh, scale, n_vectors
        d_mlp_in = d_in if equivariant else d_in + 3 * n_vectors
        self.net = mlp(d_mlp_in, d_hidden, n_vectors if equivariant else 3, n_layers=n_layers, bias=last_bias)
        if last_gain is not None:
            nn.init.xavier_uniform_(self.net[-1].weight, gain=last_gain)

    def forward(self, f: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
        if self.equivariant:
            g = self.net(f)
            if self.tanh:
                g = self.scale * torch.tanh(g)
            return (g.unsqueeze(-1) * vecs).sum(-2)
        out = self.net(torch.cat([f, vecs.flatten(-2).to(f.dtype)], dim=-1))
        return self.scale * torch.tanh(out) if self.tanh else out


class PairLinear(nn.Module):
    """``Linear([a_i, b_j, e_ij])`` for all pairs without materialising the concatenation.

    Equal (same parameter count) to ``nn.Linear(d_a + d_b + d_e, d_out)`` applied to the concatenation.

    Shapes:
        a: ``(*, T, d_a)``, b: ``(*, S, d_b)``, e: ``(*, T, S, d_e)`` -> ``(*, T, S, d_out)``.
    """

    def __init__(self, d_a: int, d_b: int, d_e: int, d_out: int) -> None:
        super().__init__()
        self.lin_a = nn.Linear(d_a, d_out)
        self.lin_b = nn.Linear(d_b, d_out, bias=False)
        self.lin_e = nn.Linear(d_e, d_out, bias=False) if d_e > 0 else None

    def forward(self, a: torch.Tensor, b: torch.Tensor, e: torch.Tensor | None = None) -> torch.Tensor:
        out = self.lin_a(a).unsqueeze(-2) + self.lin_b(b).unsqueeze(-3)
        if self.lin_e is not None:
            out = out + self.lin_e(e)
        return out


def sinusoidal_encoding(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal code of (float) positions ``pos`` ``(*,)`` -> ``(*, dim)``."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float64) / max(half, 1))
    ang = pos.to(torch.float64).unsqueeze(-1) * freq
    pe = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        pe = torch.cat([pe, torch.zeros_like(pe[..., :1])], dim=-1)
    return pe


def pairwise(x: torch.Tensor, norm_diff: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense relative vectors of a point cloud.

    Shapes:
        x: ``(*, N, 3)`` -> diff ``(*, N, N, 3)`` with ``diff[..., i, j, :] = x_i - x_j``
        (divided by ``|x_i - x_j| + 1`` if ``norm_diff``), radial ``(*, N, N, 1)`` = ``|x_i - x_j|^2``.
    """
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    radial = (diff**2).sum(-1, keepdim=True)
    if norm_diff:
        diff = diff / (torch.sqrt(radial + EPS) + 1.0)
    return diff, radial


def off_diagonal(n: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n, n)`` bool mask, True off the diagonal."""
    return ~torch.eye(n, dtype=torch.bool, device=device)
