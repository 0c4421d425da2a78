"""Shared data generation: K processes asking for one split simulate it once; the key covers the code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import set_lightning.data.cache as cache_mod
import set_lightning.data.specs as specs_mod
from set_lightning.data import TrajectorySpec, load_or_generate

HERE = Path(__file__).resolve().parent


def test_two_processes_asking_for_one_split_simulate_it_once(tmp_path):
    marker, go = tmp_path / "simulations.txt", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, str(HERE / "cache_lock_script.py"), str(tmp_path / "cache"),
                               str(marker), str(go)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.time() + 240
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.time() < deadline:
        assert all(p.poll() is None for p in procs), "a process died before asking"
        time.sleep(0.05)
    go.touch()  # both ask now; one simulation takes 2 s, so without a lock both would simulate
    outs = [p.communicate(timeout=240)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(marker.read_text().splitlines()) == 1  # simulated once
    assert outs[0] == outs[1] and len(outs[0]) == 64  # and both got the same, verified data
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_the_cache_key_covers_the_simulator_code(tmp_path, monkeypatch):
    spec = TrajectorySpec(split="val", count=2, n_particles=3, steps=300, sample_freq=100)
    load_or_generate(spec, tmp_path)
    assert spec.metadata()["simulator_code"] == cache_mod.SIMULATOR_CODE
    calls = []
    real = cache_mod.generate_trajectories
    monkeypatch.setattr(cache_mod, "generate_trajectories", lambda s: calls.append(s) or real(s))
    load_or_generate(spec, tmp_path)
    assert calls == []  # same code: the cached file is used
    old_name = spec.filename()
    monkeypatch.setattr(specs_mod, "SIMULATOR_CODE", "0123456789abcdef")  # as if simulator.py changed
    assert spec.filename() != old_name
    load_or_generate(spec, tmp_path)
    assert calls == [spec]  # the old file is not reused


def test_the_code_digest_ignores_comments_but_not_code(tmp_path, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    digests = {}
    for name, body in (("a", "def f(x):\n    return x + 1\n"), ("b", "# a comment\ndef f(x):\n\n    return x + 1  # same\n"),
                       ("c", "def f(x):\n    return x + 2\n")):
        (tmp_path / f"physics_{name}.py").write_text(body)
        digests[name] = specs_mod._code_digest(importlib.import_module(f"physics_{name}").f)
    assert digests["a"] == digests["b"] != digests["c"]
