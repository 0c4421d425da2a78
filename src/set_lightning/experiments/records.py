"""What a run leaves on disk, and what a run *is*: its identity, the hash of its resolved config.

A run directory holds (besides TensorBoard logs and ``checkpoints/``):

- ``run.json``: the :class:`~set_lightning.experiments.spec.RunSpec` the run was submitted with;
- ``result.json``: written last, atomically, by the worker: a run directory with it is finished;
- ``resolved_config.json``: the configuration the identity was computed from (to show what changed);
- ``job.json``: the cluster job that runs it (backend, job id, submitit folder), while one does.

**Identity.** A run is the SHA-256 of its fully resolved configuration: the packaged
``conf/defaults.yaml``, its ``--config`` files and overrides, as LightningCLI resolves them
(``fit --print_config`` shows the same), minus :data:`NON_RESULT_FIELDS` and the reporting-only
callbacks (:data:`NON_RESULT_CALLBACKS`), which change where a run logs and what it prints but not
its numbers. Editing ``defaults.yaml`` or a config file, or changing an argument, changes the
identity of every run it reaches, so a finished result can never be reused for a different config.
What the identity does not see: the code (a model change keeps the identity; start a new ``--out``)
and the hardware (``trainer.accelerator: auto`` is the same config on a CPU and on a GPU).

**A rename keeps identities.** A setting renamed since identities were first recorded is hashed under
the name it had then (:func:`renamed_fields`, from the models' ``renamed_args``: EGNN's ``residual`` is hashed as ``recurrent``), and its
deprecated alias, which the resolved config also holds (``null`` unless a config still uses the old
name), is folded into it: a config written with either name keeps the identity of the runs made
before the rename, and ``resolved_config.json`` records the old name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from set_lightning.errors import UserError
from set_lightning.files import append_jsonl, read_jsonl, write_text_atomic

RESULT_FILE = "result.json"
SPEC_FILE = "run.json"
RESOLVED_FILE = "resolved_config.json"
JOB_FILE = "job.json"
PER_TRAJ_FILE = "per_traj_test.json"
RESULTS_LOG = "results.jsonl"

#: dotted keys of the resolved config that do not change a run's results
NON_RESULT_FIELDS = (
    "config",  # the files' contents are in the resolved values
    "ckpt_path",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_autolog_hparams",
    "trainer.log_every_n_steps",
    "trainer.profiler",
    "trainer.model_registry",
    "data.cache_dir",
    "data.num_workers",
    "model.net.init_args.activation_checkpointing",  # SET's memory for compute trade: the same numbers
    "model.compile",  # the same math, rounded like another machine's (a ladder row records it with the machine)
)


def renamed_fields() -> dict[tuple[str, Optional[str]], str]:
    """Settings renamed since identities were first recorded: (the current dotted key, the class the
    ``class_path`` beside its ``init_args`` must name, or ``None`` for any) -> the key's last part as it was
    hashed (and is still accepted, as a deprecated alias) before the rename.

    Read from the registered models' ``renamed_args`` (EGNN: ``recurrent`` -> ``residual``), the one place a
    model's rename is recorded, so the identity follows every rename its model accepts.
    """
    from set_lightning.models.registry import MODELS

    return {(f"model.net.init_args.{new}", f"{cls.__module__}.{cls.__qualname__}"): old
            for cls in MODELS.values() for old, new in cls.renamed_args.items()}


#: callbacks that only report: progress bars, model summaries, the learning-rate monitor, prediction
#: files, the metrics CSV (and their subclasses)
NON_RESULT_CALLBACKS = (
    "lightning.pytorch.callbacks.ProgressBar",
    "lightning.pytorch.callbacks.ModelSummary",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.BasePredictionWriter",
    "set_lightning.callbacks.MetricsCSV",
)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Optional[Any]:
    """The JSON in ``path``; ``None`` when it does not exist or is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_result(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The finished run's result row, or ``None`` when the run has not finished."""
    result = read_json(Path(run_dir) / RESULT_FILE)
    return result if isinstance(result, dict) else None


# ---------------------------------------------------------------------- identity
def _reports_only(callback: Any) -> bool:
    from set_lightning.config_schema import import_class

    if not isinstance(callback, dict) or "class_path" not in callback:
        return False
    try:
        cls = import_class(callback["class_path"])
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, tuple(import_class(c) for c in NON_RESULT_CALLBACKS))


def _is_class(class_path: Any, owner: str) -> bool:
    """Whether ``class_path`` names ``owner`` or a subclass of it (a config may name it by any path)."""
    from set_lightning.config_schema import import_class

    try:
        cls = import_class(str(class_path))
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, import_class(owner))


def hashed_names(config: dict[str, Any]) -> None:
    """Put each renamed setting of ``config`` (plain JSON values, changed in place) back under the name
    it was hashed under (:func:`renamed_fields`); a value given under the old name wins, as in the model."""
    for (dotted, owner), old in renamed_fields().items():
        *parents, leaf = dotted.split(".")
        node: Any = config
        holder: Any = None  # the mapping whose init_args hold the setting
        for key in parents:
            if key == "init_args":
                holder = node
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if owner is not None and not (isinstance(holder, dict) and _is_class(holder.get("class_path"), owner)):
            continue
        value, alias = node.pop(leaf), node.pop(old, None)
        node[old] = value if alias is None else alias


def result_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that can change results, renamed settings under the names they are
    hashed under (see the module docstring)."""
    out = json.loads(json.dumps(resolved, default=str))  # a deep copy of plain JSON values
    hashed_names(out)
    for dotted in NON_RESULT_FIELDS:
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    trainer = out.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("callbacks"), list):
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not _reports_only(c)]
    return out


def config_identity(resolved: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(sha256 hex, the hashed config)`` of a resolved config."""
    kept = result_config(resolved)
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), kept


def dump_config(parser: Any, cfg: Any) -> dict[str, Any]:
    """A parsed LightningCLI config as plain JSON values (what ``--print_config`` prints)."""
    return json.loads(parser.dump(cfg, format="json"))


def config_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> list[str]:
    """``key: old -> new`` for the first ``limit`` dotted keys whose values differ."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]


class ConfigResolver:
    """Resolves runs' arguments to their full configurations with one parse-only CLI.

    It reads the packaged ``conf/defaults.yaml`` when it is built (one resolver per sweep);
    ``schema`` (:class:`~set_lightning.config_schema.ConfigSchema`) also checks a sweep's keys.
    """

    def __init__(self) -> None:
        from set_lightning.config_schema import ConfigSchema

        self.schema = ConfigSchema()

    def resolve(self, cli_args: Sequence[str], label: str = "") -> dict[str, Any]:
        """The resolved configuration of ``fit`` with ``cli_args``, as plain JSON values.

        Raises:
            UserError: the arguments do not parse (prefixed with ``label``).
        """
        cfg = self.schema.parse(list(cli_args), label or "arguments")
        return dump_config(self.schema.parser, cfg)


def write_identity(run_dir: Path, identity: str, kept: dict[str, Any]) -> None:
    """Record which configuration ``run_dir`` holds (``resolved_config.json``)."""
    write_json(Path(run_dir) / RESOLVED_FILE, {"config_sha256": identity, "config": kept})


def recorded_identity(run_dir: Path) -> dict[str, Any]:
    """``{"config_sha256", "config"}`` recorded in ``run_dir`` by the worker (empty when none is)."""
    recorded = read_json(Path(run_dir) / RESOLVED_FILE)
    return recorded if isinstance(recorded, dict) else {}


def stale_error(
    run_dir: Path, what: str, found: Optional[str], identity: str, kept: dict[str, Any]
) -> Optional[UserError]:
    """The error for ``run_dir`` holding ``what`` (a finished run, checkpoints) made with identity ``found``.

    ``None`` when ``found`` is ``identity``; else the error names the fields that changed.
    """
    if found == identity:
        return None
    old = recorded_identity(run_dir).get("config")
    changes = config_changes(old, kept) if isinstance(old, dict) else []
    detail = "; ".join(changes) if changes else "made before runs recorded their resolved config"
    return UserError(
        f"{run_dir} holds {what} made with another configuration ({detail}); pass another --out or delete "
        "that folder"
    )


def finished_result(run_dir: Path, identity: str, kept: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The run's result if it finished with this configuration; ``None`` if it has not finished.

    Raises:
        UserError: the run directory holds a result of another configuration (a changed
            ``defaults.yaml``, config file or argument): it is never silently reused.
    """
    result = read_result(run_dir)
    if result is None:
        return None
    err = stale_error(run_dir, "a finished run", result.get("config_sha256"), identity, kept)
    if err is not None:
        raise err
    return result


# ---------------------------------------------------------------------- job records
def write_job(run_dir: Path, backend: str, job_id: str, folder: Optional[Path] = None, **extra: Any) -> None:
    """Record the job that runs ``run_dir`` (so a re-run of the sweep does not submit it again)."""
    record = {"backend": backend, "job_id": str(job_id), "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "folder": str(folder) if folder else None, **extra}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / JOB_FILE, record)


def read_job(run_dir: Path) -> Optional[dict[str, Any]]:
    """The job record of ``run_dir``, or ``None``."""
    job = read_json(Path(run_dir) / JOB_FILE)
    return job if isinstance(job, dict) else None


#: SLURM job states in which a job may still produce its run's result
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE", "CONFIGURING", "COMPLETING", "SUSPENDED",
                       "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN")


def _process_running(pid: int, marker: str) -> bool:
    """Whether process ``pid`` is alive and its command line holds ``marker`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc: trust the signal check
    if "State:\tZ" in status:
        return False  # exited, not yet reaped
    return marker in cmdline or not cmdline.strip()  # an empty command line: the process is still starting


def job_active(record: dict[str, Any]) -> bool:
    """Whether the job of a ``job.json`` record is pending or running (so its run must not be submitted again).

    ``local`` and ``submitit-local`` jobs are processes on this machine (their pid); ``slurm`` jobs
    are asked of SLURM through submitit (a state SLURM cannot tell yet counts as active).
    """
    backend, job_id = record.get("backend"), str(record.get("job_id", ""))
    if backend == "local" and job_id.isdigit():
        return _process_running(int(job_id), "set_lightning.experiments.worker")
    if backend == "submitit-local" and job_id.isdigit():
        return _process_running(int(job_id), "submitit")
    if backend == "slurm":
        import submitit

        state = submitit.SlurmJob(folder=record.get("folder") or ".", job_id=job_id).state.upper()
        return state.split()[0] in ACTIVE_SLURM_STATES
    return False


# ---------------------------------------------------------------------- the sweep's results file
class ResultsLog:
    """``results.jsonl``: one row per finished run, in the order the runs finished.

    :meth:`start` rewrites it (atomically) with the rows already finished; :meth:`append` adds one
    whole line per run as it finishes (flushed and fsynced: a killed sweep never leaves half a row).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def start(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = sorted(rows, key=lambda r: r.get("finished_at") or "")
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def append(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path, [row])

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)
