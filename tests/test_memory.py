"""The allocator setting applied on importing the models (set_lightning.memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "import set_lightning.models, set_lightning.memory as m; print(m.keep_freed_memory())"


def _applied(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SET_LIGHTNING_KEEP_HEAP"}
    if env_value is not None:
        env["SET_LIGHTNING_KEEP_HEAP"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_is_on_by_default_and_can_be_turned_off():
    import ctypes
    import ctypes.util

    glibc = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "gnu_get_libc_version")
    assert _applied(None) == str(glibc)
    assert _applied("0") == "False"
