"""Models: SET and the baselines, all :class:`NBodyModel` subclasses (plain ``nn.Module``)."""

from .base import NBodyModel
from .baselines import LSTM, MLP, Linear
from .egcl import EGCL
from .egnn import EGNN
from .etal import ETAL
from .registry import MODELS, build_from_config, build_model
from .set import SET, SETBlock

__all__ = ["NBodyModel", "SET", "SETBlock", "EGNN", "MLP", "Linear", "LSTM", "EGCL", "ETAL", "MODELS", "build_model", "build_from_config"]
