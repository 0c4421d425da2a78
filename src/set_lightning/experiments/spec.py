"""Sweep specs: an ablation file (:class:`SweepSpec`) and the runs it expands to (:class:`RunSpec`).

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
    slurm: {partition: gpu, time_min: 240}   # optional: cluster settings for --backend slurm

The seeds vary ``seed_everything``: the model's initial weights, the order of the training batches
and dropout. The data set (which trajectories are simulated for train / val / test) is fixed by
``data.seed`` and is the same for every seed, so all runs are scored on the same test trajectories;
``vary_data_seed: true`` draws a new data set per seed as well (then the seeds also vary the data).

Each (variant, grid point, seed) is one :class:`RunSpec`: plain data (config files, overrides,
seed, run directory) that the runners hand to the worker as an object, or as ``run.json`` in the
run directory for a job on another machine.
"""

from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from set_lightning.errors import UserError, one_line
from set_lightning.experiments.records import SPEC_FILE, read_json, write_json

SPEC_KEYS = {"name", "description", "base", "overrides", "seeds", "reference", "variants", "grid", "vary_data_seed",
             "slurm"}
#: keys of an ablation file's ``slurm`` section -> submitit AutoExecutor parameters
SLURM_KEYS = {
    "partition": "slurm_partition",
    "time_min": "timeout_min",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "setup": "slurm_setup",
    "max_parallel": "slurm_array_parallelism",
    "additional": "slurm_additional_parameters",
}


@dataclass(frozen=True)
class RunSpec:
    """One run: everything the worker needs, as data.

    Attributes:
        variant: the variant's name in the ablation file.
        seed: the ``seed_everything`` value.
        run_dir: the run's directory (absolute).
        root: the project folder that relative ``configs`` are read from.
        configs: config files, in order, relative to ``root`` (or absolute).
        overrides: ``(dotted key, value)`` pairs applied after the config files, in order.
        grid_point: the grid's ``(dotted key, value)`` pairs of this run (also in ``overrides``).
    """

    variant: str
    seed: int
    run_dir: Path
    root: Path = Path(".")
    configs: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    grid_point: tuple[tuple[str, Any], ...] = ()

    @property
    def group(self) -> str:
        """The run id without the seed: runs of one group differ only in their seed."""
        return self.run_dir.parent.name

    @property
    def label(self) -> str:
        return f"{self.group} seed={self.seed}"

    def cli_args(self) -> list[str]:
        """The arguments of ``fit`` for this run (config paths made absolute: any working directory)."""
        args = [f"--config={(self.root / c).resolve()}" for c in self.configs]
        args += [f"--{k}={_as_cli_value(v)}" for k, v in self.overrides]
        return [*args, f"--seed_everything={self.seed}"]

    # ------------------------------------------------------------------ run.json
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(run_dir=str(self.run_dir), root=str(self.root), configs=list(self.configs),
                    overrides=[list(kv) for kv in self.overrides], grid_point=[list(kv) for kv in self.grid_point])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSpec":
        return cls(
            variant=str(data["variant"]), seed=int(data["seed"]), run_dir=Path(data["run_dir"]),
            root=Path(data.get("root", ".")), configs=tuple(data.get("configs", ())),
            overrides=tuple((str(k), v) for k, v in data.get("overrides", ())),
            grid_point=tuple((str(k), v) for k, v in data.get("grid_point", ())),
        )

    def save(self) -> None:
        """Write ``run_dir/run.json`` (what a job on another machine reads)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / SPEC_FILE, self.to_json())

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunSpec":
        data = read_json(Path(run_dir) / SPEC_FILE)
        if not isinstance(data, dict):
            raise UserError(f"{Path(run_dir) / SPEC_FILE}: no run spec there (the sweep writes it on submission)")
        return cls.from_json(data)


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
    slurm: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The folder the file's config paths are relative to."""
        return _project_root(self.path)

    def executor_parameters(self) -> dict[str, Any]:
        """The ``slurm`` section as submitit AutoExecutor parameters."""
        return {SLURM_KEYS[k]: v for k, v in self.slurm.items()}


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate an ablation file; errors name the field and the allowed values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.constructor.ConstructorError as err:
        raise _fail(path, str(err.problem)) from None
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({one_line(err)})") from None
    return parse_spec(raw, path)


def spec_from_mapping(raw: Any, root: str | Path = ".") -> SweepSpec:
    """Validate a sweep spec given as a mapping (the keys of an ablation file; ``name`` required).

    ``root`` is the project folder the runs execute in (config paths are relative to it).
    """
    if not isinstance(raw, dict) or not raw.get("name"):
        raise UserError("a sweep spec mapping needs a 'name' (results go to <out>/<name>/)")
    return parse_spec(raw, Path(root).resolve() / "ablations" / f"{raw['name']}.yaml")


def parse_spec(raw: Any, path: Path) -> SweepSpec:
    """Validate the mapping ``raw`` of an ablation file at ``path`` (which need not exist)."""
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
    name = str(raw.get("name", path.stem))
    if not name or ".." in name or "/" in name or "\\" in name:
        raise _fail(path, f"name {name!r} must be a plain folder name (no '..', no '/' or '\\'): the runs go to "
                          "<out>/<name>/")
    if "variants" in raw and not raw["variants"]:
        raise _fail(path, "variants is empty: list at least one variant (name: {dotted overrides}), or drop the "
                          "key to run the base config as one variant 'default'")
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
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict) or set(slurm) - set(SLURM_KEYS):
        bad = sorted(set(slurm) - set(SLURM_KEYS)) if isinstance(slurm, dict) else slurm
        raise _fail(path, f"slurm: unknown key(s) {bad}; allowed: {sorted(SLURM_KEYS)}")
    root = _project_root(path)
    for cfg in base + [v["config"] for v in variants.values() if "config" in v]:
        for c in [cfg] if isinstance(cfg, str) else cfg:
            if not (root / c).is_file():
                raise _fail(path, f"config file {c!r} not found (paths are relative to {root})")
    return SweepSpec(
        name=name,
        path=path,
        base=base,
        seeds=seeds,
        variants=variants,
        reference=reference,
        overrides=overrides,
        grid=grid,
        description=str(raw.get("description", "")),
        vary_data_seed=bool(raw.get("vary_data_seed", False)),
        slurm=slurm,
    )


def _project_root(spec_path: Path) -> Path:
    """Config paths in an ablation file are relative to the project: the folder holding
    ``ablations/`` when the file lies there, else the current directory."""
    parent = spec_path.resolve().parent
    if parent.name == "ablations" and not (parent.parent / "conf").exists() and (Path.cwd() / "conf").is_dir():
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


def _grid_slug(grid_point: tuple[tuple[str, Any], ...]) -> str:
    return "__".join(f"{k.split('.')[-1]}={_as_cli_value(v)}" for k, v in grid_point)


def variant_run(
    variant: dict[str, Any], name: str, seed: int, run_dir: Path, root: Path,
    base: Optional[list[str]] = None, overrides: Optional[dict[str, Any]] = None,
    grid_point: tuple[tuple[str, Any], ...] = (),
) -> RunSpec:
    """The run of one variant (dotted overrides and an optional ``config``) at one seed."""
    variant = dict(variant)
    extra = variant.pop("config", None)
    configs = list(base or []) + ([extra] if isinstance(extra, str) else list(extra or []))
    pairs = [*(overrides or {}).items(), *variant.items(), *grid_point]
    return RunSpec(name, seed, Path(run_dir).resolve(), Path(root).resolve(), tuple(configs), tuple(pairs),
                   tuple(grid_point))


def expand(spec: SweepSpec, out_dir: str | Path) -> list[RunSpec]:
    """All runs of the sweep, in a stable order (grid point, variant, seed)."""
    out = Path(out_dir) / spec.name
    keys = list(spec.grid)
    runs: list[RunSpec] = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        grid_point = tuple(zip(keys, values))
        for vname, variant in spec.variants.items():
            group = vname + (f"__{_grid_slug(grid_point)}" if grid_point else "")
            for seed in spec.seeds:
                run = variant_run(variant, vname, seed, out / group / f"seed_{seed}", spec.root, spec.base,
                                  spec.overrides, grid_point)
                if spec.vary_data_seed:  # last: the seed decides the data set too
                    run = replace(run, overrides=(*run.overrides, ("data.seed", seed)))
                runs.append(run)
    return runs
