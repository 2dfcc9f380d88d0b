"""The package's shape, as the README's layout promises it: imports run down the stages (a module imports from its
own stage or a lower one, never a higher one, and no two modules import each other, even through others), no module
passes 300 lines and no class 150. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mlm"
# Lowest first: what a run folder is on disk, then the data, the fast paths, the model, training, serving and the app.
STAGES = ("base", "runs", "data", "fast", "model", "train", "serve", "ui")
BASE = {"mlm.errors", "mlm.hub", "mlm.cache", "mlm.config", "mlm.presets", "mlm"}
MAX_MODULE_LINES = 300
MAX_CLASS_LINES = 150


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    if module in BASE:
        return 0
    room = module.split(".")[1]
    if room not in STAGES:
        raise AssertionError(f"{module} is in no stage: add its folder to STAGES or its name to BASE")
    return STAGES.index(room)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from mlm.x import y` counts mlm.x.y where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("mlm"):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    graph = {}
    for name, path in modules().items():
        # a package's own modules are its parts, not something it depends on (mlm.train -> mlm.train.trainer)
        graph[name] = {m for m in imported(path, known) if m != name and not name.startswith(m + ".")}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} (stage {STAGES[stage(module)]}) imports {other} (stage {STAGES[stage(other)]})"
            for module, others in graph.items() for other in sorted(others) if stage(other) > stage(module)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_run_down_the_stages():
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_checks_notice_an_upward_import_and_a_cycle():
    graph = {"mlm.runs.metrics": {"mlm.train.trainer"}, "mlm.train.trainer": {"mlm.runs.metrics"},
             "mlm.data.masking": {"mlm.errors"}}
    assert upward_imports(graph) == ["mlm.runs.metrics (stage runs) imports mlm.train.trainer (stage train)"]
    assert cycles(graph) == [["mlm.runs.metrics", "mlm.train.trainer"]]
    with pytest.raises(AssertionError, match="in no stage"):
        stage("mlm.elsewhere.thing")


def test_lazy_imports_count(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from mlm.serve import registry\n    import mlm.ui.app\n")
    assert imported(source, {"mlm.serve", "mlm.serve.registry", "mlm.ui", "mlm.ui.app"}) == {
        "mlm.serve", "mlm.serve.registry", "mlm.ui.app"}


def test_modules_and_classes_stay_small():
    too_long = []
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
