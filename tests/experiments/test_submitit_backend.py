"""The cluster backend end to end, through submitit's local executor (the code path of --backend slurm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import TINY, importing_from, kill_after_first_result, write_spec

from set_lightning.experiments.records import read_job
from set_lightning.experiments.sweep import run_sweep

pytest.importorskip("submitit")


def _sweep(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "set_lightning", "sweep", str(spec), "--out", str(out),
            "--backend", "submitit-local", *extra]


HERE = Path(__file__).resolve().parent


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def test_kill_after_the_first_finished_run_then_resume_redoes_nothing(tmp_path, data_cache):
    gate = tmp_path / "gate_open"  # the "held" run waits at its first step until this file exists
    spec = write_spec(tmp_path, {
        "name": "tiny", "seeds": [0], "reference": "fast",
        "overrides": {**TINY, "data.cache_dir": str(data_cache)},
        "variants": {"fast": {}, "held": {"trainer.callbacks": [
            {"class_path": "gate_callback.WaitForFile", "init_args": {"path": str(gate)}}]}},
    })
    out = tmp_path / "runs"
    path = importing_from(HERE)  # the jobs import gate_callback
    # submit both runs (two local jobs at once); kill the sweep and its jobs when the fast one has finished
    finished = kill_after_first_result(_sweep(spec, out), tmp_path, out, env=path)
    assert [p.parent.parent.name for p in finished] == ["fast"]
    before = {p: p.stat().st_mtime_ns for p in finished}
    jobs = {p.parent: read_job(p.parent)["job_id"] for p in out.rglob("job.json")}
    assert len(jobs) == 2  # every run was submitted, with its job recorded

    gate.touch()
    res = subprocess.run(_sweep(spec, out), cwd=tmp_path, env=_env(**path), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "1 finished, 1 to run" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == before  # finished runs were not redone
    for run_dir, job_id in jobs.items():  # only the unfinished runs were submitted again
        again = read_job(run_dir)["job_id"] != job_id
        assert again == (run_dir / "result.json" not in before)
    rows = [json.loads(line) for line in (out / "tiny" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("fast", 0), ("held", 0)]
    assert all(0 < r["test_pos_mse"] < 10 for r in rows)
    assert "| held |" in (out / "tiny" / "report.md").read_text()


def test_a_failing_variant_is_reported_with_its_log_while_the_others_finish(tmp_path, data_cache):
    spec = write_spec(tmp_path, {
        "name": "mixed", "seeds": [0], "reference": "ok",
        "overrides": {**TINY, "data.cache_dir": str(data_cache)},
        "variants": {"ok": {}, "broken": {"data.history": 40}},  # parses, then fails in the job
    })
    out = tmp_path / "runs"
    res = subprocess.run(_sweep(spec, out), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "FAILED broken seed=0" in res.stderr and "history must be in 1..31" in res.stderr  # the log tail
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 run(s) failed")
    assert (out / "mixed" / "ok" / "seed_0" / "result.json").is_file()
    assert not (out / "mixed" / "broken" / "seed_0" / "result.json").exists()
    rows = [json.loads(line) for line in (out / "mixed" / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["ok"]


def test_detach_submits_and_returns(tmp_path, data_cache, capsys):
    spec = write_spec(tmp_path, {"name": "d", "seeds": [0], "overrides": {**TINY, "data.cache_dir": str(data_cache)},
                                 "variants": {"a": {}}})
    out = tmp_path / "runs"
    res = subprocess.run(_sweep(spec, out, "--detach"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "detached: 1 job(s)" in res.stdout and "--report-only" in res.stdout
    run_dir = out / "d" / "a" / "seed_0"
    job = read_job(run_dir)
    assert job["backend"] == "submitit-local"
    # a second invocation submits nothing: the job is pending or running (or has finished meanwhile)
    assert run_sweep(spec, out, backend="submitit-local", detach=True) == []
    said = capsys.readouterr().out
    assert "1 running or pending as jobs, 0 to run" in said or "1 finished, 0 to run" in said
    assert read_job(run_dir)["job_id"] == job["job_id"]
    deadline = time.time() + 300
    while not (run_dir / "result.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    report = subprocess.run([sys.executable, "-m", "set_lightning", "sweep", str(spec), "--out", str(out),
                             "--report-only"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (out / "d" / "report.md").is_file() and read_job(run_dir)["job_id"] == job["job_id"]
