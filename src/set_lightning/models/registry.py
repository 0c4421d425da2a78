"""Name -> model class registry."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
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
    return _construct(MODELS[key], key, kwargs)


def _construct(cls: type[NBodyModel], name: str, kwargs: Mapping[str, Any]) -> NBodyModel:
    allowed = model_kwargs(cls)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(f"unknown argument(s) {unknown} for model {name!r}; allowed arguments: {allowed}")
    return cls(**kwargs)


def build_from_config(config: Mapping[str, Any]) -> NBodyModel:
    """Rebuild a model from ``{"class_path": ..., "init_args": {...}}`` (:meth:`NBodyModel.config`).

    ``class_path`` is a full import path of an ``NBodyModel`` subclass or a registered name.

    Raises:
        UserError: the class path does not name an ``NBodyModel`` (the message lists the registered names).
    """
    path = str(config.get("class_path", ""))
    cls = model_class(path)
    if cls is None:
        raise UserError(f"class_path {path!r} is not a model; allowed names: {sorted(MODELS)} or a full class path")
    return _construct(cls, cls.__name__, dict(config.get("init_args") or {}))


def model_class(name_or_path: str) -> type[NBodyModel] | None:
    """The model class a registered name (any case) or a full class path names; ``None`` if none."""
    cls: Any = MODELS.get(str(name_or_path).lower())
    if cls is None and "." in str(name_or_path):
        module, _, name = str(name_or_path).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    return cls if inspect.isclass(cls) and issubclass(cls, NBodyModel) else None
