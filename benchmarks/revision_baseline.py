"""``speed.py --baseline REV``: SET and EGNN of an older git revision against the working tree, side by side
in one process (the revision's models are loaded from ``git archive`` under another package name).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


from step_harness import REPO, Case, Stepper, alternated_processes, fmt, time_group  # benchmarks/step_harness.py


def load_models_at(rev: str) -> Any:
    """The ``set_lightning.models`` package of git revision ``rev``, imported under another name.

    The revision's ``set_lightning`` folder is extracted and registered as a package (``baseline_set_lightning``)
    whose ``__init__`` is not run, so that ``models`` and its relative imports (``..errors``) load from
    that revision without importing the rest of it (the CLI, the data, Lightning).
    """
    tmp = Path(tempfile.mkdtemp(prefix="speed_baseline_"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/set_lightning"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    root = tmp / "src" / "set_lightning"
    name = "baseline_set_lightning"
    parent = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None, is_package=True))
    parent.__path__ = [str(root)]
    sys.modules[name] = parent
    spec = importlib.util.spec_from_file_location(f"{name}.models", root / "models" / "__init__.py",
                                                  submodule_search_locations=[str(root / "models")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def missing_options(cls: Any, init_args: dict[str, Any]) -> dict[str, Any]:
    """The options of this tree's model that an older revision's ``cls`` does not take and that ``init_args`` sets
    away from their default, mapped to that default (the value that gives the old model's function)."""
    import inspect

    from set_lightning.models import MODELS

    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in inspect.signature(MODELS[cls.__name__.lower()].__init__).parameters.items()}
    return {k: defaults[k] for k, v in init_args.items() if k not in params and k in defaults and defaults[k] != v}


def older_args(cls: Any, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` that an older revision's model class takes: options added since must be at the value that
    gives the old model (their default), else the two models would differ in more than their code."""
    import inspect

    changed = missing_options(cls, init_args)
    if changed:
        raise SystemExit(f"error: --baseline: the revision's {cls.__name__} has no option {sorted(changed)} "
                         f"(set here to {{{', '.join(f'{k!r}: {init_args[k]!r}' for k in sorted(changed))}}}); "
                         "compare at the options' defaults")
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in init_args.items() if k in params}


def old_defaults(old: Any, names: tuple[str, ...], device: torch.device) -> dict[str, list[str]]:
    """For each model of ``names``, the overrides that put this tree's model at the defaults of the options the
    revision ``old`` lacks (e.g. SET's ``readout``, which conf/set.yaml sets to ``last``): the two sides then
    compute the same function, and the difference is the code's. Model options, so one build per model serves
    every data shape."""
    out = {}
    for name in names:
        new = Stepper(Case(name, [], "{model}"), device)
        out[name] = [f"--model.net.init_args.{k}={v}" for k, v in
                     sorted(missing_options(old.MODELS[name], new.init_args).items())]
    return out


def reset_note(resets: dict[str, list[str]]) -> str:
    """A sentence naming the options set to their defaults on both sides (:func:`old_defaults`), or ''."""
    named = [f"{name.upper()} `{' '.join(extra)}`" for name, extra in resets.items() if extra]
    return (" Options the revision does not have are at their defaults on both sides (the revision's function): "
            + ", ".join(named) + ".") if named else ""


def time_before_after(old: Any, names: tuple[str, ...], shape: list[str], device: torch.device,
                      args: argparse.Namespace, log: Callable, resets: dict[str, list[str]]) -> list[Case]:
    """Each model of ``names`` twice, this tree's ("after") and the revision ``old``'s ("before"), with the same
    settings (``shape`` plus the model's ``resets``, :func:`old_defaults`), timed round-robin; the cases in that
    order, with their results."""
    cases, steppers = [], []
    for name in names:
        same = shape + resets[name]
        if resets[name]:
            log(f"  {name}: {' '.join(resets[name])} on both sides (the revision has no such option)")
        for when in ("after", "before"):
            case = Case(name, same, f"{{model}} ({when})")
            new = Stepper(case, device)
            if when == "before":
                new = Stepper(case, device, net=old.MODELS[name](**older_args(old.MODELS[name], new.init_args)))
            cases.append(case)
            steppers.append(new)
    time_group(cases, device, args.repeats, args.budget, log, steppers)
    return cases


def baseline_section(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """Before/after: SET and EGNN of ``args.baseline`` vs the working tree, interleaved, at 1 and 2 threads."""
    old = load_models_at(args.baseline)
    ell, b = 10, args.batch or (20 if args.quick else 100)
    lines = [f"## Before / after at N=5, L={ell}, B={b}: revision `{args.baseline}` vs this working tree", "",
             "| threads | SET before (ms) | SET after (ms) | speed-up | EGNN before (ms) | EGNN after (ms) | "
             "SET/EGNN before | SET/EGNN after |", "|---|---|---|---|---|---|---|---|"]
    resets = old_defaults(old, ("egnn", "set"), device)
    threads0 = torch.get_num_threads()
    for threads in args.baseline_threads:
        torch.set_num_threads(threads)
        shape = [f"--data.history={ell}", f"--data.batch_size={b}"]
        cases = time_before_after(old, ("egnn", "set"), shape, device, args, log, resets)
        r = {c.label: c.result["ms"] for c in cases}
        lines.append(f"| {threads} | {r['SET (before)']:.1f} | {r['SET (after)']:.1f} | "
                     f"{r['SET (before)'] / r['SET (after)']:.2f}x | {r['EGNN (before)']:.1f} | {r['EGNN (after)']:.1f} | "
                     f"{r['SET (before)'] / r['EGNN (before)']:.1f} | {r['SET (after)'] / r['EGNN (after)']:.1f} |")
    torch.set_num_threads(threads0)
    return lines + [""]


def run_baseline(args: argparse.Namespace, device: torch.device, log: Callable) -> list[str]:
    """``--baseline REV``: SET and EGNN of revision REV against the working tree at N=5 and N=20 (L=10,
    B=100), the four steps of a point timed round-robin in one process, with their activation memory."""
    old = load_models_at(args.baseline)
    b = args.batch or (20 if args.quick else 100)
    resets = old_defaults(old, ("set", "egnn"), device)
    lines = [f"## Before / after: revision `{args.baseline}` vs this working tree (--baseline)", "",
             f"SET and EGNN (conf/<model>.yaml) at L=10, B={b}, fp32, {torch.get_num_threads()} thread(s): the "
             "revision's models (its `set_lightning/models`, loaded by `git archive`) and this tree's, with the same "
             "settings, batch, objective and optimiser, timed round-robin in one process (both run under the "
             "allocator setting of this tree, see --allocator). Activation memory as in the tables above."
             + reset_note(resets), "",
             "| model | N | step ms before | step ms after | speed-up | activation MiB before | activation MiB after "
             "| memory ratio | repeats |", "|---|---|---|---|---|---|---|---|---|"]
    for n in ((5, 20) if not args.quick else (5,)):
        shape = ["--data.history=10", f"--data.n_particles={n}", f"--data.batch_size={b}"]
        cases = time_before_after(old, ("set", "egnn"), shape, device, args, log, resets)
        for after, before in zip(cases[::2], cases[1::2]):
            ra, rb = after.result, before.result
            lines.append(f"| {after.label.split(' (')[0]} | {n} | {fmt(rb['ms'])} | {fmt(ra['ms'])} | "
                         f"{rb['ms'] / ra['ms']:.2f}x | {fmt(rb['act_mib'])} | {fmt(ra['act_mib'])} | "
                         f"{rb['act_mib'] / ra['act_mib']:.2f}x | {min(ra['repeats'], rb['repeats'])} |")
    return lines + [""]


#: one process of ``--shipped``: SET (or EGNN) of the revision (``before``) or of this tree (``after``), its CPU
#: time per step; run with ``SET_LIGHTNING_KEEP_HEAP=0`` for the revision (glibc's malloc as it was then)
SHIPPED_SNIPPET = """
import statistics, sys, time, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads(1)
import revision_baseline as rb
from step_harness import Case, Stepper
device = torch.device("cpu")
case = Case({name!r}, {shape!r}, "{{model}}")
st = Stepper(case, device)
if {when!r} == "before":
    old = rb.load_models_at({rev!r})
    st = Stepper(case, device, net=old.MODELS[{name!r}](**rb.older_args(old.MODELS[{name!r}], st.init_args)))
st.step(); st.step()
times = []
for _ in range({steps}):
    t0 = time.process_time(); st.step(); times.append(time.process_time() - t0)
print(1e3 * statistics.median(times))
"""


def run_shipped(args: argparse.Namespace, log: Callable) -> list[str]:
    """``--shipped REV``: SET's and EGNN's step as each revision runs it, allocator included: the revision's models
    with glibc's malloc as it was (``SET_LIGHTNING_KEEP_HEAP=0``; REV had no allocator setting) against this
    tree's with its default, in separate 1-thread processes alternated ``rounds`` times (the allocator setting is
    process-wide, so the two cannot share a process as in ``--baseline``)."""
    old = load_models_at(args.shipped)
    b = args.batch or (20 if args.quick else 100)
    rounds = 1 if args.quick else 3
    resets = old_defaults(old, ("set", "egnn"), torch.device("cpu"))
    lines = [f"## As shipped: revision `{args.shipped}` with glibc's malloc vs this tree with its allocator (--shipped)",
             "",
             f"SET and EGNN (conf/<model>.yaml) at L=10, B={b}, fp32, 1 thread: CPU time per training step (median "
             f"of each process's steps after two warm-up steps) in separate processes, the revision's models with "
             f"`SET_LIGHTNING_KEEP_HEAP=0` (malloc as the revision ran it) and this tree's with its default "
             f"(`set_lightning.memory.keep_freed_memory`), alternated {rounds} times; the table gives the median over "
             "the processes. The model-code part alone is `--baseline`, the allocator part alone `--allocator`."
             + reset_note(resets), "",
             "| model | N | step ms, revision as shipped | step ms, this tree | speed-up | steps per process |",
             "|---|---|---|---|---|---|"]
    plan = ((5, 7), (20, 3)) if not args.quick else ((5, 2),)
    for n, steps in plan:
        shape = ["--data.history=10", f"--data.n_particles={n}", f"--data.batch_size={b}"]
        for name in ("set", "egnn"):
            jobs = {when: (SHIPPED_SNIPPET.format(bench=str(REPO / "benchmarks"), name=name, shape=shape + resets[name],
                                                  when=when, rev=args.shipped, steps=steps),
                           {"SET_LIGHTNING_KEEP_HEAP": keep}) for when, keep in (("before", "0"), ("after", "1"))}
            runs = alternated_processes(jobs, rounds)
            before, after = (statistics.median(float(run[0]) for run in runs[when]) for when in ("before", "after"))
            log(f"  shipped {name} N={n}: before {before:.1f} ms, after {after:.1f} ms")
            lines.append(f"| {'SET' if name == 'set' else 'EGNN'} | {n} | {fmt(before)} | {fmt(after)} | "
                         f"{before / after:.2f}x | {steps} |")
    return lines + [""]
