"""Simple baselines: constant-velocity ``Linear``, per-particle ``MLP`` and ``LSTM``."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import NBodyModel, require_dropout, require_sizes
from .layers import mlp


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class Linear(NBodyModel):
    """EGNN's ``Linear_dynamics``: ``x_pred = x + t v``, ``v_pred = v`` at the last input frame.

    One learnable scalar ``t`` (E(n)-equivariant). The horizon is 1000 steps of ``dt = 0.001``, i.e.
    one time unit; the reference initialises ``t = 0.7`` and learns it.

    Args:
        time: initial value of the learnable time step ``t``.

    Shapes:
        x, v: ``(B, L, N, 3)`` (only the last frame is read), charges: ``(B, N, 1)`` -> x_pred, v_pred
        ``(B, N, 3)``.
    """

    equivariant = True

    def __init__(self, *, time: float = 0.7) -> None:
        super().__init__()
        self.save_hparams(locals())
        self.time = nn.Parameter(torch.tensor(float(time)))

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        return x[:, -1] + self.time.to(x.dtype) * v[:, -1], v[:, -1]


class MLP(NBodyModel):
    """Per-particle MLP over the raw history ``[x(t), v(t)]`` of the last ``n_frames`` frames and the charge.

    Predicts offsets: ``x_pred = x(L) + o_x``, ``v_pred = v(L) + o_v``. Particles do not interact;
    parameters do not depend on ``N``; not equivariant (raw coordinates are inputs).

    Args:
        hidden: hidden width.
        n_layers: number of linear layers (>= 1).
        n_frames: number of input frames read, the most recent ones (inputs need ``L >= n_frames``). The
            CLI links it to ``data.history``: the MLP reads the whole history.

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)`` -> x_pred, v_pred ``(B, N, 3)``.
    """

    equivariant = False

    def __init__(self, *, hidden: int = 64, n_layers: int = 3, n_frames: int = 1) -> None:
        super().__init__()
        self.save_hparams(locals())
        require_sizes(hidden=hidden, n_layers=n_layers, n_frames=n_frames)
        self.n_frames = n_frames
        self.net = mlp(d_in=6 * n_frames + 1, d_hidden=hidden, d_out=6, n_layers=n_layers)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        b, ell, n, _ = x.shape
        if ell < self.n_frames:
            raise UserError(f"x must have at least n_frames={self.n_frames} frames, got L={ell}")
        hist = torch.cat([x[:, -self.n_frames:], v[:, -self.n_frames:]], dim=-1)  # (B, F, N, 6)
        feats = torch.cat([hist.transpose(1, 2).reshape(b, n, -1), charges.to(x.dtype)], dim=-1)
        out = self.net(feats)
        return x[:, -1] + out[..., :3], v[:, -1] + out[..., 3:]


class LSTM(NBodyModel):
    """Per-particle LSTM over the ``L`` frames of ``[x(t), v(t), q]``; final hidden state -> offsets.

    ``x_pred = x(L) + o_x``, ``v_pred = v(L) + o_v`` with ``o = Linear(h_L)``. Not equivariant;
    parameters depend on neither ``N`` nor ``L``.

    Args:
        hidden: LSTM hidden size.
        n_layers: stacked LSTM layers.
        dropout: dropout between LSTM layers (only with ``n_layers > 1``).

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)`` -> x_pred, v_pred ``(B, N, 3)``; inside, ``B N``
        sequences of ``L`` steps.
    """

    equivariant = False

    def __init__(self, *, hidden: int = 64, n_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hparams(locals())
        require_sizes(hidden=hidden, n_layers=n_layers)
        require_dropout(dropout)
        self.lstm = nn.LSTM(7, hidden, num_layers=n_layers, batch_first=True,
                            dropout=dropout if n_layers > 1 else 0.0)
        self.head = nn.Linear(hidden, 6)

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(x, v, charges)
        b, ell, n, _ = x.shape
        q = self.charges_per_frame(x, charges)
        seq = torch.cat([x, v, q], dim=-1).transpose(1, 2).reshape(b * n, ell, 7)
        if seq.device.type == "cpu" and _cpu_autocast():
            # oneDNN has no bf16 LSTM primitive on many CPUs: run the LSTM itself in full precision
            with torch.autocast("cpu", enabled=False):
                _, (h_n, _) = self.lstm(seq.to(self.lstm.weight_ih_l0.dtype))
        else:
            _, (h_n, _) = self.lstm(seq)
        out = self.head(h_n[-1]).reshape(b, n, 6)
        return x[:, -1] + out[..., :3], v[:, -1] + out[..., 3:]
