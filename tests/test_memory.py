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


def test_the_heap_is_never_trimmed(monkeypatch):
    """mmap off and trimming off (-1, not a finite threshold: at N = 30 a 2 GiB one still gave the freed top
    of the heap back every step, 0.7 million page faults per step)."""
    from set_lightning import memory

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def gnu_get_libc_version(self) -> bytes:
            return b"2.99"

        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.delenv("SET_LIGHTNING_KEEP_HEAP", raising=False)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: FakeLibc())
    assert memory.keep_freed_memory() is True
    assert sorted(calls) == sorted([(memory._M_MMAP_MAX, 0), (memory._M_TRIM_THRESHOLD, -1)])


RELEASE_CODE = """
import set_lightning.models, set_lightning.memory as m, torch
def rss_mib():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
x = torch.ones(64 * 2**20)  # 256 MiB, from the heap (no mmap)
del x
before = rss_mib()
m.release_freed_memory()
print(before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_release_freed_memory_gives_a_freed_peak_back():
    """Kept by default (the heap is never trimmed), given back on request: a process that runs one
    workload after another (speed.py) must not pile up its peaks."""
    if _applied(None) != "True":
        pytest.skip("not glibc: the heap setting is not applied")
    out = subprocess.run([sys.executable, "-c", RELEASE_CODE], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) > 200  # MiB given back of the 256 freed
