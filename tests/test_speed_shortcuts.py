"""`speed.py --shortcuts`: each shortcut is timed against the computation it replaces, on models with the same
parameters; the settings it forces are restored afterwards."""

from pathlib import Path

import pytest
import torch

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


def test_edge_path_forces_the_store_less_path_or_none_and_restores_the_threshold(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    from speed import edge_path

    from set_lightning.models import fused

    before = fused.STORE_LESS_ELEMENTS
    with edge_path(True):
        assert fused.STORE_LESS_ELEMENTS == 0
    with edge_path(False):
        assert fused.STORE_LESS_ELEMENTS > 1e15
    with pytest.raises(RuntimeError), edge_path(True):
        raise RuntimeError
    assert fused.STORE_LESS_ELEMENTS == before


def test_the_shortcut_and_the_every_frame_model_share_parameters_and_predictions(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    from speed import ContextStepper, as_built, max_prediction_gap
    from step_harness import Case

    from set_lightning.models.base import every_output_computed

    shape = ["--data.history=3", "--data.n_particles=4", "--data.batch_size=2",
             "--model.net.init_args.hidden=16", "--model.net.init_args.temporal_attention=false"]
    full = ContextStepper(Case("set", shape), torch.device("cpu"), every_output_computed)
    short = ContextStepper(Case("set", shape), torch.device("cpu"), as_built)
    with torch.no_grad():
        for p in short.module.net.parameters():
            p.add_(torch.randn_like(p))  # unlike the every-frame model's: the gap must be measured after copying
    assert max_prediction_gap(short, full) < 1e-5
    assert all(torch.equal(p, q) for p, q in zip(short.module.net.parameters(), full.module.net.parameters()))
    assert short.module.training and full.module.training  # eval only for the comparison
    assert full.module.net.skip_unread and short.module.net.skip_unread  # the context left the models as built
