"""Name -> model class registry."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import UserError
from .base import NBodyModel
from .baselines import LSTM, MLP, Linear
from .egnn import EGNN
from .set import SET

MODELS: dict[str, type[NBodyModel]] = {"set": SET, "egnn": EGNN, "mlp": MLP, "linear": Linear, "lstm": LSTM}


def model_kwargs(cls: type[NBodyModel]) -> list[str]:
    """Names of the keyword arguments of ``cls.__init__``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def build_model(name: str, **kwargs: Any) -> NBodyModel:
    """Build the model registered as ``name`` (case-insensitive) with ``kwargs``.

    Raises:
        UserError: unknown ``name`` or an argument that model does not take (the message lists the
            allowed values).
    """
    key = str(name).lower()
    if key not in MODELS:
        raise UserError(f"unknown model name {name!r}; allowed names: {sorted(MODELS)}")
    cls = MODELS[key]
    allowed = model_kwargs(cls)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(f"unknown argument(s) {unknown} for model {key!r}; allowed arguments: {allowed}")
    return cls(**kwargs)
