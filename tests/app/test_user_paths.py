"""Options a new user reaches for must just work, and every bad input is one ``error:`` line.

Run in-process through the entry point (``set_lightning.entry.main``): each bad input exits 1 with exactly
one ``error:`` line naming the field, and leaves what was already written as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import error_lines, run_cli, tiny_args
from set_lightning.entry import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI warns when sys.argv holds pytest's


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the entry point in-process; its exit code, stdout and stderr."""
    import logging

    # console log handlers keep the stream they were made with (an earlier test's, closed): this one's
    handlers = [h for log in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                for h in getattr(log, "handlers", []) if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stderr
    try:
        with pytest.raises(SystemExit) as exc:
            main(args)
    finally:
        for handler, stream in zip(handlers, streams):
            handler.stream = stream
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _source_file(path: Path, pairs: bool = True) -> Path:
    rng = np.random.default_rng(0)
    b, t, n = 80, 41, 4  # tiny_args' 48 + 16 + 16 trajectories; frames 0..40: the default input (30) and target (40) frames
    arrays = {"x": rng.normal(size=(b, t, n, 3)), "v": rng.normal(size=(b, t, n, 3)) * 0.1,
              "node_attr": rng.uniform(0.5, 1.0, size=(b, n, 2))}
    if pairs:
        arrays["edge_attr"] = (rng.uniform(size=(b, n, n)) > 0.5).astype(float)
    np.savez(path, **arrays)
    return path


BAD = {
    # id: (extra args, what the one error line must hold)
    "dropout_above_1": (["--model.net.init_args.dropout=1.5"], "dropout must be in [0, 1)"),
    "dropout_negative": (["--model.net.init_args.dropout=-0.1"], "dropout must be in [0, 1)"),
    "hidden_negative_egnn": (["--model.net=EGNN", "--model.net.hidden=-4"], "hidden must be an integer >= 1, got -4"),
    "hidden_zero_set": (["--model.net.hidden=0"], "hidden must be an integer >= 1, got 0"),
    "trainer_not_a_mapping": (["--config=trainer5.yaml"], "'trainer' must be a mapping of trainer options"),
    "yaml_syntax": (["--config=broken.yaml"], "--config broken.yaml: not valid YAML at line"),
    "source_is_a_directory": (["--data.source=a_folder"], "data.source: a_folder is a directory"),
    "split_fraction_empty": (["--data.source=pairs.npz", "--data.split_fractions=[0.5,0.0,0.5]"],
                             "split_fractions [0.5, 0.0, 0.5] leave the val split"),
    "edge_dim_against_data": (["--data.system=springs", "--model.net.init_args.edge_dim=0"],
                              "model.net.init_args.edge_dim: 0 given, but the data carry 1 pair attribute"),
    "node_dim_against_data": (["--data.source=pairs.npz", "--model.net.init_args.node_dim=1"],
                              "model.net.init_args.node_dim: 1 given, but the data carry 2 node attribute"),
    "resume_best": (["--ckpt_path=best"], "ckpt_path: 'best' names the best checkpoint of a run to evaluate"),
    # a model that cannot read the data: found at the first batch, after the run folder was made
    "graph_given_without_pairs": (["--model.net.graph=given"], "model graph='given' reads the graph"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_error_line_and_loses_nothing(case, data_cache, tmp_path, capsys):
    extra, expected = BAD[case]
    (tmp_path / "trainer5.yaml").write_text("trainer: 5\n")
    (tmp_path / "broken.yaml").write_text("trainer:\n  max_epochs: [1\n")
    (tmp_path / "a_folder").mkdir()
    _source_file(tmp_path / "pairs.npz")
    earlier = tmp_path / "runs" / "quick" / "version_0"  # an earlier run, which must stay as it is
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("earlier: run\n")
    before = _tree(tmp_path)
    code, out, err = _main(["fit", *tiny_args(data_cache), "--trainer.enable_progress_bar=false", *extra], capsys)
    assert code == 1, (out + err)[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err[-3000:]
    assert "TrainerFn" not in lines[0] and "Traceback" not in err
    assert _tree(tmp_path) == before  # nothing written, nothing half-written, nothing lost
    assert sorted(p.name for p in (tmp_path / "runs" / "quick").iterdir()) == ["version_0"]


@pytest.mark.parametrize("sub", ["test", "validate", "predict"])
def test_evaluation_without_a_checkpoint_is_an_error_naming_ckpt_path(sub, data_cache, tmp_path, capsys):
    code, out, err = _main([sub, *tiny_args(data_cache)], capsys)
    assert code == 1
    (line,) = error_lines(err)
    assert "--ckpt_path" in line and sub in line
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("predictions*"))


@pytest.mark.parametrize("which", ["last", "best"])
def test_evaluation_of_last_or_best_without_a_run_is_an_error(which, data_cache, tmp_path, capsys):
    code, out, err = _main(["test", *tiny_args(data_cache), f"--ckpt_path={which}"], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = error_lines(err)
    assert f"ckpt_path: '{which}' found no runs/quick/*/checkpoints/" in line
    assert not (tmp_path / "runs").exists()


def test_evaluation_of_last_and_best_uses_the_newest_run(data_cache, tmp_path, capsys):
    code, out, err = _main(["fit", *tiny_args(data_cache), "--trainer.enable_progress_bar=false"], capsys)
    assert code == 0, err[-3000:]
    best = next((tmp_path / "runs").rglob("best-*.ckpt"))
    for which, expected in (("best", best), ("last", best.parent / "last.ckpt")):
        code, out, err = _main(["test", *tiny_args(data_cache), f"--ckpt_path={which}",
                                "--trainer.enable_progress_bar=false"], capsys)
        assert code == 0 and not error_lines(err), err[-3000:]
        assert f"checkpoint: {expected.relative_to(tmp_path)}" in out and "test/pos_mse:" in out


def test_no_logger_trains_and_checkpoints(data_cache, tmp_path, capsys):
    code, out, err = _main(["fit", *tiny_args(data_cache), "--trainer.logger=false",
                            "--trainer.enable_progress_bar=false"], capsys)
    assert code == 0, err[-3000:]
    assert out.count("note: trainer.logger is off: LearningRateMonitor left out") == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-epoch=001.ckpt", "last.ckpt"]


@pytest.mark.parametrize("data", ["springs", "gravity", "file_with_pairs", "file_without_pairs"])
@pytest.mark.parametrize("model", ["SET", "EGNN"])
def test_model_attribute_dims_follow_the_data(model, data, data_cache, tmp_path, capsys):
    args = {"springs": ["--data.system=springs"], "gravity": ["--data.system=gravity"],
            "file_with_pairs": [f"--data.source={_source_file(tmp_path / 'p.npz')}"],
            "file_without_pairs": [f"--data.source={_source_file(tmp_path / 'q.npz', pairs=False)}"]}[data]
    if model == "EGNN":
        args += ["--model.net.n_layers=1"]
    code, out, err = _main(["fit", *tiny_args(data_cache, model), *args, "--trainer.max_epochs=1",
                            "--trainer.enable_progress_bar=false"], capsys)
    assert code == 0, err[-3000:]
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    init = ckpt["hyper_parameters"]["net"]["init_args"]
    node, edge = {"springs": (1, 1), "gravity": (1, 0), "file_with_pairs": (2, 1), "file_without_pairs": (2, 0)}[data]
    assert (init["node_dim"], init["edge_dim"]) == (node, edge)


def test_plateau_with_validation_every_second_epoch(data_cache, tmp_path, capsys):
    code, out, err = _main(["fit", *tiny_args(data_cache), "--model.scheduler=plateau",
                            "--trainer.check_val_every_n_epoch=2", "--trainer.max_epochs=4",
                            "--trainer.enable_progress_bar=false"], capsys)
    assert code == 0 and not error_lines(err), err[-3000:]
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    # stepped after epoch 1's validation (epoch 3's checkpoint is written before its step)
    assert ckpt["epoch"] == 3 and ckpt["lr_schedulers"][0]["last_epoch"] == 1


def test_fast_dev_run_writes_nothing(data_cache, tmp_path, capsys):
    code, out, err = _main(["fit", *tiny_args(data_cache), "--trainer.fast_dev_run=true",
                            "--trainer.enable_progress_bar=false"], capsys)
    assert code == 0, err[-3000:]
    assert not [p for p in tmp_path.rglob("*") if p.name != "tmp_path"], list(tmp_path.rglob("*"))


def test_a_pickled_checkpoint_is_refused_for_what_it_is(tmp_path):
    from set_lightning.checkpoints import read_checkpoint
    from set_lightning.errors import UserError

    torch.save({"state_dict": {}, "loss": torch.nn.MSELoss()}, tmp_path / "pickled.ckpt")
    with pytest.raises(UserError, match="holds objects that are not plain tensors and values") as err:
        read_checkpoint(tmp_path / "pickled.ckpt")
    assert "truncated" not in str(err.value) and "\n" not in str(err.value)


def test_lightning_noise_is_silenced_and_other_warnings_are_not(data_cache, tmp_path):
    res = run_cli(["fit", *tiny_args(data_cache), "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"],
                  cwd=tmp_path, env={"PYTHONWARNINGS": "default"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "LeafSpec" not in out and "litlogger" not in out.lower()

    import warnings

    from set_lightning.quiet import silence_lightning_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_lightning_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("another future change", FutureWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning)  # another category
    assert [str(w.message) for w in caught] == ["another future change", "`isinstance(treespec, LeafSpec)` is deprecated"]
