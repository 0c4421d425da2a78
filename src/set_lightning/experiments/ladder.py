"""A budget-ladder study: runs whose budget is training FLOPs, identified by what they compute.

A *run* is one configuration (a config file and dotted overrides, as an ablation file's variant) at
one seed and one budget in TFLOP (10^12 matmul FLOPs of training). Its budget becomes a number of
optimiser steps through the configuration's FLOPs per step (:func:`set_lightning.compute.training_flops`),
counted once per model shape and pinned in a table beside the results (``<out>_flops.json``), so a
later, faster implementation of the same model trains the same number of steps. The step count is
rounded to whole epochs and to the validation cadence (about :data:`VALIDATIONS` validations per run,
the last one at the end), so a run's real budget is within one validation period of the nominal one;
rows carry both.

A run's *identity* (``run_id``) is the SHA-256 of its fully resolved configuration (the sweep's
identity: defaults, config files and overrides as LightningCLI resolves them, seed included), its
nominal budget and its model's numerics :func:`~set_lightning.compute.fingerprint`. An edited variant,
an edited config file or a change of the model's math gives a new identity: old rows are never
reused for it. The machine and the code revision are recorded in every row but are not part of the
identity: a FLOP budget means the same on every machine, and a faster revision of the same math keeps
the fingerprint. Seconds (``train_cpu_s``) are reported per machine only.

Every run goes in its own process (``python -m set_lightning.experiments.ladder RUN_DIR``, one torch
thread), fits with a cosine schedule to its last step, tests the best-validation checkpoint and the
parent appends one row to ``<out>.jsonl`` (and the per-trajectory test errors to
``<out>_per_traj.jsonl``) as soon as it finishes: a study accumulates across restarts and machines.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from set_lightning.compute import COMPILED, fingerprint, machine_info, machine_key, training_flops
from set_lightning.experiments.records import ConfigResolver, config_identity
from set_lightning.experiments.spec import RunSpec, variant_run
from set_lightning.files import append_jsonl, read_jsonl, write_text_atomic

#: validations per run (the cadence is a whole number of epochs; short runs validate every epoch)
VALIDATIONS = 40
#: settings of every ladder run: no progress output; the step count ends training
COMMON = {"trainer.max_epochs": -1, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
#: a generous cap on one run's process seconds (the TimeBudget also records the validation curve)
SAFETY_S = 6 * 3600.0
_lock = threading.Lock()


def slug(label: str) -> str:
    """A folder name for a label: letters and digits, ``_`` elsewhere."""
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def budget_label(tflop: float) -> str:
    return f"{tflop:g}TF"


@dataclass(frozen=True)
class Unit:
    """One run of the study: a model (``arm``) with a recipe at one seed and one budget.

    ``variant`` is the run as an ablation file's variant (a ``config`` file or list and dotted
    overrides); ``recipe`` names the recipe's part of it (e.g. ``lr=5e-4``) for the report.
    """

    arm: str
    recipe: str
    variant: Mapping[str, Any]
    seed: int
    budget_tflop: float

    @property
    def name(self) -> str:
        return f"{self.arm} [{self.recipe}] seed {self.seed} @ {budget_label(self.budget_tflop)}"


@dataclass
class Planned:
    """A :class:`Unit` resolved: its identity, step count and the spec the worker runs."""

    unit: Unit
    run_id: str
    config_sha256: str
    fingerprint: list[float]
    flops_per_step: int
    steps_per_epoch: int
    max_steps: int
    val_every: int
    spec: RunSpec
    trainer: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def tflop(self) -> float:
        """The run's real budget: its steps times its FLOPs per step, in TFLOP."""
        return self.max_steps * self.flops_per_step / 1e12


class Ladder:
    """Plans, runs and records the units of one study under ``out`` (``<out>.jsonl`` and friends).

    Args:
        out: the results' stem (``results/history`` gives ``results/history.jsonl``, ``_per_traj.jsonl``,
            ``_flops.json``).
        root: the project folder whose ``conf/`` the variants name.
        base: config files every run starts from (the data).
        runs: where run folders go (checkpoints and logs; not results).
    """

    def __init__(self, out: Path, root: Path, base: Sequence[str], runs: Path) -> None:
        self.out, self.root, self.base, self.runs = Path(out), Path(root), list(base), Path(runs)
        self._resolver: Optional[ConfigResolver] = None
        self._fingerprints: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ files
    @property
    def rows_file(self) -> Path:
        return self.out.with_suffix(".jsonl")

    @property
    def per_traj_file(self) -> Path:
        return self.out.parent / f"{self.out.name}_per_traj.jsonl"

    @property
    def flops_file(self) -> Path:
        return self.out.parent / f"{self.out.name}_flops.json"

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.rows_file)

    def finished_ids(self) -> set[str]:
        return {r["run_id"] for r in self.rows()}

    def _flops_table(self) -> dict[str, int]:
        return json.loads(self.flops_file.read_text()) if self.flops_file.is_file() else {}

    # ------------------------------------------------------------------ planning
    def resolve(self, unit: Unit) -> dict[str, Any]:
        """The unit's resolved configuration (what ``fit --print_config`` shows), before its budget."""
        if self._resolver is None:
            self._resolver = ConfigResolver()
        spec = variant_run(dict(unit.variant), slug(unit.arm), unit.seed, self.runs / "resolve", self.root,
                           base=self.base, overrides=COMMON)
        return self._resolver.resolve(spec.cli_args(), unit.name)

    def plan(self, unit: Unit) -> Planned:
        """Resolve ``unit``: identity, FLOPs per step (pinned in the flops table), steps and the worker's spec."""
        resolved = self.resolve(unit)
        config_sha, kept = config_identity(resolved)
        net, data = resolved["model"]["net"], resolved["data"]
        # the pinned FLOPs are keyed by the model as hashed (a renamed setting keeps its key)
        shape = {"net": kept["model"]["net"], "batch": data["batch_size"], "history": data["history"],
                 "n": data["n_particles"]}
        shape_key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        if shape_key not in self._fingerprints:
            self._fingerprints[shape_key] = fingerprint(net, history=data["history"], n=data["n_particles"])
        fp = self._fingerprints[shape_key]
        with _lock:
            table = self._flops_table()
            if shape_key not in table:
                from set_lightning.models.registry import build_from_config

                table[shape_key] = training_flops(build_from_config(net), batch=data["batch_size"],
                                                  history=data["history"], n=data["n_particles"])
                self.flops_file.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.flops_file, json.dumps(table, indent=1, sort_keys=True) + "\n")
        flops = int(table[shape_key])
        steps_per_epoch = math.ceil(data["n_train"] / data["batch_size"])
        epochs = max(1, round(unit.budget_tflop * 1e12 / flops / steps_per_epoch))
        val_every = max(1, round(epochs / VALIDATIONS))
        epochs = max(val_every, round(epochs / val_every) * val_every)
        max_steps = epochs * steps_per_epoch
        run_id = hashlib.sha256(json.dumps(
            {"config_sha256": config_sha, "budget_tflop": unit.budget_tflop, "fingerprint": fp},
            sort_keys=True).encode()).hexdigest()
        # the identity in the folder's name: an edited variant never resumes another's checkpoints
        run_dir = (self.runs / slug(unit.arm) / slug(unit.recipe) / budget_label(unit.budget_tflop)
                   / f"seed_{unit.seed}-{run_id[:8]}")
        budget = {"trainer.max_steps": max_steps, "trainer.check_val_every_n_epoch": val_every}
        spec = variant_run(dict(unit.variant), slug(unit.arm), unit.seed, run_dir, self.root, base=self.base,
                           overrides={**COMMON, **budget})
        return Planned(unit, run_id, config_sha, fp, flops, steps_per_epoch, max_steps, val_every, spec,
                       resolved["trainer"])

    # ------------------------------------------------------------------ running
    def record(self, planned: Planned) -> str:
        """Append the row of a unit whose worker finished (``result.json`` in its folder); a status line."""
        unit, run_dir = planned.unit, planned.spec.run_dir
        result = json.loads((run_dir / "result.json").read_text())
        machine = json.loads((run_dir / "machine.json").read_text())
        row = self.row(planned, result, read_jsonl(run_dir / "curve.jsonl"), machine)
        per = json.loads((run_dir / "per_traj_test.json").read_text())
        with _lock:
            append_jsonl(self.rows_file, [row])
            append_jsonl(self.per_traj_file, [{"run_id": planned.run_id, **per}])
        return (f"done {unit.name}: test {row['test_pos_mse']:.5f}, best val {row['best_val_pos_mse']:.5f} "
                f"at step {row['best_step']} of {row['steps']}, {row['train_cpu_s']:.0f} "
                + ("s (wall)" if machine.get("clock") == "wall" else "CPU-s"))

    def row(self, planned: Planned, result: Mapping[str, Any], curve: Sequence[Mapping[str, Any]],
            machine: Mapping[str, Any]) -> dict[str, Any]:
        """The results row of a finished unit (one JSON line)."""
        unit = planned.unit
        spe, flops = planned.steps_per_epoch, planned.flops_per_step
        best_epoch = result.get("best_epoch")
        train_s = max((c.get("train_s", 0.0) for c in curve), default=None)
        steps = planned.max_steps
        # how its seconds were made, as the machine is (from the plan: a unit interrupted and resumed with the other
        # setting, same identity and folder, mixes both in its seconds)
        if unit.variant.get("model.compile"):
            machine = {**machine, "compiled": True}
        return {
            "run_id": planned.run_id, "arm": unit.arm, "recipe": unit.recipe, "variant": dict(unit.variant),
            "seed": unit.seed, "budget_tflop": unit.budget_tflop, "tflop": round(planned.tflop, 4),
            "flops_per_step": flops, "steps": steps, "steps_per_epoch": spe, "val_every": planned.val_every,
            "config_sha256": planned.config_sha256, "fingerprint": planned.fingerprint,
            "machine": dict(machine), "machine_key": machine_key(machine), "revision": machine.get("revision"),
            "n_params": result["n_params"], "epochs": result["epochs"], "best_epoch": best_epoch,
            "best_step": None if best_epoch is None else (best_epoch + 1) * spe,
            "best_val_pos_mse": result["best_val_pos_mse"], "test_pos_mse": result["test_pos_mse"],
            **{f"test_{k}": v for k, v in result["test"].items() if k != "pos_mse"},
            "train_cpu_s": train_s, "ms_per_step": None if not train_s else round(1000 * train_s / steps, 2),
            "curve": [{"step": c["step"], "tflop": round(c["step"] * flops / 1e12, 4), "cpu_s": c.get("train_s"),
                       "val_pos_mse": c.get("pos_mse"), "val_pos_mse_median": c.get("pos_mse_median")}
                      for c in {c["step"]: c for c in curve}.values()],  # a resumed run may repeat a step
            "finished_at": result.get("finished_at"),
        }

    def run_all(self, planned: Sequence[Planned], parallel: int, log: Callable[[str], None] = print,
                runs_per_gpu: int = 1) -> None:
        """Run ``planned`` units with the local runner (one process each, one thread, ``parallel`` at a time,
        on a GPU machine ``runs_per_gpu`` of them on each GPU), recording each as it finishes.

        An interrupted unit resumes from its ``last.ckpt`` (its folder is named by its identity).
        """
        from set_lightning.experiments.local import run_local

        by_dir = {p.spec.run_dir: p for p in planned}

        def done(spec: RunSpec, result: Optional[dict[str, Any]], failure: str) -> None:
            unit = by_dir[spec.run_dir]
            log(self.record(unit) if result is not None else f"FAILED {unit.unit.name}: {failure}")

        run_local([p.spec for p in planned], [p.trainer for p in planned], parallel, threads=1, on_done=done,
                  runs_per_gpu=runs_per_gpu,
                  command=lambda spec: [sys.executable, "-m", "set_lightning.experiments.ladder", str(spec.run_dir)])

    def estimate_s(self, planned: Planned, machine: str) -> float:
        """CPU seconds a unit will take here: from finished rows of its configuration's shape on this
        machine (median ms per step, plus validation), else at 25 GFLOP/s."""
        # a compiled unit: its own rows' rate, else (no compiled row yet) the eager rate, its compile time not counted
        keys = [machine + COMPILED, machine] if planned.unit.variant.get("model.compile") else [machine]
        for key in keys:
            seen = [r["train_cpu_s"] / r["steps"] for r in self.rows()
                    if r.get("machine_key") == key and r["flops_per_step"] == planned.flops_per_step
                    and r.get("train_cpu_s")]
            if seen:
                break
        per_step = sorted(seen)[len(seen) // 2] if seen else planned.flops_per_step / 25e9
        return 1.25 * per_step * planned.max_steps  # validation and testing: about a quarter more


def worker(run_dir: str) -> None:
    """One unit in this process: ``machine.json`` when the fit starts, fit (curve to ``curve.jsonl``), test,
    ``result.json``.

    Its seconds are CPU seconds of this process on a CPU and wall-clock seconds (CUDA synchronised at the
    clock's starts and pauses) on a GPU; ``machine.json`` names the device it trained on, the clock and,
    when the runner put several runs on one GPU, how many shared it.
    """
    import os

    import torch

    from set_lightning.callbacks import RecordMachine, TimeBudget
    from set_lightning.errors import run_with_clean_errors
    from set_lightning.experiments import worker as run_worker
    from set_lightning.experiments.local import GPU_SHARED_ENV

    torch.set_num_threads(1)
    path = Path(run_dir)
    budget = TimeBudget(SAFETY_S, clock="auto", curve_file=str(path / "curve.jsonl"))
    shared = int(os.environ.get(GPU_SHARED_ENV, "1"))
    record = RecordMachine(str(path / "machine.json"), budget, {"gpu_shared_by": shared} if shared > 1 else None)
    sys.exit(run_with_clean_errors(lambda: run_worker.run(RunSpec.load(path), callbacks=[budget, record])))


def this_machine() -> str:
    """The machine key a unit run here would get (on a GPU machine: its first GPU, where the runs go)."""
    import torch

    return machine_key({**machine_info("cuda" if torch.cuda.is_available() else "cpu"), "threads": 1})


def pending(ladder: Ladder, units: Iterable[Unit]) -> list[Planned]:
    """The planned units not yet in the results (by identity), in order, without duplicates."""
    done, seen, out = ladder.finished_ids(), set(), []
    for unit in units:
        planned = ladder.plan(unit)
        if planned.run_id in done or planned.run_id in seen:
            continue
        seen.add(planned.run_id)
        out.append(planned)
    return out


if __name__ == "__main__":
    worker(sys.argv[1])
