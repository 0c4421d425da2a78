"""`speed.py --baseline REV` (benchmarks/revision_baseline.py): an older revision's model is compared at the
function it has, so options added since are put at their defaults on both sides, or refused."""

from pathlib import Path

import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


class SET:  # an older revision's SET: it has no readout option
    def __init__(self, *, hidden: int = 64, n_blocks: int = 2) -> None:
        pass


def test_options_the_revision_lacks_go_to_their_defaults_or_are_refused(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    from revision_baseline import missing_options, older_args

    shipped = {"hidden": 64, "n_blocks": 2, "readout": "last"}
    assert missing_options(SET, shipped) == {"readout": "mean"}  # the old function: the paper's mean readout
    assert missing_options(SET, {**shipped, "readout": "mean"}) == {}
    assert older_args(SET, {**shipped, "readout": "mean"}) == {"hidden": 64, "n_blocks": 2}
    with pytest.raises(SystemExit, match="has no option \\['readout'\\]"):
        older_args(SET, shipped)  # never a silent comparison of two different functions


def test_shipped_runs_the_revision_with_mallocs_defaults_and_this_tree_with_its_allocator(monkeypatch):
    """`--shipped REV`: each side in its own processes, the revision's models with SET_LIGHTNING_KEEP_HEAP=0 (it had
    no allocator setting) and this tree's with the default; the speed-up is before / after of the medians."""
    import argparse
    import subprocess
    import types

    monkeypatch.syspath_prepend(BENCHMARKS)
    import revision_baseline as rb

    calls = []

    def fake_run(cmd, env=None, **kwargs):
        before = "old = rb.load_models_at('b1aceb6')" in cmd[-1] and "if 'before' ==" in cmd[-1]
        calls.append((before, env["SET_LIGHTNING_KEEP_HEAP"], "'set'" in cmd[-1]))
        return types.SimpleNamespace(stdout="30.0\n" if before else "20.0\n")

    monkeypatch.setattr(rb, "load_models_at", lambda rev: types.SimpleNamespace(MODELS={"set": SET, "egnn": SET}))
    monkeypatch.setattr(rb, "old_defaults", lambda old, names, device: {name: [] for name in names})
    monkeypatch.setattr(subprocess, "run", fake_run)
    args = argparse.Namespace(shipped="b1aceb6", batch=None, quick=True)
    lines = rb.run_shipped(args, log=lambda msg: None)
    assert sorted(set(calls)) == [(False, "1", False), (False, "1", True), (True, "0", False), (True, "0", True)]
    rows = [line for line in lines if line.startswith("| SET") or line.startswith("| EGNN")]
    assert [row.split(" | ")[4] for row in rows] == ["1.50x", "1.50x"]
