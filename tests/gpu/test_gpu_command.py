"""The GPU command exists and, without a GPU, skips cleanly: nothing measured, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cli_helpers import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: benchmarks/gpu.py would run for real")
def test_gpu_command_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.md"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--output", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped: no CUDA device" in res.stdout and not out.exists()
