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
                                if k not in ("self", "recurrent")}, "hidden": 8, "n_layers": 2}
    config = model.config()
    assert config["class_path"] == "set_lightning.models.egnn.EGNN"
    rebuilt = build_from_config(config)
    assert isinstance(rebuilt, models.EGNN) and rebuilt.hparams == model.hparams
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert isinstance(build_from_config({"class_path": "lstm"}), models.LSTM)
    with pytest.raises(ValueError, match="not a model"):
        build_from_config({"class_path": "torch.nn.Linear"})


#: arguments other than the defaults, per registered model
NON_DEFAULT = {"set": {"hidden": 16, "n_heads": 2, "readout": "last", "dropout": 0.2, "graph": "knn", "k": 3},
               "egnn": {"hidden": 8, "n_layers": 2, "attention": True, "n_heads": 2, "norm_diff": True},
               "mlp": {"hidden": 16, "n_layers": 2, "n_frames": 3}, "linear": {"time": 0.5},
               "lstm": {"hidden": 16, "dropout": 0.1}}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("given", ["defaults", "non-defaults"])
def test_hparams_are_the_constructor_arguments_bound_to_its_signature(name, given):
    """save_hparams(locals()) records what binding the call to the signature gives (what the former
    NBodyModel.__new__ recorded): every argument, defaults filled in, in signature order."""
    cls, kwargs = MODELS[name], ({} if given == "defaults" else NON_DEFAULT[name])
    assert kwargs or given == "defaults"
    model = build_model(name, **kwargs)
    bound = inspect.signature(cls.__init__).bind(None, **kwargs)
    bound.apply_defaults()
    expected = {k: v for k, v in list(bound.arguments.items())[1:] if k not in cls.renamed_args}
    assert model.hparams == expected and list(model.hparams) == list(expected)
    cls_path = f"{cls.__module__}.{cls.__qualname__}"
    assert model.config() == {"class_path": cls_path, "init_args": expected}
    rebuilt = models.build_from_config(model.config())
    assert rebuilt.hparams == model.hparams
    assert rebuilt.load_state_dict(model.state_dict()) is not None  # the same parameters


def test_subclasses_record_their_own_arguments():
    class Plain(models.Linear):
        pass

    class Own(models.Linear):
        def __init__(self, *, scale: float = 2.0, time: float = 0.7) -> None:
            super().__init__(time=time)
            self.save_hparams(locals())

    class Forgets(models.Linear):
        def __init__(self, *, scale: float = 2.0) -> None:
            super().__init__()

    assert Plain(time=0.3).hparams == {"time": 0.3}
    assert Own(scale=3.0).hparams == {"scale": 3.0, "time": 0.7}
    with pytest.raises(TypeError, match=r"Forgets.__init__ does not record its arguments"):
        Forgets().config()


@pytest.mark.parametrize("cls", [models.EGNN, models.EGCL], ids=lambda c: c.__name__)
def test_recurrent_is_a_deprecated_name_of_residual(cls):
    small = {"hidden": 8, "n_layers": 1} if cls is models.EGNN else {"hidden": 8, "n_heads": 2}
    with pytest.warns(FutureWarning, match=rf"{cls.__name__}: recurrent is deprecated, it is called residual"):
        old = cls(recurrent=False, **small)
    new = cls(residual=False, **small)
    layer = (lambda m: m.layers[0]) if cls is models.EGNN else (lambda m: m)
    assert layer(old).residual is False and layer(new).residual is False
    if cls is models.EGNN:
        assert old.hparams == new.hparams and "recurrent" not in old.hparams and old.hparams["residual"] is False
    with pytest.raises(ValueError, match=r"recurrent is the old name of residual: pass residual only"):
        cls(residual=False, recurrent=True, **small)


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
