"""Every shipped config is smoke-tested: each ``conf/**/*.yaml`` parses and prints, each model file
trains one step (``fast_dev_run``) on tiny data, each ablation file expands; one owner per value."""

from __future__ import annotations

import contextlib
import io
import math
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import REPO, instantiate
from set_lightning.lightning_cli import make_cli
from set_lightning.configs import CONF_DIR, DEFAULT_CONFIGS, resolve_config, resolve_config_args
from set_lightning.experiments.spec import expand, load_spec
from set_lightning.experiments.sweep import main as sweep_main

CONF_FILES = sorted(CONF_DIR.rglob("*.yaml"))
MODEL_FILES = sorted(CONF_DIR.glob("*.yaml"))
MODEL_FILES.remove(CONF_DIR / "defaults.yaml")
DATA_FILES = sorted((CONF_DIR / "data").glob("*.yaml"))
GRAPH_FILES = sorted((CONF_DIR / "graph").glob("*.yaml"))
ABLATION_FILES = sorted((REPO / "ablations").glob("*.yaml"))
#: model file -> (class, history, parameters at the file's size)
MODELS = {"set": ("SET", 10, 228265), "egnn": ("EGNN", 1, 138310), "mlp": ("MLP", 10, 8518),
          "lstm": ("LSTM", 10, 19078), "linear": ("Linear", 1, 1)}
BENCHMARK = {"train": 3000, "val": 2000, "test": 2000}


def _name(path: Path) -> str:
    return "conf/" + path.relative_to(CONF_DIR).as_posix()


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _quiet(fn):
    """Run ``fn`` without its console output; return (result or None on SystemExit, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            result = fn()
        except SystemExit as exc:
            assert not exc.code, out.getvalue()[-2000:]
            result = None
    return result, out.getvalue()


@pytest.fixture(autouse=True, scope="module")
def _no_pytest_argv():
    """The CLI gets its arguments explicitly (LightningCLI warns when sys.argv holds others)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", sys.argv[:1])
        yield


@pytest.fixture(scope="module")
def parser():
    """The CLI's parser (defaults loaded, no subcommand): parses without building anything."""
    cli, _ = _quiet(lambda: make_cli(["--trainer.logger=false"], run=False))
    return cli.parser


def _parse(parser, args: list[str]):
    return parser.parse_args(resolve_config_args(args))


def test_every_config_file_is_known_here():
    assert {p.stem for p in MODEL_FILES} == set(MODELS)
    assert {p.stem for p in DATA_FILES} >= {"small", "nbody5", "nbody20", "nbody30"}
    assert all(p.is_file() for p in DEFAULT_CONFIGS)


@pytest.mark.parametrize("path", CONF_FILES, ids=_name)
def test_config_file_prints_with_its_values(path, tmp_path, monkeypatch):
    """``fit --config <file> --print_config`` from a folder without ./conf: every value of the file
    is in the printed, resolved config."""
    monkeypatch.chdir(tmp_path)
    _, printed = _quiet(lambda: make_cli(["fit", "--config", _name(path), "--print_config"]))
    resolved = _leaves(yaml.safe_load(printed))
    for key, value in _leaves(yaml.safe_load(path.read_text())).items():
        if key.startswith("trainer.callbacks"):
            continue  # a list of class specs; checked by the runs below
        assert resolved[key] == value, key


def test_config_files_have_one_owner_per_value():
    """Model files hold the model, its optimisation, its logger name and its input shape
    (data.history); data files hold the data set; no value is set by two files of one group."""
    for path in MODEL_FILES:
        keys = set(_leaves(yaml.safe_load(path.read_text())))
        assert {k for k in keys if k.startswith("data.")} == {"data.history"}, path.name
        assert "model.net.init_args.n_frames" not in keys  # derived from data.history
    for path in DATA_FILES:
        keys = set(_leaves(yaml.safe_load(path.read_text())))
        assert keys and all(k.startswith("data.") for k in keys) and "data.history" not in keys, path.name
    for path in GRAPH_FILES:  # the graph group: how SET and EGNN see the bodies' interactions, nothing else
        keys = set(_leaves(yaml.safe_load(path.read_text())))
        assert keys and keys <= {f"model.net.init_args.{k}" for k in ("graph", "k", "edge_dim", "node_dim")}, path.name
    defaults = set(_leaves(yaml.safe_load(DEFAULT_CONFIGS[0].read_text())))
    assert {k for k in defaults if k.startswith("data.")} == {"data.history"}


@pytest.mark.parametrize("model, data", [*((m, "nbody5") for m in sorted(MODELS)), ("set", "nbody20"), ("mlp", "nbody30")])
def test_model_and_data_files_compose_in_either_order(parser, model, data):
    cls, history, n_params = MODELS[model]
    files = [f"conf/{model}.yaml", f"conf/data/{data}.yaml"]
    one = _parse(parser, [a for f in files for a in ("--config", f)])
    other = _parse(parser, [a for f in reversed(files) for a in ("--config", f)])
    del one["config"], other["config"]  # the list of files read, in order
    assert one == other
    assert one.model.net.class_path.endswith(cls) and one.data.history == history
    assert (one.data.n_train, one.data.n_val, one.data.n_test) == tuple(BENCHMARK.values())
    assert one.data.n_particles == int(data.removeprefix("nbody")) and one.data.batch_size == 100


@pytest.mark.parametrize("model", ["defaults", *sorted(MODELS)])
def test_model_file_trains_one_step(model, data_cache, tmp_path, monkeypatch):
    """Each model file at its real size: ``fit --trainer.fast_dev_run true`` on 4 tiny trajectories."""
    monkeypatch.chdir(tmp_path)
    configs = [] if model == "defaults" else ["--config", f"conf/{model}.yaml", "--config", "conf/data/nbody5.yaml"]
    args = ["fit", *configs, "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--data.n_train=4", "--data.n_val=4", "--data.n_test=4", "--data.batch_size=4",
            f"--data.cache_dir={data_cache}"]
    cli, _ = _quiet(lambda: make_cli(args))
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    if model != "defaults":
        cls, history, n_params = MODELS[model]
        assert type(cli.model.net).__name__ == cls and cli.model.net.n_params == n_params
        assert cli.datamodule.history == history


def test_mlp_reads_the_history_of_the_data(parser):
    from set_lightning.models import MLP

    for history in (1, 4, 10):
        cfg = _parse(parser, ["--config", "conf/mlp.yaml", f"--data.history={history}"])
        net = instantiate(parser, cfg).model.net
        assert isinstance(net, MLP) and net.n_frames == history
        assert net.n_params == MLP(hidden=64, n_layers=3, n_frames=history).n_params


def test_config_names_resolve_to_the_package_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("conf/set.yaml") == CONF_DIR / "set.yaml"
    assert resolve_config("conf/data/nbody20.yaml") == CONF_DIR / "data" / "nbody20.yaml"
    assert not resolve_config("conf/nope.yaml").is_file()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "set.yaml").write_text("trainer:\n  max_epochs: 3\n")
    assert resolve_config("conf/set.yaml") == Path("conf/set.yaml")  # a local file wins
    assert resolve_config_args(["--config=conf/egnn.yaml", "-c", "conf/set.yaml", "--data.history=2"]) == [
        f"--config={CONF_DIR / 'egnn.yaml'}", "-c", "conf/set.yaml", "--data.history=2"]


@pytest.mark.parametrize("path", ABLATION_FILES, ids=lambda p: p.name)
def test_ablation_file_expands_to_runs_that_parse(path, parser, tmp_path):
    """``sweep <file> --dry-run`` lists every run; each variant's arguments parse and carry its
    overrides and grid values into the resolved config."""
    _, listing = _quiet(lambda: sweep_main([str(path), "--dry-run", "--out", str(tmp_path)]))
    spec = load_spec(path)
    runs = expand(spec, tmp_path)
    assert f"{len(runs)} runs, 0 finished, {len(runs)} to run" in listing
    assert sum(line.strip().startswith("[todo]") for line in listing.splitlines()) == len(runs)
    first = {}
    for run in runs:
        first.setdefault(run.variant, run)
    assert set(first) == set(spec.variants)
    for run in first.values():
        cfg = _parse(parser, list(run.cli_args()))
        expected = {**spec.overrides, **spec.variants[run.variant], **dict(run.grid_point)}
        for key, value in expected.items():
            if key != "config":
                assert cfg[key] == value, (run.variant, key)


def test_benchmark_scripts_train_on_the_benchmark_split(parser, tmp_path):
    from benchmarks import time_to_accuracy as tta

    expected_data = {"nbody5": ("charged", 3000, 2000, 2000, 5), "springs5": ("springs", 3000, 2000, 2000, 5),
                     "gravity100": ("gravity", 1000, 500, 2000, 100)}
    assert set(tta.STUDIES) == set(expected_data)
    for name, study in tta.STUDIES.items():
        for label, variant in study.models.items():
            cfg = _parse(parser, tta._run_spec(study, label, variant, 0, tmp_path / "run").cli_args())
            data = (cfg.data.system, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test, cfg.data.n_particles)
            assert data == expected_data[name], (name, label)
            history = 10 if "L=10" in label else 1 if "EGNN" in label or "L=1" in label else 5
            assert cfg.data.history == history, label
            net = cfg.model.net.init_args
            if name == "springs5":
                assert net.edge_dim == 1, label  # the spring graph reaches the model
            if name == "gravity100":
                assert (net.graph, net.k) == ("knn", 6), label
        assert {m for _, models, _ in study.sections for m in models} == set(study.models), name


GRAPH_DATA = {"knn6": ["--data.n_particles=8"], "edge_attr": ["--data.system=springs"],
              "given": ["--data.system=springs"]}


@pytest.mark.parametrize("model", ["set", "egnn"])
@pytest.mark.parametrize("graph", [p.stem for p in GRAPH_FILES])
def test_graph_file_trains_one_step(graph, model, data_cache, tmp_path, monkeypatch):
    """Each graph file with SET and EGNN on data it fits (k-NN: 8 bodies; the springs' graph files: springs)."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", f"conf/{model}.yaml", "--config", f"conf/graph/{graph}.yaml", *GRAPH_DATA[graph],
            "--model.net.init_args.hidden=8", "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.history=2",
            "--data.n_train=4", "--data.n_val=4", "--data.n_test=4", "--data.batch_size=4",
            f"--data.cache_dir={data_cache}"]
    cli, _ = _quiet(lambda: make_cli(args))
    assert cli.trainer.global_step == 1
    expected = yaml.safe_load((CONF_DIR / "graph" / f"{graph}.yaml").read_text())["model"]["net"]["init_args"]
    assert {k: getattr(cli.model.net, k) for k in expected} == expected


def test_every_shipped_config_is_in_the_package_data():
    """A non-editable install carries conf/ only through setup.cfg's package_data globs."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packaged = {p for g in cfg["options.package_data"]["set_lightning"].split() for p in CONF_DIR.parent.glob(g)}
    assert CONF_FILES and [_name(p) for p in CONF_FILES if p not in packaged] == []
