"""Under autocast the residual stream ``h`` stays fp32: only the layers' matmuls run in low precision."""

from __future__ import annotations

import pytest
import torch

from model_helpers import TINY_SET, random_inputs
from set_lightning.models import EGNN, SET


def _stream_dtypes(model: torch.nn.Module, device_type: str, dtype: torch.dtype, device: str = "cpu") -> list:
    """The dtype of ``h`` after every block / layer of ``model`` in a forward pass under autocast."""
    seen: list[torch.dtype] = []
    layers = model.blocks if isinstance(model, SET) else model.layers
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype)) for m in layers]
    x, v, q = (t.float().to(device) for t in random_inputs(seed=0))
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        xp, vp = model(x, v, q)
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(xp).all() and torch.isfinite(vp).all()
    return seen


@pytest.mark.parametrize("make", [lambda: SET(**TINY_SET), lambda: EGNN(hidden=8, n_layers=2)], ids=["set", "egnn"])
def test_residual_stream_is_fp32_under_cpu_autocast(make):
    torch.manual_seed(0)
    model = make().eval()
    assert set(_stream_dtypes(model, "cpu", torch.bfloat16)) == {torch.float32}
