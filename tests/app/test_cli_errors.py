"""Bad input gives one clear error line and a non-zero exit code, not a traceback wall."""

from __future__ import annotations

from cli_helpers import run_cli, tiny_args


def _assert_clean_error(res, *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    text = res.stderr.lower()
    for needle in needles:
        assert needle.lower() in text, res.stderr[-3000:]


def test_unknown_model_name(tmp_path, data_cache):
    res = run_cli(["fit", *tiny_args(data_cache)[:-1], "--model.net=Transformerz"], cwd=tmp_path)
    _assert_clean_error(res, "Transformerz")


def test_unknown_config_key(tmp_path, data_cache):
    res = run_cli(["fit", *tiny_args(data_cache), "--data.n_trian=5"], cwd=tmp_path)
    _assert_clean_error(res, "n_trian")


def test_impossible_history_names_the_field(tmp_path, data_cache):
    res = run_cli(["fit", *tiny_args(data_cache), "--data.history=40"], cwd=tmp_path)
    _assert_clean_error(res, "history")
    assert len([l for l in res.stderr.splitlines() if l.startswith("error:")]) == 1


def test_missing_checkpoint(tmp_path, data_cache):
    res = run_cli(["test", *tiny_args(data_cache), "--ckpt_path=nowhere/missing.ckpt"], cwd=tmp_path)
    _assert_clean_error(res, "missing.ckpt")


def test_missing_config_file(tmp_path):
    res = run_cli(["fit", "--config", "conf/does_not_exist.yaml"], cwd=tmp_path)
    _assert_clean_error(res, "does_not_exist.yaml")


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoints(tmp_path, data_cache):
    # A learning rate of 1e30 makes the weights (and so the loss) overflow within a few steps.
    res = run_cli(["fit", *tiny_args(data_cache), "--model.lr=1e30", "--trainer.max_epochs=20"], cwd=tmp_path)
    _assert_clean_error(res, "loss is", "lr")
