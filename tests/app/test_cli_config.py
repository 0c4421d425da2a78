"""The CLI's configuration: printing it, composing config files and overrides, model names, help.

(A whole run, fit then test and predict, is in test_runs.py.)
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import run_cli


def test_print_config_shows_model_and_data(tmp_path):
    res = run_cli(["fit", "--print_config"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "class_path: set_lightning.models.SET" in res.stdout
    assert "n_particles: 5" in res.stdout and "input_frame: 30" in res.stdout


def test_config_files_and_dotted_overrides_compose(tmp_path):
    res = run_cli(
        ["fit", "--config", str(Path(__file__).resolve().parents[2] / "conf" / "egnn.yaml"),
         "--trainer.max_epochs", "7", "--data.n_particles", "20", "--print_config"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "class_path: set_lightning.models.EGNN" in res.stdout
    assert "max_epochs: 7" in res.stdout and "n_particles: 20" in res.stdout


def test_lower_case_model_names(tmp_path):
    res = run_cli(["fit", "--model.net", "egnn", "--print_config"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "class_path: set_lightning.models.EGNN" in res.stdout


def test_help_lists_every_subcommand_under_the_programs_name(tmp_path):
    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout.startswith("usage: python -m set_lightning ")
    for sub in ("fit", "validate", "test", "predict", "sweep"):
        assert f"\n  {sub} " in res.stdout, sub
    assert "__main__" not in res.stdout
