"""Models: SET and the baselines, all :class:`NBodyModel` subclasses (plain ``nn.Module``).

Every constructor is keyword-only. Axis symbols, the same in every file: ``B`` batch, ``L`` history
frames, ``N`` particles, ``H`` hidden width, ``G = B * L`` graphs (frames folded into the batch),
``K = N - 1`` neighbours of a node, ``R`` rows of ``T`` tokens in ETAL.

Importing this package applies :func:`set_lightning.memory.keep_freed_memory` (glibc keeps freed
activation memory for reuse; ``SET_LIGHTNING_KEEP_HEAP=0`` turns it off).
"""

from ..memory import keep_freed_memory

from .base import NBodyModel
from .baselines import LSTM, MLP, Linear
from .egcl import EGCL
from .egnn import EGNN
from .etal import ETAL
from .registry import MODELS, build_from_config, build_model
from .set import SET, SETBlock

keep_freed_memory()

__all__ = ["NBodyModel", "SET", "SETBlock", "EGNN", "MLP", "Linear", "LSTM", "EGCL", "ETAL", "MODELS", "build_model", "build_from_config"]
