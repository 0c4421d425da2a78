"""``model.compile``: the model through torch.compile computes what the eager model computes, is not part
of a run's identity, and without a C++ compiler on CPU stops with one error line naming the setting."""

from __future__ import annotations

import shutil

import pytest
import torch

from set_lightning.errors import UserError
from set_lightning.experiments.records import config_identity
from set_lightning.lit import NBodyLightningModule
from set_lightning.models import build_model, fused

HAS_COMPILER = any(shutil.which(name) for name in ("g++", "clang++", "c++"))


def _batch(history: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, n = 3, 5
    x = torch.randn(b, history, n, 3, generator=g, dtype=torch.float64)
    v = torch.randn(b, history, n, 3, generator=g, dtype=torch.float64)
    q = torch.randint(0, 2, (b, n, 1), generator=g).double() * 2 - 1
    return {"x": x, "v": v, "charges": q, "x_target": x[:, -1] + 0.1 * v[:, -1], "v_target": v[:, -1]}


def _outputs_and_grads(module: NBodyLightningModule, batch: dict) -> list[torch.Tensor]:
    """The predictions and the gradients of a float64 objective (``losses`` rounds the predictions to float32)."""
    x_pred, v_pred = module(batch)
    loss = (x_pred - batch["x_target"]).square().mean() + (v_pred - batch["v_target"]).square().mean()
    grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    return [x_pred.detach(), v_pred.detach(), *grads]


@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("name,kwargs,history,store_less", [
    ("egnn", {"hidden": 8, "n_layers": 2}, 1, False),
    ("set", {"hidden": 8, "n_blocks": 1, "n_spatial_layers": 1, "n_heads": 2, "dropout": 0.0}, 3, False),
    # eager on the store-less edge functions (as at N >= 10), compiled on the plain path: the same numbers
    ("set", {"hidden": 8, "n_blocks": 1, "n_spatial_layers": 1, "n_heads": 2, "dropout": 0.0}, 3, True),
])
def test_the_compiled_model_computes_the_eager_numbers_in_float64(name, kwargs, history, store_less, monkeypatch):
    if store_less:
        monkeypatch.setattr(fused, "STORE_LESS_ELEMENTS", 0)
    torch.manual_seed(0)
    eager = NBodyLightningModule(build_model(name, **kwargs)).double()
    compiled = NBodyLightningModule(build_model(name, **kwargs), compile=True).double()
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    assert compiled.net_compiled and list(compiled.state_dict()) == list(eager.state_dict())  # plain keys
    traced: dict[str, list[bool]] = {"eager": [], "compiled": []}
    for label, module in (("eager", eager), ("compiled", compiled)):
        first = next(module.net.children())
        first.register_forward_pre_hook(lambda mod, args, seen=traced[label]: seen.append(torch.compiler.is_compiling()))
    batch = _batch(history)
    got, want = _outputs_and_grads(compiled, batch), _outputs_and_grads(eager, batch)
    assert traced == {"eager": [False], "compiled": [True]}  # the compiled model really ran through the compiler
    assert got[0].dtype == torch.float64
    for a, b in zip(got, want, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_without_a_cpp_compiler_one_error_names_the_setting(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    module = NBodyLightningModule(build_model("egnn", hidden=8, n_layers=1), compile=True)
    with pytest.raises(UserError, match=r"model\.compile: true needs a C\+\+ compiler.*model\.compile: false"):
        module.configure_model()
    assert not module.net_compiled
    NBodyLightningModule(build_model("egnn", hidden=8, n_layers=1)).configure_model()  # off: nothing is checked


def test_not_part_of_the_run_identity():
    def resolved(flag: bool, lr: float = 1e-3) -> dict:
        return {"model": {"lr": lr, "compile": flag, "net": {"class_path": "set_lightning.models.EGNN",
                                                             "init_args": {"hidden": 64}}}}

    assert config_identity(resolved(True))[0] == config_identity(resolved(False))[0]
    assert config_identity(resolved(True, lr=2e-3))[0] != config_identity(resolved(True))[0]


def test_the_store_less_functions_are_left_to_eager_runs(monkeypatch):
    """Under torch.compile the edge MLPs take the plain path (dynamo would unroll the store-less functions'
    chunk loops; inductor fuses the plain one); eager runs keep them from STORE_LESS_ELEMENTS on."""
    def path(x):
        return x + (1.0 if fused.store_less(fused.STORE_LESS_ELEMENTS) else 0.0)

    compiled = torch.compile(path, backend="eager", fullgraph=True)  # dynamo only: no C++ compiler needed
    assert fused.store_less(fused.STORE_LESS_ELEMENTS) and not fused.store_less(fused.STORE_LESS_ELEMENTS - 1)
    assert path(torch.zeros(1)).item() == 1.0 and compiled(torch.zeros(1)).item() == 0.0
