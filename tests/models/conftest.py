"""Fixtures for the model tests (helpers live in model_helpers.py)."""

from __future__ import annotations

import pytest

from model_helpers import random_inputs


@pytest.fixture
def inputs():
    return random_inputs()
