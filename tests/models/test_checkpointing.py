"""SET's activation checkpointing: the same numbers, less memory kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

from model_helpers import ALL_FLAG_COMBOS, TINY_SET, combo_id, random_inputs
from set_lightning.experiments.records import config_identity
from set_lightning.models import SET
from set_lightning.saved_tensors import saved_for_backward


def _outputs_and_grads(model: SET, seed: int = 5):
    x, v, q = random_inputs(b=3, ell=4, n=5)
    torch.manual_seed(seed)  # dropout's masks
    x_pred, v_pred = model(x, v, q)
    loss = (x_pred.square().sum() + 0.3 * v_pred.square().sum())
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return [x_pred, v_pred], grads


def _pair(flags: dict, **kwargs) -> tuple[SET, SET]:
    torch.manual_seed(0)
    plain = SET(**TINY_SET, **flags, **kwargs).double().train()
    saved = SET(**TINY_SET, **flags, **kwargs, activation_checkpointing=True).double().train()
    saved.load_state_dict(plain.state_dict())
    return plain, saved


@pytest.mark.parametrize("flags", ALL_FLAG_COMBOS, ids=combo_id)
def test_same_outputs_and_gradients_bit_for_bit(flags):
    plain, saved = _pair(flags)
    (outs_a, grads_a), (outs_b, grads_b) = _outputs_and_grads(plain), _outputs_and_grads(saved)
    for a, b in zip(outs_a, outs_b, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("graph", ["knn", "complete"])
def test_same_numbers_on_a_knn_graph_and_with_dropout(graph):
    plain, saved = _pair({}, graph=graph, k=2)
    (outs_a, grads_a), (outs_b, grads_b) = _outputs_and_grads(plain), _outputs_and_grads(saved)
    assert all(torch.equal(a, b) for a, b in zip(outs_a + list(grads_a), outs_b + list(grads_b)))


def _saved_bytes(model: SET) -> int:
    x, v, q = random_inputs(b=4, ell=6, n=8, dtype=torch.float32)
    with saved_for_backward(model) as saved:
        out = model(x, v, q)[0].sum()
    out.backward()
    return saved.total


def test_keeps_a_fraction_of_the_activations():
    torch.manual_seed(0)
    plain = SET(hidden=16, n_blocks=2, n_spatial_layers=2, n_heads=2)
    saved = SET(hidden=16, n_blocks=2, n_spatial_layers=2, n_heads=2, activation_checkpointing=True)
    assert _saved_bytes(saved) < 0.4 * _saved_bytes(plain)


def test_no_recomputation_without_gradients():
    model = SET(**TINY_SET, activation_checkpointing=True).eval()
    x, v, q = random_inputs(dtype=torch.float32)
    with torch.no_grad():
        a = model(x, v, q)[0]
    b = SET(**TINY_SET).eval()
    b.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(a, b(x, v, q)[0])


def test_not_part_of_the_run_identity():
    def resolved(flag: bool) -> dict:
        return {"model": {"net": {"class_path": "set_lightning.models.SET",
                                  "init_args": {"hidden": 64, "activation_checkpointing": flag}}}}

    assert config_identity(resolved(True))[0] == config_identity(resolved(False))[0]
    other = resolved(False)
    other["model"]["net"]["init_args"]["hidden"] = 32
    assert config_identity(other)[0] != config_identity(resolved(False))[0]
