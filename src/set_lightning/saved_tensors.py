"""What a forward pass keeps for its backward: the distinct storages of the tensors autograd saves.

The one accounting behind the benchmarks' "activation memory" (``benchmarks/step_harness.py``), the
largest single layer of ``speed.py --checkpointing`` and the checkpointing tests: a storage saved several
times (a view, a tensor two ops keep) counts once, and the module's parameters do not count.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn


@dataclass
class SavedBytes:
    """Bytes of the distinct storages saved for backward: in all, and inside each of the given layers
    (a tensor saved while several of them run counts for the innermost)."""

    storages: dict[int, int] = field(default_factory=dict)
    per_layer: list[dict[int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    @property
    def largest_layer(self) -> int:
        """Bytes saved inside the layer that saves the most (0 without layers)."""
        return max((sum(d.values()) for d in self.per_layer), default=0)


@contextlib.contextmanager
def saved_for_backward(module: nn.Module, layers: Sequence[nn.Module] = ()) -> Iterator[SavedBytes]:
    """Record what autograd saves while the block runs (run the forward pass inside it).

    ``module``'s parameters are excluded; ``layers`` (sub-modules of it) get their own account,
    ``SavedBytes.per_layer`` in their order.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    account = SavedBytes(per_layer=[{} for _ in layers])
    current: list[int] = []

    def enter(i: int):  # noqa: ANN202
        return lambda *_: current.append(i)  # list.append returns None: the layer's inputs are kept

    def leave(*_: object) -> None:
        current.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            account.storages[ptr] = storage.nbytes()
            if current:
                account.per_layer[current[-1]][ptr] = storage.nbytes()
        return t

    hooks = [m.register_forward_pre_hook(enter(i)) for i, m in enumerate(layers)]
    hooks += [m.register_forward_hook(leave) for m in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield account
    finally:
        for h in hooks:
            h.remove()
