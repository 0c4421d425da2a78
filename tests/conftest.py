"""Shared fixtures (helpers live in cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One simulated-data cache for the whole test session (tiny data sets are reused)."""
    return tmp_path_factory.mktemp("data_cache")
