"""A run is the hash of its resolved config: finished runs go stale when anything that shapes them changes."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import write_spec

from set_lightning import lightning_cli
from set_lightning.configs import CONF_DIR
from set_lightning.errors import UserError
from set_lightning.experiments.records import (
    RESULT_FILE,
    ConfigResolver,
    config_identity,
    stale_error,
    write_identity,
)
from set_lightning.experiments.spec import load_spec
from set_lightning.experiments.sweep import plan


def _finish(planned) -> None:
    """Leave what the worker leaves in a finished run directory (its identity and result)."""
    run_dir = planned.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    identity, kept = config_identity(planned.config)
    write_identity(run_dir, identity, kept)
    (run_dir / RESULT_FILE).write_text(json.dumps({"config_sha256": identity, "test_pos_mse": 0.1}))


def test_a_finished_run_is_stale_when_defaults_yaml_changes(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path, {"name": "s", "seeds": [0], "variants": {"a": {}}}))
    out = tmp_path / "out"
    (todo,) = plan(spec, out)
    assert todo.state == "todo"
    _finish(todo)
    (done,) = plan(spec, out)
    assert done.state == "done" and done.result["test_pos_mse"] == 0.1

    # the same sweep, with a packaged defaults.yaml whose learning rate changed
    conf = tmp_path / "conf"
    from set_lightning import configs

    shutil.copytree(configs.CONF_DIR, conf)
    text = (conf / "defaults.yaml").read_text()
    assert "  lr: 1.0e-3\n" in text
    (conf / "defaults.yaml").write_text(text.replace("  lr: 1.0e-3\n", "  lr: 2.0e-3\n"))
    monkeypatch.setattr(lightning_cli, "DEFAULT_CONFIGS", (conf / "defaults.yaml", conf / "data" / "small.yaml"))
    with pytest.raises(UserError, match=r"another configuration \(model\.lr: 0\.001 -> 0\.002\)"):
        plan(spec, out)
    monkeypatch.undo()
    assert plan(spec, out)[0].state == "done"  # back to the original defaults: the same run again


def test_an_edited_config_file_or_argument_makes_the_run_stale(tmp_path):
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "m.yaml"
    cfg.write_text("model:\n  lr: 0.001\n")
    path = write_spec(tmp_path, {"name": "s", "seeds": [0], "variants": {"a": {"config": "conf/m.yaml"}}})
    out = tmp_path / "out"
    _finish(plan(load_spec(path), out)[0])
    assert plan(load_spec(path), out)[0].state == "done"
    cfg.write_text("model:\n  lr: 0.01\n")  # the config file changed since the run
    with pytest.raises(UserError, match=r"model\.lr: 0\.001 -> 0\.01"):
        plan(load_spec(path), out)
    cfg.write_text("model:\n  lr: 0.001\n")
    path.write_text(path.read_text().replace("seeds:", "overrides: {data.n_train: 7}\nseeds:"))
    with pytest.raises(UserError, match=r"data\.n_train: 500 -> 7"):
        plan(load_spec(path), out)


def test_fields_that_do_not_change_results_are_not_part_of_the_identity():
    resolver = ConfigResolver()
    base = config_identity(resolver.resolve(["--model.lr=0.01"]))[0]
    same = ["--model.lr=0.01", "--trainer.enable_progress_bar=false", "--data.cache_dir=/elsewhere",
            "--data.num_workers=2", "--trainer.logger.init_args.name=other", "--trainer.log_every_n_steps=1",
            "--trainer.default_root_dir=/x"]
    assert config_identity(resolver.resolve(same))[0] == base
    for changed in (["--model.lr=0.02"], ["--model.lr=0.01", "--seed_everything=1"],
                    ["--model.lr=0.01", "--trainer.devices=2"], ["--model.lr=0.01", "--data.history=2"]):
        assert config_identity(resolver.resolve(changed))[0] != base, changed


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    resolver = ConfigResolver()
    old, old_kept = config_identity(resolver.resolve(["--model.lr=0.01"]))
    new, new_kept = config_identity(resolver.resolve(["--model.lr=0.02"]))
    write_identity(tmp_path, old, old_kept)
    assert stale_error(tmp_path, "checkpoints", old, old, old_kept) is None
    err = stale_error(tmp_path, "checkpoints", old, new, new_kept)
    assert err is not None and "model.lr: 0.01 -> 0.02" in str(err) and "checkpoints" in str(err)


def test_a_sweep_argument_that_does_not_parse_names_the_variant(tmp_path):
    path = write_spec(tmp_path, {"name": "s", "seeds": [0], "variants": {"typo": {"model.lrr": 0.1}}})
    with pytest.raises(UserError, match="variant 'typo': unknown key 'model.lrr'; did you mean 'model.lr'"):
        plan(load_spec(path), tmp_path / "out")


#: the identity of ``--config conf/egnn.yaml --config conf/data/nbody5.yaml`` as commit 12b5566 computed it,
#: before EGNN's ``recurrent`` was renamed ``residual`` (conf/egnn.yaml said ``recurrent: true``); the
#: study's EGNN rows in results/history.jsonl were hashed the same way. A deliberate edit of
#: conf/defaults.yaml, conf/egnn.yaml or conf/data/nbody5.yaml changes it (and every such run's identity)
EGNN_NBODY5_BEFORE_RENAME = "598a9bbd018138a418b61c266805f0f043d36127ffce4bf005cf84e07d70fb2f"


def test_a_renamed_setting_keeps_the_identity_it_had_before_the_rename():
    resolver = ConfigResolver()
    base = ["--config", str(CONF_DIR / "egnn.yaml"), "--config", str(CONF_DIR / "data" / "nbody5.yaml")]
    new = resolver.resolve(base)
    assert new["model"]["net"]["init_args"]["residual"] is True  # the config says residual now
    identity, kept = config_identity(new)
    assert identity == EGNN_NBODY5_BEFORE_RENAME
    init_args = kept["model"]["net"]["init_args"]
    assert init_args["recurrent"] is True and "residual" not in init_args  # hashed under the old name
    assert config_identity(kept)[0] == identity  # a config recorded before the rename hashes the same
    with pytest.warns(FutureWarning, match="recurrent is deprecated, it is called residual"):
        from set_lightning.models import build_from_config

        build_from_config({"class_path": "egnn", "init_args": {"hidden": 8, "n_layers": 1, "recurrent": True}})
    # the old spelling, as a config written before the rename gives it, is the same run
    assert config_identity(resolver.resolve([*base, "--model.net.init_args.recurrent=true"]))[0] == identity
    off = config_identity(resolver.resolve([*base, "--model.net.init_args.residual=false"]))[0]
    assert off != identity
    assert config_identity(resolver.resolve([*base, "--model.net.init_args.recurrent=false"]))[0] == off
