"""Process-wide allocator setting for CPU training: keep freed memory instead of returning it to the OS.

A training step allocates and frees the same large activation tensors every step (an EGCL edge tensor
is 5 MB at N = 5, 100 MB at N = 20). glibc's malloc serves such blocks with ``mmap`` and unmaps them on
``free``, so every step faults in fresh zeroed pages again (about 13k-28k minor page faults per SET step
at N = 5, B = 100, L = 10). :func:`keep_freed_memory` makes glibc serve all blocks from its heap and
never trim it, so freed blocks are reused: the same arithmetic, fewer page faults (``speed.py
--allocator`` in ``results/speed.md``: the larger the step's tensors, the larger the gain). The price
is that the process keeps its peak memory until it exits, as PyTorch's CUDA caching allocator does on
a GPU.

It is applied when :mod:`set_lightning.models` is imported, on Linux with glibc only; set the environment
variable ``SET_LIGHTNING_KEEP_HEAP=0`` to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to take every block from its heap (no ``mmap``) and never to trim the heap
    (``M_TRIM_THRESHOLD = -1``, as ``mallopt(3)`` documents). Idempotent; returns whether it is in effect.

    A finite threshold is not enough: with 2 GiB, a SET step at N = 30 (4.3 GiB of activations) still
    gave the freed top of its heap back on most steps, 0.3-0.7 million minor page faults per step against
    1 without trimming, and 1.3-1.7x the CPU time (median 8.6 and 11.4 s against 6.8 and 6.7 s, two
    alternated pairs of processes, B = 100, one thread, AVX-512 EPYC)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    libc = None if os.environ.get("SET_LIGHTNING_KEEP_HEAP", "1") == "0" else _glibc()
    if libc is None:
        return False
    try:
        _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except AttributeError:
        _applied = False
    return _applied


def release_freed_memory() -> bool:
    """Give the heap's free memory back to the OS now (glibc's ``malloc_trim(0)``; after a ``gc.collect()``).

    With :func:`keep_freed_memory` a process keeps the peak of its largest step until it exits. A
    process that goes on to other work (a benchmark between its parts, from one model or shape to the
    next) calls this so that the peaks do not pile up: ``speed.py`` reached 16 GiB and was killed for
    memory before it did. Returns whether memory was released (False off glibc).
    """
    import gc

    gc.collect()
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc on Linux (its ``mallopt`` parameters and ``malloc_trim``); else None
    (e.g. musl, whose malloc differs)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None
