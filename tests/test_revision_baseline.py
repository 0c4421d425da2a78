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
