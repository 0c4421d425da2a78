"""Ablation sweeps: ``python -m set_lightning sweep ablations/<file>.yaml [--backend local|slurm] ...``.

The file (:mod:`set_lightning.experiments.spec`) expands to one run per (variant, grid point, seed);
every key is checked against the configuration schema before any run starts (a typo names the key
and the closest valid one). Each run lives
in its own directory ``<out>/<name>/<run id>/seed_<s>``, trained and tested by the worker
(:mod:`set_lightning.experiments.worker`). Each run's identity is the hash of its resolved config
(:mod:`set_lightning.experiments.records`): a finished run with the same identity is skipped, one
made with another config (an edited ``defaults.yaml``, config file or argument) is refused; an
interrupted run resumes from its newest checkpoint. So a sweep killed half-way resumes without
losing or redoing finished runs.

Backends: ``local`` (default; worker processes on this machine, ``--parallel K`` at a time, each with
its own GPUs), ``slurm`` (one submitit job array; ``--detach`` submits and returns), and
``submitit-local`` (the cluster path on this machine, through submitit's local executor).
``--print-commands`` prints one shell command per unfinished run, or with ``slurm`` an sbatch
job-array script, for other schedulers. Results: ``<out>/<name>/results.jsonl`` (one row per run, in
the order runs finish) and the report (``report.md``, ``report.png``; :mod:`set_lightning.experiments.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from set_lightning.errors import UserError
from set_lightning.experiments.records import (
    RESULTS_LOG,
    ConfigResolver,
    ResultsLog,
    config_identity,
    finished_result,
    job_active,
    read_job,
)
from set_lightning.experiments.spec import RunSpec, SweepSpec, expand, load_spec

BACKENDS = ("local", "slurm", "submitit-local")


@dataclass
class Planned:
    """A run of the sweep with its resolved config and state."""

    run: RunSpec
    config: dict[str, Any]
    identity: str
    result: Optional[dict[str, Any]] = None  # finished with this identity
    job: Optional[dict[str, Any]] = None  # its job is pending or running

    @property
    def state(self) -> str:
        if self.result is not None:
            return "done"
        return f"job {self.job['job_id']}" if self.job is not None else "todo"


def check_keys(spec: SweepSpec, runs: Sequence[RunSpec], schema: Any) -> None:
    """Check every key of the ablation file against ``schema`` (:class:`~set_lightning.config_schema.ConfigSchema`).

    Raises:
        UserError: naming the file, where the key is (``overrides``, ``grid`` or the variant), the key
            and the closest valid one.
    """
    seen = set()
    for run in runs:
        if run.group in seen:
            continue
        seen.add(run.group)
        args = run.cli_args()
        variant = {k: v for k, v in spec.variants[run.variant].items() if k != "config"}
        for where, keys in (("overrides", spec.overrides), ("grid", spec.grid), (f"variant '{run.variant}'", variant)):
            for key in keys:
                others = [a for a in args if not a.startswith(f"--{key}=")]
                schema.check_key(str(key), others, f"{spec.path}: {where}")


def plan(spec: SweepSpec, out_dir: str | Path) -> list[Planned]:
    """Every run of the sweep, its keys checked, resolved, and checked against what its directory holds.

    Raises:
        UserError: an unknown key, a run's arguments that do not parse, or a run directory that holds
            a finished run of another configuration.
    """
    resolver = ConfigResolver()
    runs = expand(spec, out_dir)
    check_keys(spec, runs, resolver.schema)
    planned = []
    for run in runs:
        config = resolver.resolve(run.cli_args(), label=f"{spec.path}: {run.group}")
        identity, kept = config_identity(config)
        result = finished_result(run.run_dir, identity, kept)
        job = read_job(run.run_dir) if result is None else None
        planned.append(Planned(run, config, identity, result, job if job and job_active(job) else None))
    return planned


class Progress:
    """Prints each run as it finishes and appends its row to ``results.jsonl``; collects failures."""

    def __init__(self, log: ResultsLog) -> None:
        self.log = log
        self.failures: list[str] = []

    def __call__(self, run: RunSpec, result: Optional[dict[str, Any]], message: str) -> None:
        if result is None:
            self.failures.append(f"{run.label}: {message.splitlines()[0] if message else 'failed'}")
            print(f"  FAILED {run.label}: {message}", file=sys.stderr, flush=True)
            return
        self.log.append(result)
        print(f"  done {run.label}: test pos MSE {result['test_pos_mse']:.5f}", flush=True)


def run_sweep(
    spec_path: str | Path | SweepSpec,
    out_dir: str | Path = "runs/sweeps",
    parallel: int = 1,
    dry_run: bool = False,
    print_commands: Optional[str] = None,
    report: bool = True,
    threads: Optional[int] = None,
    backend: str = "local",
    detach: bool = False,
    poll_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Run (or list, or print commands for) every unfinished run of the sweep, then report.

    Returns the result rows of the finished runs (empty when nothing ran: dry run, printed
    commands, detached submission).
    """
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    spec = spec_path if isinstance(spec_path, SweepSpec) else load_spec(spec_path)
    sweep_dir = Path(out_dir) / spec.name
    planned = plan(spec, out_dir)
    todo = [p for p in planned if p.state == "todo"]
    active = [p for p in planned if p.job is not None]
    done = [p for p in planned if p.result is not None]
    if print_commands:
        _print_commands(print_commands, spec, todo, sweep_dir)
        return []
    print(f"sweep {spec.name}: {len(planned)} runs, {len(done)} finished, "
          + (f"{len(active)} running or pending as jobs, " if active else "") + f"{len(todo)} to run")
    if dry_run:
        for p in planned:
            print(f"  [{p.state}] {p.run.label}: {p.run.run_dir}")
            print(f"      configs {list(p.run.configs)} overrides {dict(p.run.overrides)}")
        return []

    log = ResultsLog(sweep_dir / RESULTS_LOG)
    log.start([p.result for p in done])
    progress = Progress(log)
    if backend == "local":
        if active:
            print(f"  (skipping {len(active)} run(s) whose worker is still running: "
                  + ", ".join(p.run.label for p in active) + ")")
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // parallel)
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        from set_lightning.experiments.local import run_local

        run_local([p.run for p in todo], [p.config["trainer"] for p in todo], parallel, threads, progress)
    else:
        from set_lightning.experiments import slurm

        params = spec.executor_parameters()
        submitted = slurm.submit([p.run for p in todo], [p.config["trainer"] for p in todo], backend,
                                 sweep_dir / "slurm", spec.name, params) if todo else []
        for run, job in submitted:
            print(f"  submitted {run.label}: job {job.job_id}")
        if detach:
            print(f"detached: {len(submitted) + len(active)} job(s); when they are done, "
                  f"python -m set_lightning sweep {spec.path} --out {out_dir} --report-only")
            return []
        slurm.watch(submitted, [p.run for p in active], progress, poll_s=poll_s)

    rows = log.rows()
    if report and rows:
        from set_lightning.experiments.report import make_report

        make_report(rows, reference=spec.reference, out_dir=sweep_dir, title=spec.name)
    if progress.failures:
        raise UserError(f"{len(progress.failures)} run(s) failed (finished runs are kept; rerun to retry): "
                        + "; ".join(progress.failures))
    return rows


def _print_commands(kind: str, spec: SweepSpec, todo: Sequence[Planned], sweep_dir: Path) -> None:
    """One shell command per unfinished run, or (``slurm``) an sbatch job-array script, on stdout."""
    if not todo:
        print(f"# sweep {spec.name}: nothing to run", file=sys.stderr)
        return
    for p in todo:
        p.run.save()  # the command reads the run's spec from run_dir/run.json
    if kind == "slurm":
        from set_lightning.experiments.slurm import sbatch_script

        log_dir = (sweep_dir / "slurm").resolve()
        log_dir.mkdir(parents=True, exist_ok=True)
        print(sbatch_script([p.run for p in todo], [p.config["trainer"] for p in todo], spec.name, log_dir,
                            spec.executor_parameters()), end="")
        return
    from set_lightning.experiments.local import worker_command

    for p in todo:
        print(f"cd {shlex.quote(str(p.run.root))} && {shlex.join(worker_command(p.run))}")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl`` file.

    Raises:
        UserError: the file is missing or a line is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--results: no such file: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"--results: {path} line {n} is not JSON ({err.msg})") from None
    return rows


def report_only(spec_path: str | Path, out_dir: str | Path, results: Optional[str | Path] = None) -> Path:
    """Rebuild the report without running anything; return the folder it was written to.

    From ``results`` (a ``results.jsonl`` file; the report goes beside it) when given; else from the
    finished run directories under ``out_dir`` (rewriting ``<out>/<name>/results.jsonl``), or, when
    there are none, from that ``results.jsonl`` alone.
    """
    from set_lightning.experiments.report import make_report

    spec = load_spec(spec_path)
    if results is not None:
        rows, folder = read_results(results), Path(results).parent
    else:
        folder = Path(out_dir) / spec.name
        rows = [p.result for p in plan(spec, out_dir) if p.result is not None]
        if rows:
            ResultsLog(folder / RESULTS_LOG).start(rows)
        elif (folder / RESULTS_LOG).is_file():
            rows = read_results(folder / RESULTS_LOG)
    if not rows:
        raise UserError(f"no finished runs of {spec.name} under {out_dir} and no {folder / RESULTS_LOG}; "
                        "pass --results FILE to report a results.jsonl from elsewhere")
    make_report(rows, reference=spec.reference, out_dir=folder, title=spec.name)
    return folder


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m set_lightning") -> None:
    """``<prog> sweep ...``."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} sweep",
        description="Run an ablation sweep (every variant x grid point x seed), resumably, and report it. "
                    "Every key of the ablation file is checked against the configuration before any run starts.",
    )
    parser.add_argument("spec", help="ablation file, e.g. ablations/paper_n5_cpu.yaml")
    parser.add_argument("--out", default="runs/sweeps", help="root folder for run directories (default: runs/sweeps)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: worker processes on this machine (default); slurm: one submitit job array; "
                             "submitit-local: the cluster path through submitit's local executor")
    parser.add_argument("--parallel", type=int, default=1,
                        help="local backend: runs at once on this machine, each with its own GPUs (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: CPU cores // --parallel)")
    parser.add_argument("--detach", action="store_true",
                        help="cluster backends: submit and return (collect later with --report-only)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every key and run, list the runs and their state; run nothing")
    parser.add_argument(
        "--print-commands", nargs="?", const="shell", choices=("shell", "slurm"), default=None,
        help="print one shell command per unfinished run (shell, the default), or an sbatch job-array "
             "script (slurm), for other schedulers; run nothing",
    )
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the report: from the finished runs under --out, or from --results")
    parser.add_argument("--results", default=None,
                        help="with --report-only: a results.jsonl to report (e.g. results/paper_n5_cpu/results.jsonl); "
                             "the report is written beside it")
    args = parser.parse_args(argv)
    if args.results and not args.report_only:
        raise UserError("--results is only used with --report-only")
    if args.report_only:
        report_only(args.spec, args.out, args.results)
        return
    run_sweep(args.spec, args.out, args.parallel, args.dry_run, args.print_commands, threads=args.threads,
              backend=args.backend, detach=args.detach, poll_s=2.0 if args.backend != "slurm" else 30.0)


if __name__ == "__main__":
    main()
