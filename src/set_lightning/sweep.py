"""Ablation sweeps: ``python -m set_lightning sweep ablations/<file>.yaml [--parallel K] [--dry-run]``.

An ablation file (any ``*.yaml`` in ``ablations/``; dropping in a new file adds an ablation, no code
change) says::

    name: paper_n5                    # results go to <out>/<name>/ (default out: runs/sweeps)
    base: [conf/set.yaml, conf/data/nbody5.yaml]   # config file(s) every run starts from
    overrides: {trainer.max_epochs: 30}   # dotted overrides for every run
    seeds: [0, 1, 2]                  # seed_everything values; each variant runs once per seed
    reference: full                   # the variant the others are tested against (Welch t-test)
    variants:                         # one entry per ablation: dotted overrides, optional `config`
      full: {}
      no_equivariance: {model.net.init_args.equivariant: false}
      egnn: {config: conf/egnn.yaml}
    grid: {data.n_particles: [5, 20]} # optional: every variant at every grid point

Config names ``conf/...`` are the packaged configs; other config paths are relative to the working
directory, where the runs execute. :func:`run_sweep` also takes the spec as a mapping of these keys
(or a :class:`SweepSpec`) instead of a file.

Each (variant, grid point, seed) is one run directory ``<out>/<name>/<run id>/seed_<s>`` trained and
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from set_lightning.configs import resolve_config
from set_lightning.errors import UserError
from set_lightning.run_one import config_digests, read_result, write_text_atomic

SPEC_KEYS = {"name", "description", "base", "overrides", "seeds", "reference", "variants", "grid"}


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
    """A validated ablation spec (from a file, :func:`load_spec`, or a mapping, :func:`parse_spec`).

    ``root`` is the folder the runs execute in: relative config paths and the data cache are read from
    there. ``conf/...`` names are the packaged configs (:func:`set_lightning.configs.resolve_config`).
    """

    name: str
    base: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    reference: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    root: Path = Path(".")


def load_spec(path: str | Path, root: Optional[str | Path] = None) -> SweepSpec:
    """Read and validate an ablation file (see :func:`parse_spec`); its name defaults to the file's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None
    if isinstance(raw, dict):
        raw.setdefault("name", path.stem)
    return parse_spec(raw, source=str(path), root=root)


def parse_spec(raw: Any, source: str = "sweep spec", root: Optional[str | Path] = None) -> SweepSpec:
    """Validate an ablation spec given as a mapping (the keys of an ablation file).

    Args:
        raw: the mapping (``name`` is required here).
        source: what error messages call the spec (its file name).
        root: the folder the runs execute in (default: the working directory).

    Raises:
        UserError: naming the field and the allowed values.
    """
    def fail(msg: str) -> UserError:
        return UserError(f"{source}: {msg}")

    if not isinstance(raw, dict):
        raise fail("must be a mapping with keys " + ", ".join(sorted(SPEC_KEYS)))
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    if not raw.get("name"):
        raise fail("name is required (results go to <out>/<name>/)")
    base = raw.get("base", [])
    base = [base] if isinstance(base, str) else list(base or [])
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise fail(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"seeds must be distinct, got {seeds}")
    variants = raw.get("variants") or {"default": {}}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) or v is None for v in variants.values()):
        raise fail("variants must map a variant name to a mapping of dotted overrides")
    variants = {str(k): dict(v or {}) for k, v in variants.items()}
    for vname in variants:
        if not vname.replace("_", "").replace("-", "").isalnum():
            raise fail(f"variant name {vname!r} may hold only letters, digits, '_' and '-'")
    reference = str(raw.get("reference", next(iter(variants))))
    if reference not in variants:
        raise fail(f"reference {reference!r} is not a variant; allowed: {list(variants)}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise fail("grid must map a dotted key to a non-empty list of values")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise fail("overrides must be a mapping of dotted keys to values")
    root = Path(root) if root is not None else Path.cwd()
    for cfg in base + [v["config"] for v in variants.values() if "config" in v]:
        for c in [cfg] if isinstance(cfg, str) else cfg:
            if not resolve_config(c, root).is_file():
                raise fail(f"config file {c!r} not found (paths are relative to {root}; conf/... names "
                           "are the packaged configs)")
    return SweepSpec(
        name=str(raw["name"]),
        base=base,
        seeds=seeds,
        variants=variants,
        reference=reference,
        overrides=overrides,
        grid=grid,
        description=str(raw.get("description", "")),
        root=root,
    )


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
    root = spec.root
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
                args += [f"--seed_everything={seed}"]
                runs.append(Run(vname, grid_point, seed, tuple(args), out / group / f"seed_{seed}", root))
    return runs


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


def as_spec(spec: SweepSpec | dict[str, Any] | str | Path, root: Optional[str | Path] = None) -> SweepSpec:
    """A :class:`SweepSpec` from itself, a mapping (:func:`parse_spec`) or an ablation file path."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec, root=root)
    return load_spec(spec, root=root)


def run_sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    out_dir: str | Path = "runs/sweeps",
    parallel: int = 1,
    dry_run: bool = False,
    print_commands: bool = False,
    report: bool = True,
    threads: Optional[int] = None,
    root: Optional[str | Path] = None,
) -> list[dict[str, Any]]:
    """Run (or, with ``dry_run``, list) every unfinished run of the sweep, then report.

    ``spec`` is an ablation file, a mapping of its keys or a :class:`SweepSpec`; ``root`` (for a file
    or mapping) is the folder the runs execute in (default: the working directory).
    """
    from set_lightning.report import make_report

    spec = as_spec(spec, root)
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    runs = expand(spec, out_dir)
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m set_lightning sweep",
        description="Run an ablation sweep (every variant x grid point x seed), resumably, and report it.",
    )
    parser.add_argument("spec", help="ablation file, e.g. ablations/paper_n5_cpu.yaml")
    parser.add_argument("--out", default="runs/sweeps", help="root folder for run directories (default: runs/sweeps)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once on this machine (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands; run nothing")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one shell command per unfinished run (to submit each as a cluster job); run nothing",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads per run (default: CPU cores // --parallel)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    args = parser.parse_args(argv)
    if args.report_only:
        from set_lightning.report import make_report

        spec = load_spec(args.spec)
        rows = collect_results(expand(spec, args.out))
        if not rows:
            raise UserError(f"no finished runs of {spec.name} under {args.out}")
        make_report(rows, reference=spec.reference, out_dir=Path(args.out) / spec.name, title=spec.name)
        return
    run_sweep(args.spec, args.out, args.parallel, args.dry_run, args.print_commands, threads=args.threads)


if __name__ == "__main__":
    main()
