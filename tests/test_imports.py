"""The package imports one way: entry point -> experiments -> LightningCLI -> Lightning module -> models/data -> errors."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import set_lightning

PACKAGE = Path(set_lightning.__file__).parent
#: layer of each module (by name prefix, longest first); a module may import its own layer or lower ones
LAYERS = {
    "set_lightning.__main__": 0,
    "set_lightning.entry": 0,
    "set_lightning.cli": 0,  # the entry point's deprecated name
    "set_lightning.experiments": 1,
    "set_lightning.lightning_cli": 2,
    "set_lightning.config_schema": 2,
    "set_lightning.settings": 2,
    "set_lightning.lit": 3,
    "set_lightning.callbacks": 3,
    "set_lightning.checkpoints": 3,
    "set_lightning.resume": 3,
    "set_lightning.compute": 3,  # FLOPs, machine, fingerprint: builds models
    "set_lightning.models": 4,
    "set_lightning.data": 4,
    "set_lightning.errors": 5,
    "set_lightning.files": 5,
    "set_lightning.plots": 5,  # figures of predicted trajectories
    "set_lightning.trained": 5,  # the shipped models' folder and manifest
    "set_lightning": 6,  # the package's own __init__ (version, program name)
}


def _modules() -> dict[str, Path]:
    mods = {"set_lightning": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="set_lightning."):
        base = PACKAGE.joinpath(*info.name.split(".")[1:])
        mods[info.name] = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
    return mods


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every set_lightning module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _layer(name: str) -> int:
    return LAYERS[max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)]


def test_no_import_cycles_and_nothing_imports_upward():
    modules = _modules()
    assert {"set_lightning.experiments.worker", "set_lightning.lightning_cli", "set_lightning.errors"} <= set(modules)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) < _layer(a)]
    assert not upward, upward
    assert graph["set_lightning.errors"] == set()

    # depth-first search for a cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    # the walker resolves relative and lazy imports: a function-level import back up is an edge
    fake = {"set_lightning.a": tmp_path / "a.py", "set_lightning.b": tmp_path / "b.py"}
    fake["set_lightning.a"].write_text("from set_lightning import b\n")
    fake["set_lightning.b"].write_text("def f():\n    from . import a\n")
    assert _imports("set_lightning.a", fake["set_lightning.a"], fake) == {"set_lightning.b"}
    assert _imports("set_lightning.b", fake["set_lightning.b"], fake) == {"set_lightning.a"}
