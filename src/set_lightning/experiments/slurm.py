"""Cluster backends on submitit: ``--backend slurm`` (and ``submitit-local``, the same path on this machine).

One job array per sweep (per resource shape, if the runs ask for different resources), submitted
with ``executor.map_array``. Each array task runs :class:`RunJob` on one
:class:`~set_lightning.experiments.spec.RunSpec`; its resources come from the run's resolved
trainer config (:func:`resources`): ``nodes = trainer.num_nodes``, ``tasks_per_node =
trainer.devices`` and ``gpus_per_node = trainer.devices`` on GPUs. srun starts one task per device,
so Lightning's ``SLURMEnvironment`` sets up DDP from SLURM's variables.

Requeue: submitit signals the job before its time limit (and SLURM on preemption); on global rank 0
:meth:`RunJob.checkpoint` saves Lightning's ``hpc_ckpt_<k>.ckpt`` (single-process runs; a DDP run
resumes from its last epoch's ``last.ckpt``) and resubmits the same run, which resumes from the
newest of the two. Lightning's own SLURM auto-requeue is switched off in these workers
(``SLURMEnvironment(auto_requeue=False)``), so only one mechanism requeues.

Each run's job is recorded in ``run_dir/job.json`` (:func:`~set_lightning.experiments.records.write_job`):
a re-run of the sweep does not submit a run again while its job is pending or running.

:func:`sbatch_script` writes the same array as a plain sbatch script for ``--print-commands slurm``
(no submitit needed); there Lightning's own auto-requeue acts (``--signal=USR1@90``).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lightning.pytorch.callbacks import Callback

from set_lightning.errors import UserError
from set_lightning.experiments.local import log_tail, requested_devices
from set_lightning.experiments.records import job_active, read_job, read_result, write_job
from set_lightning.experiments.spec import RunSpec

try:
    import submitit
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # the [slurm] extra is optional: only the submitit backends need it
    submitit = None
    Checkpointable, DelayedSubmission = object, None  # type: ignore[assignment,misc]

#: the default job time limit (minutes) when the ablation file's ``slurm`` section names none
DEFAULT_TIME_MIN = 240
OnDone = Callable[[RunSpec, Optional[dict[str, Any]], str], None]


def _need_submitit() -> None:
    if submitit is None:
        raise UserError("--backend slurm needs submitit: pip install 'set_lightning[slurm]' (or pip install submitit)")


def resources(trainer: dict[str, Any], on_cluster: bool = True, n_gpus: int = 0) -> dict[str, int]:
    """submitit resources of a run from its resolved ``trainer`` config.

    On a cluster: ``nodes = num_nodes``, ``tasks_per_node = devices`` (srun starts one process per
    device) and ``gpus_per_node = devices`` unless ``trainer.accelerator`` is ``cpu``.
    On this machine (``on_cluster=False``, submitit's local executor): one task (Lightning starts its
    own DDP processes) with ``devices`` of the ``n_gpus`` GPUs visible.
    """
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        raise UserError(f"trainer.devices: cluster runs need a number of devices per node, got {devices!r}")
    count = requested_devices(trainer, 0)
    gpu = accelerator in ("auto", "gpu", "cuda")
    if not on_cluster:
        nodes = int(trainer.get("num_nodes", 1))
        if nodes != 1:
            raise UserError(f"trainer.num_nodes: the local executor runs on one node, got {nodes}")
        return {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": count if gpu and n_gpus else 0}
    return {"nodes": int(trainer.get("num_nodes", 1)), "tasks_per_node": count, "gpus_per_node": count if gpu else 0}


class _TrainerHandle(Callback):
    """Lets :class:`RunJob` reach the running trainer (to checkpoint it when the job is signalled)."""

    def __init__(self, owner: "RunJob") -> None:
        self.owner = owner

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.owner._trainer = trainer


def next_hpc_path(run_dir: Path) -> Path:
    """``run_dir/hpc_ckpt_<k+1>.ckpt``: Lightning's name and place for a SLURM requeue checkpoint."""
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.stem.rsplit("_", 1)[1].isdigit()]
    return run_dir / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class RunJob(Checkpointable):
    """What one array task runs: the worker on one run; resubmitted on timeout or preemption."""

    def __init__(self) -> None:
        self._trainer: Any = None

    def __call__(self, spec: RunSpec) -> Optional[dict[str, Any]]:
        from set_lightning.experiments import worker

        return worker.run(spec, callbacks=[_TrainerHandle(self)], lightning_requeue=False)

    def checkpoint(self, spec: RunSpec) -> Any:
        """Save an hpc checkpoint of a single-process fit in progress, then resubmit the same run."""
        trainer = self._trainer
        # a running fit (its validation loops included): after fit, or while testing, last.ckpt is the state
        fitting = trainer is not None and trainer.state.fn == "fit" and trainer.state.status == "running"
        if fitting and trainer.world_size == 1:
            path = next_hpc_path(spec.run_dir)
            trainer.save_checkpoint(str(path))
            print(f"requeue: saved {path}", flush=True)
        return DelayedSubmission(RunJob(), spec)

    def __getstate__(self) -> dict[str, Any]:
        return {"_trainer": None}


def make_executor(folder: Path, backend: str, params: dict[str, Any]) -> Any:
    """A submitit executor for ``backend`` (``slurm`` or ``submitit-local``) with the ``slurm`` section's parameters."""
    _need_submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if backend == "submitit-local" else "slurm")
    params = dict(params)
    params.setdefault("timeout_min", DEFAULT_TIME_MIN)
    executor.update_parameters(**params)
    return executor


def submit(
    runs: Sequence[RunSpec], trainers: Sequence[dict[str, Any]], backend: str, folder: Path, name: str,
    params: dict[str, Any],
) -> list[tuple[RunSpec, Any]]:
    """Submit ``runs`` as one job array per resource shape; record each run's job; return (run, job) pairs."""
    import torch

    _need_submitit()
    on_cluster = backend == "slurm"
    n_gpus = 0 if on_cluster else torch.cuda.device_count()
    groups: dict[tuple, list[RunSpec]] = {}
    for run, trainer in zip(runs, trainers):
        key = tuple(sorted(resources(trainer, on_cluster, n_gpus).items()))
        groups.setdefault(key, []).append(run)
    submitted = []
    for key, members in groups.items():
        executor = make_executor(folder, backend, {**params, "name": name, **dict(key)})
        for run in members:
            run.save()
        jobs = executor.map_array(RunJob(), members)
        for run, job in zip(members, jobs):
            write_job(run.run_dir, backend, job.job_id, folder, stdout=str(job.paths.stdout),
                      stderr=str(job.paths.stderr))
            submitted.append((run, job))
    return submitted


def watch(
    own: Sequence[tuple[RunSpec, Any]], others: Sequence[RunSpec], on_done: OnDone, poll_s: float = 2.0,
) -> None:
    """Wait for jobs; call ``on_done`` as each run finishes (or fails, with its log tail).

    ``own``: (run, submitit job) pairs submitted by this process; ``others``: runs whose recorded
    job (``job.json``) was already pending or running, submitted by an earlier invocation.
    """
    pending_own = list(own)
    pending_other = list(others)
    while pending_own or pending_other:
        still = []
        for run, job in pending_own:
            if not job.done():
                still.append((run, job))
                continue
            on_done(run, *_outcome(run, job))
        pending_own = still
        still_other = []
        for run in pending_other:
            record = read_job(run.run_dir) or {}
            if read_result(run.run_dir) is None and record and job_active(record):
                still_other.append(run)
                continue
            on_done(run, *_outcome(run, None))
        pending_other = still_other
        if pending_own or pending_other:
            time.sleep(poll_s)


def _outcome(run: RunSpec, job: Any) -> tuple[Optional[dict[str, Any]], str]:
    result = read_result(run.run_dir)
    if result is not None:
        return result, ""
    record = read_job(run.run_dir) or {}
    reason = ""
    if job is not None:
        try:
            err = job.exception()
        except Exception as exc:  # noqa: BLE001 - the job's own state could not be read
            err = exc
        reason = (str(err).strip().splitlines() or [""])[-1] if err is not None else f"job state {job.state}"
    tail = log_tail(Path(record["stderr"])) if record.get("stderr") else ""
    message = f"job {record.get('job_id', '?')} ended without a result" + (f" ({reason})" if reason else "")
    return None, message + (f"; log tail ({record['stderr']}):\n{tail}" if tail else "")


def sbatch_script(
    runs: Sequence[RunSpec], trainers: Sequence[dict[str, Any]], name: str, log_dir: Path, params: dict[str, Any],
    python: str = sys.executable,
) -> str:
    """One sbatch job-array script for ``runs`` (which must all ask for the same resources).

    Each array task is ``srun python -m set_lightning.experiments.worker RUN_DIR``: one task per
    device, DDP through Lightning's SLURM environment, Lightning's own requeue on ``USR1`` 90 s
    before the time limit (it saves ``hpc_ckpt_<k>.ckpt``; the requeued task resumes from it).
    """
    shapes = {tuple(sorted(resources(t).items())) for t in trainers}
    if len(shapes) != 1:
        raise UserError(
            f"the runs ask for {len(shapes)} different resource shapes "
            f"({'; '.join(sorted(', '.join(f'{k}={v}' for k, v in s) for s in shapes))}); "
            "one script holds one shape: split the ablation file, or use --backend slurm (one array per shape)"
        )
    res = dict(next(iter(shapes)))
    array = f"0-{len(runs) - 1}" + (f"%{params['slurm_array_parallelism']}" if params.get("slurm_array_parallelism") else "")
    lines = [
        "#!/bin/bash",
        f"# {len(runs)} runs of sweep {name} as one job array (python -m set_lightning sweep ... --print-commands slurm)",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={res['nodes']}",
        f"#SBATCH --ntasks-per-node={res['tasks_per_node']}",
    ]
    if res["gpus_per_node"]:
        lines.append(f"#SBATCH --gres=gpu:{res['gpus_per_node']}")
    options = {"cpus_per_task": "--cpus-per-task={}", "slurm_partition": "--partition={}",
               "slurm_account": "--account={}", "slurm_qos": "--qos={}", "slurm_constraint": "--constraint={}",
               "mem_gb": "--mem={}G"}
    lines += [f"#SBATCH {fmt.format(params[k])}" for k, fmt in options.items() if params.get(k) is not None]
    lines += [
        f"#SBATCH --time={int(params.get('timeout_min', DEFAULT_TIME_MIN))}",
        "#SBATCH --signal=USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log_dir}/%A_%a.out",
        *[str(s) for s in params.get("slurm_setup") or []],
        "RUNS=(",
        *[f"  {shlex.quote(str(r.run_dir))}" for r in runs],
        ")",
        f"cd {shlex.quote(str(runs[0].root))}",
        f'srun {shlex.quote(python)} -m set_lightning.experiments.worker "${{RUNS[$SLURM_ARRAY_TASK_ID]}}"',
        "",
    ]
    return "\n".join(lines)
