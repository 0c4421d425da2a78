"""The local runner (finish order, GPU slices), job records, and the SLURM job-array script."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import TINY, write_spec

from set_lightning.errors import UserError
from set_lightning.experiments import local
from set_lightning.experiments.records import ResultsLog, job_active, write_job
from set_lightning.experiments.spec import RunSpec, load_spec
from set_lightning.experiments.sweep import Progress, plan
from set_lightning.experiments.sweep import main as sweep_main


def test_gpu_slices_give_each_run_its_own_gpus():
    assert local.gpu_slices(8, 4, [2, 1]) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert local.gpu_slices(8, 3) == [[0, 1], [2, 3], [4, 5]]  # the 7th and 8th GPUs stay idle
    assert local.gpu_slices(4, 1, [4]) == [[0, 1, 2, 3]]
    with pytest.raises(UserError, match="--parallel 3 needs at least 3 GPUs"):
        local.gpu_slices(2, 3)
    with pytest.raises(UserError, match=r"trainer.devices=4.*gives each run 2; lower --parallel to 2"):
        local.gpu_slices(8, 4, [4])
    # through a CUDA_VISIBLE_DEVICES the sweep itself was given
    assert local.visible_devices([2, 3], {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "6,7"
    assert local.visible_devices([2, 3], {}) == "2,3"
    assert local.requested_devices({"devices": "auto"}, 4) == 4
    assert local.requested_devices({"devices": "2"}, 4) == 2
    assert local.requested_devices({"devices": [0, 1]}, 4) == 2


def test_runs_per_gpu_share_each_slice(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(local, "_execute", lambda run, env: seen.append((env[local.GPU_SHARED_ENV],
                                                                         env["CUDA_VISIBLE_DEVICES"]))
                        or time.sleep(0.2) or (run, {"test_pos_mse": 0.0}, ""))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = [{"accelerator": "auto", "devices": 1}]
    local.run_local(_fake_runs(tmp_path, 4), gpu * 4, 4, 1, on_done=lambda *a: None, n_gpus=2, runs_per_gpu=2)
    assert sorted(g for _, g in seen) == ["0", "0", "1", "1"]  # 4 at once: two on each GPU
    assert {shared for shared, _ in seen} == {"2"}  # and each run is told so (its seconds are shared time)
    seen.clear()
    local.run_local(_fake_runs(tmp_path, 3), gpu * 3, 3, 1, on_done=lambda *a: None, n_gpus=1, runs_per_gpu=3)
    assert [g for _, g in seen] == ["0", "0", "0"]
    with pytest.raises(UserError, match="--parallel 4 with --runs-per-gpu 2 needs 2 GPUs.*raise --runs-per-gpu to 4"):
        local.run_local(_fake_runs(tmp_path, 1), gpu, 4, 1, on_done=lambda *a: None, n_gpus=1, runs_per_gpu=2)
    with pytest.raises(UserError, match="--runs-per-gpu must be >= 1, got 0"):
        local.run_local(_fake_runs(tmp_path, 1), gpu, 1, 1, on_done=lambda *a: None, n_gpus=1, runs_per_gpu=0)


def _fake_runs(tmp_path, n):
    return [RunSpec(f"v{i}", 0, tmp_path / f"v{i}" / "seed_0", tmp_path) for i in range(n)]


def test_parallel_runs_see_disjoint_gpus_and_rows_arrive_in_finish_order(tmp_path, monkeypatch):
    runs = _fake_runs(tmp_path, 4)
    seconds = {"v0": 1.2, "v1": 0.1, "v2": 0.6, "v3": 0.1}
    running: dict[str, str] = {}
    overlaps = []
    lock = threading.Lock()

    def fake_execute(run, env):  # stands in for the worker process
        gpus = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            overlaps.extend((gpus, other) for other in running.values() if set(gpus.split(",")) & set(other.split(",")))
            running[run.variant] = gpus
        time.sleep(seconds[run.variant])
        with lock:
            del running[run.variant]
        return run, {"variant": run.variant, "test_pos_mse": 0.1, "gpus": gpus}, ""

    monkeypatch.setattr(local, "_execute", fake_execute)
    log = ResultsLog(tmp_path / "results.jsonl")
    log.start([])
    progress = Progress(log)
    trainers = [{"accelerator": "gpu", "devices": 2}] * 4
    local.run_local(runs, trainers, parallel=2, threads=1, on_done=progress, n_gpus=4)
    rows = log.rows()
    # 2 slots: v0 (1.2 s) and v1 (0.1 s) start; v2 (0.6 s) takes v1's slot, then v3 (0.1 s) takes v2's
    assert [r["variant"] for r in rows] == ["v1", "v2", "v3", "v0"]  # as they finished, not as submitted
    assert {r["gpus"] for r in rows} <= {"0,1", "2,3"} and not overlaps
    assert not progress.failures


def test_cpu_runs_get_no_gpu_slices(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(local, "_execute", lambda run, env: seen.append(env.get("CUDA_VISIBLE_DEVICES")) or
                        (run, {"test_pos_mse": 0.0}, ""))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    local.run_local(_fake_runs(tmp_path, 2), [{"accelerator": "cpu", "devices": 1}] * 2, 2, 1,
                    on_done=lambda *a: None, n_gpus=4)
    assert seen == [None, None]


def test_a_run_whose_job_is_running_is_not_run_again(tmp_path):
    spec = load_spec(write_spec(tmp_path, {"name": "s", "seeds": [0, 1], "variants": {"a": {}}}))
    out = tmp_path / "out"
    first, second = plan(spec, out)
    # a live process that looks like a submitit job
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    deadline = time.time() + 30
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.time() < deadline:
        time.sleep(0.01)  # until the child has exec'd (an empty command line counts as "starting")
    try:
        write_job(first.run.run_dir, "submitit-local", str(proc.pid))
        assert job_active({"backend": "submitit-local", "job_id": str(proc.pid)})
        assert not job_active({"backend": "local", "job_id": str(proc.pid)})  # not a worker process
        states = [p.state for p in plan(spec, out)]
        assert states == [f"job {proc.pid}", "todo"]
    finally:
        proc.kill()
        proc.wait()
    assert [p.state for p in plan(spec, out)] == ["todo", "todo"]  # the job died without a result: run it


def test_print_commands_slurm_writes_a_job_array_script(tmp_path, capsys):
    overrides = {**TINY, "trainer.accelerator": "gpu", "trainer.devices": 4, "trainer.num_nodes": 2,
                 "trainer.strategy": "ddp"}
    path = write_spec(tmp_path, {"name": "big", "seeds": [0, 1], "overrides": overrides,
                                 "variants": {"a": {}, "b": {"model.lr": 0.01}},
                                 "slurm": {"partition": "gpu", "time_min": 600, "cpus_per_task": 8}})
    out = tmp_path / "out"
    sweep_main([str(path), "--out", str(out), "--print-commands", "slurm"])
    script = capsys.readouterr().out
    for line in ("#SBATCH --array=0-3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4",
                 "#SBATCH --signal=USR1@90", "#SBATCH --partition=gpu", "#SBATCH --time=600",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --requeue"):
        assert line in script.splitlines(), line
    assert 'srun ' in script and '-m set_lightning.experiments.worker "${RUNS[$SLURM_ARRAY_TASK_ID]}"' in script
    run_dirs = [line.strip() for line in script.split("RUNS=(")[1].split(")")[0].splitlines() if line.strip()]
    assert len(run_dirs) == 4
    for d in run_dirs:  # each array task reads its run from run.json
        assert RunSpec.load(d).run_dir.as_posix() == d
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    sweep_main([str(path), "--out", str(out), "--print-commands"])
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 4 and all("set_lightning.experiments.worker" in c for c in commands)


def test_a_script_needs_one_resource_shape(tmp_path):
    path = write_spec(tmp_path, {"name": "mixed", "seeds": [0], "overrides": {"trainer.accelerator": "gpu"},
                                 "variants": {"one": {}, "two": {"trainer.devices": 2}}})
    with pytest.raises(UserError, match="2 different resource shapes"):
        sweep_main([str(path), "--out", str(tmp_path / "out"), "--print-commands", "slurm"])
