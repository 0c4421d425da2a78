"""Ablation sweeps: ``python -m set_lightning sweep ablations/<file>.yaml [--parallel K] [--dry-run]``.

An ablation file (any ``*.yaml`` in ``ablations/``; dropping in a new file adds an ablation, no code
change) says::

    name: paper_n5                    # results go to <out>/<name>/ (default out: runs/sweeps)
    base: [conf/set.yaml]             # config file(s) every run starts from
    overrides: {trainer.max_epochs: 30}   # dotted overrides for every run
    seeds: [0, 1, 2]                  # seed_everything values; each variant runs once per seed
    reference: full                   # the variant the others are tested against (Welch t-test)
    variants:                         # one entry per ablation: dotted overrides, optional `config`
      full: {}
      no_equivariance: {model.net.init_args.equivariant: false}
      egnn: {config: conf/egnn.yaml}
    grid: {data.n_particles: [5, 20]} # optional: every variant at every grid point
    vary_data_seed: false             # optional: true also sets data.seed to each seed

The seeds vary ``seed_everything``: the model's initial weights, the order of the training batches
and dropout. The data set (which trajectories are simulated for train / val / test) is fixed by
``data.seed`` and is the same for every seed, so all runs are scored on the same test trajectories;
``vary_data_seed: true`` draws a new data set per seed as well (then the seeds also vary the data).

Every key is checked against the configuration schema before any run starts (a typo names the
key and the closest valid one). Each (variant, grid point, seed) is one run directory ``<out>/<name>/<run id>/seed_<s>`` trained and
tested by :mod:`set_lightning.run_one` in its own process. Finished runs (with ``result.json``) are
skipped, so a sweep killed half-way resumes without losing or redoing finished runs; an interrupted
run resumes from its ``last.ckpt``. Results: ``<out>/<name>/results.jsonl`` (one row per run) and the
report (``report.md``, ``report.png``; see :mod:`set_lightning.report`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import difflib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import yaml

from set_lightning.errors import UserError
from set_lightning.run_one import config_digests, read_result, write_text_atomic

SPEC_KEYS = {"name", "description", "base", "overrides", "seeds", "reference", "variants", "grid", "vary_data_seed"}


class Schema(Protocol):
    """What the sweep needs of the CLI's configuration schema (:class:`set_lightning.cli.ConfigSchema`)."""

    def check_key(self, key: str, args: Sequence[str], where: str) -> None: ...

    def parse(self, args: Sequence[str], where: str) -> Any: ...


@dataclass(frozen=True)
class Run:
    """One (variant, grid point, seed) of a sweep."""

    variant: str
    grid_point: tuple[tuple[str, Any], ...]
    seed: int
    cli_args: tuple[str, ...]
    run_dir: Path

    @property
    def group(self) -> str:
        """The run id without the seed: runs of one group differ only in their seed."""
        return self.run_dir.parent.name

    root: Path = Path(".")

    def command(self) -> list[str]:
        """The command that performs this run, from ``root`` (what a cluster job would execute)."""
        return [sys.executable, "-m", "set_lightning.run_one", str(self.run_dir.resolve()), *self.cli_args]

    def finished(self) -> Optional[dict[str, Any]]:
        """The run's result if it finished with exactly these arguments; ``None`` if unfinished.

        Raises:
            UserError: the run directory holds a result made with other arguments (the ablation file
                changed): it is never silently reused.
        """
        result = read_result(self.run_dir)
        if result is None:
            return None
        if list(result.get("cli_args", [])) != list(self.cli_args):
            raise UserError(
                f"{self.run_dir} holds a finished run made with other arguments than the ablation file "
                "now gives; pass another --out or delete that folder"
            )
        digests = config_digests(self.cli_args, self.root)
        if result.get("config_sha256", digests) != digests:
            raise UserError(
                f"{self.run_dir} holds a finished run made with an earlier version of its config file(s) "
                f"{sorted(digests)}; pass another --out or delete that folder"
            )
        return result


@dataclass
class SweepSpec:
    """A parsed ablation file."""

    name: str
    path: Path
    base: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    reference: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    vary_data_seed: bool = False


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate an ablation file; errors name the field and the allowed values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping with keys " + ", ".join(sorted(SPEC_KEYS)))
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(SPEC_KEYS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _fail(path, f"unknown key(s) {unknown}{hint} (allowed: {sorted(SPEC_KEYS)})")
    if not isinstance(raw.get("vary_data_seed", False), bool):
        raise _fail(path, f"vary_data_seed must be true or false, got {raw['vary_data_seed']!r}")
    base = raw.get("base", [])
    base = [base] if isinstance(base, str) else list(base or [])
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _fail(path, f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, f"seeds must be distinct, got {seeds}")
    variants = raw.get("variants") or {"default": {}}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) or v is None for v in variants.values()):
        raise _fail(path, "variants must map a variant name to a mapping of dotted overrides")
    variants = {str(k): dict(v or {}) for k, v in variants.items()}
    for vname in variants:
        if not vname.replace("_", "").replace("-", "").isalnum():
            raise _fail(path, f"variant name {vname!r} may hold only letters, digits, '_' and '-'")
    reference = str(raw.get("reference", next(iter(variants))))
    if reference not in variants:
        raise _fail(path, f"reference {reference!r} is not a variant; allowed: {list(variants)}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise _fail(path, "grid must map a dotted key to a non-empty list of values")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, "overrides must be a mapping of dotted keys to values")
    root = _project_root(path)
    for cfg in base + [v["config"] for v in variants.values() if "config" in v]:
        for c in [cfg] if isinstance(cfg, str) else cfg:
            if not (root / c).is_file():
                raise _fail(path, f"config file {c!r} not found (paths are relative to {root})")
    return SweepSpec(
        name=str(raw.get("name", path.stem)),
        path=path,
        base=base,
        seeds=seeds,
        variants=variants,
        reference=reference,
        overrides=overrides,
        grid=grid,
        description=str(raw.get("description", "")),
        vary_data_seed=bool(raw.get("vary_data_seed", False)),
    )


def _project_root(spec_path: Path) -> Path:
    """Config paths in an ablation file are relative to the project: the folder holding
    ``ablations/`` when the file lies there, else the current directory."""
    parent = spec_path.resolve().parent
    if parent.name == "ablations" and not (parent.parent / "conf").is_dir() and (Path.cwd() / "conf").is_dir():
        return Path.cwd()
    return parent.parent if parent.name == "ablations" else Path.cwd()


def _as_cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _overrides_to_args(overrides: dict[str, Any]) -> list[str]:
    return [f"--{k}={_as_cli_value(v)}" for k, v in overrides.items()]


def _slug(grid_point: tuple[tuple[str, Any], ...]) -> str:
    return "__".join(f"{k.split('.')[-1]}={_as_cli_value(v)}" for k, v in grid_point)


def expand(spec: SweepSpec, out_dir: str | Path) -> list[Run]:
    """All runs of the sweep, in a stable order (grid point, variant, seed)."""
    root = _project_root(spec.path)
    out = Path(out_dir) / spec.name
    keys = list(spec.grid)
    runs: list[Run] = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        grid_point = tuple(zip(keys, values))
        for vname, variant in spec.variants.items():
            variant = dict(variant)
            extra = variant.pop("config", None)
            configs = list(spec.base) + ([extra] if isinstance(extra, str) else list(extra or []))
            group = vname + (f"__{_slug(grid_point)}" if grid_point else "")
            for seed in spec.seeds:
                args = [f"--config={c}" for c in configs]
                args += _overrides_to_args(spec.overrides)
                args += _overrides_to_args(variant)
                args += _overrides_to_args(dict(grid_point))
                args += [f"--seed_everything={seed}"] + ([f"--data.seed={seed}"] if spec.vary_data_seed else [])
                runs.append(Run(vname, grid_point, seed, tuple(args), out / group / f"seed_{seed}", root))
    return runs


def check_keys(spec: SweepSpec, runs: Sequence[Run], schema: Schema) -> None:
    """Check every key of the ablation file against ``schema``, and parse each run group's arguments.

    Raises:
        UserError: naming the file, where the key is (``overrides``, ``grid`` or the variant), the key
            and the closest valid one; or a value the configuration does not accept.
    """
    seen = set()
    for run in runs:
        if run.group in seen:
            continue
        seen.add(run.group)
        variant = {k: v for k, v in spec.variants[run.variant].items() if k != "config"}
        # config files are relative to the folder the run executes in
        args = [f"--config={run.root / a.split('=', 1)[1]}" if a.startswith("--config=") else a for a in run.cli_args]
        for where, keys in (("overrides", spec.overrides), ("grid", spec.grid), (f"variant '{run.variant}'", variant)):
            for key in keys:
                others = [a for a in args if not a.startswith(f"--{key}=")]
                schema.check_key(str(key), others, f"{spec.path}: {where}")
        schema.parse(args, f"{spec.path}: {run.group}")


def _execute(run: Run, threads: int) -> tuple[Run, Optional[dict[str, Any]], str]:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(run.run_dir / "stdout.log", "a") as log:
        proc = subprocess.run(
            run.command(), cwd=run.root, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    result = read_result(run.run_dir)
    message = "" if result is not None else f"exit code {proc.returncode}; see {run.run_dir / 'stdout.log'}"
    return run, result, message


def collect_results(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Result rows of the finished runs, annotated with variant, grid point and seed."""
    rows = []
    for run in runs:
        result = run.finished()
        if result is None:
            continue
        result = dict(result, variant=run.variant, group=run.group, seed=run.seed)
        result.update({f"grid.{k}": v for k, v in run.grid_point})
        rows.append(result)
    return rows


def write_results(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rewrite the JSON-lines results file atomically (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def run_sweep(
    spec_path: str | Path,
    out_dir: str | Path = "runs/sweeps",
    parallel: int = 1,
    dry_run: bool = False,
    print_commands: bool = False,
    report: bool = True,
    threads: Optional[int] = None,
    schema: Optional[Schema] = None,
) -> list[dict[str, Any]]:
    """Run (or, with ``dry_run``, list) every unfinished run of the sweep, then report.

    With ``schema``, every key and run is checked first (:func:`check_keys`), before anything starts.
    """
    from set_lightning.report import make_report

    spec = load_spec(spec_path)
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    runs = expand(spec, out_dir)
    if schema is not None:
        check_keys(spec, runs, schema)
    todo = [r for r in runs if r.finished() is None]
    sweep_dir = Path(out_dir) / spec.name
    if print_commands:
        for run in todo:
            print(f"cd {shlex.quote(str(run.root.resolve()))} && {shlex.join(run.command())}")
        return []
    print(f"sweep {spec.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    if dry_run:
        for run in runs:
            state = "done" if run not in todo else "todo"
            print(f"  [{state}] {run.group} seed={run.seed}: {shlex.join(run.command())}")
        return []
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    failures = []
    results_path = sweep_dir / "results.jsonl"
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for run, result, message in pool.map(lambda r: _execute(r, threads), todo):
            if result is None:
                failures.append(f"{run.group} seed={run.seed}: {message}")
                print(f"  FAILED {run.group} seed={run.seed}: {message}", file=sys.stderr)
            else:
                print(f"  done {run.group} seed={run.seed}: test pos MSE {result['test_pos_mse']:.5f}")
            write_results(collect_results(runs), results_path)
    rows = collect_results(runs)
    write_results(rows, results_path)
    if report and rows:
        make_report(rows, reference=spec.reference, out_dir=sweep_dir, title=spec.name)
    if failures:
        raise UserError(f"{len(failures)} run(s) failed (finished runs are kept; rerun to retry): " + "; ".join(failures))
    return rows


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
    from set_lightning.report import make_report

    spec = load_spec(spec_path)
    if results is not None:
        rows, folder = read_results(results), Path(results).parent
    else:
        folder = Path(out_dir) / spec.name
        rows = collect_results(expand(spec, out_dir))
        if rows:
            write_results(rows, folder / "results.jsonl")
        elif (folder / "results.jsonl").is_file():
            rows = read_results(folder / "results.jsonl")
    if not rows:
        raise UserError(f"no finished runs of {spec.name} under {out_dir} and no {folder / 'results.jsonl'}; "
                        "pass --results FILE to report a results.jsonl from elsewhere")
    make_report(rows, reference=spec.reference, out_dir=folder, title=spec.name)
    return folder


def main(argv: Optional[Sequence[str]] = None, schema: Optional[Callable[[], Schema]] = None,
         prog: str = "python -m set_lightning") -> None:
    """``<prog> sweep ...``; ``schema`` builds the configuration schema the keys are checked against."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} sweep",
        description="Run an ablation sweep (every variant x grid point x seed), resumably, and report it. "
                    "Every key of the ablation file is checked against the configuration before any run starts.",
    )
    parser.add_argument("spec", help="ablation file, e.g. ablations/paper_n5_cpu.yaml")
    parser.add_argument("--out", default="runs/sweeps", help="root folder for run directories (default: runs/sweeps)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once on this machine (default 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every key and run, list the runs and their commands; run nothing")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one shell command per unfinished run (to submit each as a cluster job); run nothing",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads per run (default: CPU cores // --parallel)",
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
              schema=schema() if schema is not None else None)


if __name__ == "__main__":
    main()
