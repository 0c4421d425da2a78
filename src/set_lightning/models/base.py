"""The interface every N-body model implements."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


class NBodyModel(nn.Module):
    """Base class of every model that the LightningModule can train.

    Subclasses implement ``forward(x, v, charges) -> (x_pred, v_pred)``: from the positions ``x`` and
    velocities ``v`` of the ``L`` history frames (``x[:, -1]`` is the input frame) and the particle
    charges (+1 / -1), the positions and velocities at the target frame.

    Shapes:
        x, v: ``(B, L, N, 3)``, charges: ``(B, N, 1)`` -> x_pred, v_pred ``(B, N, 3)``.

    Class attribute ``equivariant`` says whether the model claims E(n) equivariance
    (rotations, reflections and translations of ``x``; ``v`` rotates but does not translate).
    Every model is permutation-equivariant in the particle axis and has a parameter count that
    does not depend on ``N``.

    Every instance records its constructor arguments, defaults filled in, as ``hparams`` (a dict);
    :meth:`config` turns them into the ``class_path`` / ``init_args`` form that LightningCLI and
    checkpoints use, so a model can be rebuilt from what it says about itself.
    """

    equivariant: bool = False
    #: the constructor arguments of this instance, defaults included (set before ``__init__`` runs)
    hparams: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "NBodyModel":
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
        except TypeError:
            bound = None  # let __init__ raise its own, clearer error
        if bound is not None:
            bound.apply_defaults()
            object.__setattr__(self, "hparams", dict(list(bound.arguments.items())[1:]))
        return self

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": hparams}``: how LightningCLI and checkpoints name this model."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.hparams)}

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Number of parameters (independent of ``N`` and ``L``)."""
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def check_inputs(x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor) -> None:
        """Raise a ValueError naming the argument whose shape is wrong."""
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must have shape (B, L, N, 3), got {tuple(x.shape)}")
        if v.shape != x.shape:
            raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
        b, _, n, _ = x.shape
        if charges.shape != (b, n, 1):
            raise ValueError(f"charges must have shape (B, N, 1) = {(b, n, 1)}, got {tuple(charges.shape)}")

    @staticmethod
    def charges_per_frame(x: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        """``charges (B, N, 1)`` repeated over the frames of ``x (B, L, N, 3)``: ``(B, L, N, 1)``, x's dtype."""
        b, ell, n, _ = x.shape
        return charges.to(x.dtype).unsqueeze(1).expand(b, ell, n, 1)
