"""Registry, constructor signatures (for LightningCLI / jsonargparse) and exports."""

from __future__ import annotations

import inspect

import pytest
from cli_helpers import instantiate

import set_lightning.models as models
from set_lightning.models import MODELS, NBodyModel, build_model


def test_registry_names_and_classes():
    assert set(MODELS) == {"set", "egnn", "mlp", "linear", "lstm"}
    for name, cls in MODELS.items():
        assert issubclass(cls, NBodyModel) and cls.__name__.lower() == name
        assert getattr(models, cls.__name__) is cls
    subclasses, todo = set(), [NBodyModel]
    while todo:
        for c in todo.pop().__subclasses__():
            subclasses.add(c.__name__)
            todo.append(c)
    assert subclasses >= {"SET", "EGNN", "MLP", "Linear", "LSTM"}


def test_build_model():
    model = build_model("SET", hidden=8, n_heads=2, n_blocks=1)
    assert isinstance(model, models.SET) and model.embed.out_features == 8
    assert isinstance(build_model("linear"), models.Linear)


def test_models_record_their_init_arguments_and_rebuild_from_them():
    from set_lightning.models import build_from_config

    model = build_model("egnn", hidden=8, n_layers=2)
    assert model.hparams == {**{k: p.default for k, p in inspect.signature(models.EGNN.__init__).parameters.items()
                                if k != "self"}, "hidden": 8, "n_layers": 2}
    config = model.config()
    assert config["class_path"] == "set_lightning.models.egnn.EGNN"
    rebuilt = build_from_config(config)
    assert isinstance(rebuilt, models.EGNN) and rebuilt.hparams == model.hparams
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert isinstance(build_from_config({"class_path": "lstm"}), models.LSTM)
    with pytest.raises(ValueError, match="not a model"):
        build_from_config({"class_path": "torch.nn.Linear"})


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"'transformer'.*egnn.*linear.*lstm.*mlp.*set"):
        build_model("transformer")


def test_unknown_kwarg_lists_allowed():
    with pytest.raises(ValueError, match=r"n_layer.*'egnn'.*hidden.*n_layers"):
        build_model("egnn", n_layer=3)


@pytest.mark.parametrize("cls", list(MODELS.values()), ids=lambda c: c.__name__)
def test_init_args_are_typed_defaulted_and_documented(cls):
    doc = inspect.getdoc(cls)
    assert "Args:" in doc
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        assert p.annotation is not inspect.Parameter.empty, name
        assert p.default is not inspect.Parameter.empty, name
        assert f"    {name}:" in doc, name


def test_equivariant_class_attributes():
    claims = {n: c.equivariant for n, c in MODELS.items()}
    assert claims == {"set": True, "egnn": True, "linear": True, "mlp": False, "lstm": False}


def test_jsonargparse_resolves_models_by_class_name():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(NBodyModel, "net")
    cfg = parser.parse_args(["--net", "SET", "--net.hidden", "8", "--net.n_heads", "2", "--net.adjacency", "true"])
    net = instantiate(parser, cfg).net
    assert isinstance(net, models.SET) and net.blocks[0].etal.adjacency
    cfg = parser.parse_args(["--net", "EGNN", "--net.n_layers", "2"])
    assert len(instantiate(parser, cfg).net.layers) == 2
    assert isinstance(instantiate(parser, parser.parse_args(["--net", "Linear"])).net, models.Linear)
