"""The import graph of puma/: no cycle (imports inside functions count), and only the tracking module
reaches MLflow, Prefect or DVC."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[2] / "puma"
FORBIDDEN = ("mlflow", "prefect", "dvc")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in its file (relative imports resolved; ``from a import b``
    counts ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if _is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return found


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for name in MODULES:
        for target in _imports(name):
            if target in MODULES and target != name:
                graph.add_edge(name, target)
    return graph


def test_resolver_sees_lazy_relative_and_submodule_imports(tmp_path):
    graph = _graph()
    # `from puma.cli import data, model`: the names are submodules.
    assert {"puma.cli.data", "puma.cli.model"} <= set(graph.successors("puma.cli"))
    # An import inside a function (save_pruned imports load_processor lazily).
    assert "puma.model.processor" in graph.successors("puma.model.prune")
    # Relative imports resolve against the package (a module file and an __init__).
    fake = {"puma.a.b": tmp_path / "b.py", "puma.a": tmp_path / "__init__.py", "puma.a.c": tmp_path / "c.py"}
    fake["puma.a.b"].write_text("def f():\n    from . import c\n    from .. import a\n")
    fake["puma.a"].write_text("from .b import f\n")
    fake["puma.a.c"].write_text("")
    globals()["MODULES"], saved = fake, MODULES
    try:
        assert {"puma.a.c", "puma.a"} <= _imports("puma.a.b")
        assert "puma.a.b" in _imports("puma.a")
    finally:
        globals()["MODULES"] = saved


def test_no_import_cycle():
    graph = _graph()
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    raise AssertionError("import cycle: " + " -> ".join([a for a, _ in cycle] + [cycle[-1][1]]))


def test_only_tracking_imports_mlflow_prefect_or_dvc():
    offenders = {}
    for name in MODULES:
        if name == "puma.tracking" or name.startswith("puma.tracking."):
            continue
        bad = sorted(m for m in _imports(name) if m.split(".")[0] in FORBIDDEN)
        if bad:
            offenders[name] = bad
    assert not offenders, f"only puma.tracking may import {FORBIDDEN}: {offenders}"
