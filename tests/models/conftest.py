"""Fixtures for the model tests (helpers live in model_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from model_helpers import random_inputs


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and immune to a busy second core)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def inputs():
    return random_inputs()
