"""Shared fixtures (helpers live in cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One simulated-data cache for the whole test session (tiny data sets are reused)."""
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test process: the tensors are tiny, and pytest-xdist runs one worker per
    core (the subprocesses the tests start get OMP_NUM_THREADS=1 for the same reason)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
