"""The package's shape, checked: the import graph has no cycle, the core stays model-agnostic and short.

Read from the sources (``ast``), not by importing them: every import counts, a function-level one
included (it hides a cycle rather than removing it), except those under ``if TYPE_CHECKING:``, which
never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "whisper_spec"
MAX_CORE_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (a module's parent packages run first, so they count)."""
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(_module_name(path))
    return found


GRAPH = {name: _imported(path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return components


def _package(module: str) -> str:
    """The first-level part of the package a module belongs to (``whisper_spec.whisper``, ``whisper_spec.model``)."""
    return ".".join(module.split(".")[:2])


def test_the_module_graph_has_no_cycle():
    assert _cycles(GRAPH) == []


def test_the_first_level_packages_import_one_another_in_one_direction():
    packages: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        if module != "whisper_spec":
            packages.setdefault(_package(module), set()).update(_package(m) for m in imported if m != "whisper_spec")
    for package, imported in packages.items():
        imported.discard(package)
    assert _cycles(packages) == []


def test_the_core_knows_nothing_of_audio_whisper_or_text():
    for module, imported in GRAPH.items():
        if module.startswith("whisper_spec.core"):
            assert all(m.startswith("whisper_spec.core") or m == "whisper_spec" for m in imported), (module, imported)


def test_every_function_of_the_core_fits_on_one_screen():
    long = []
    for path in (PACKAGE / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CORE_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []


def test_the_checks_see_the_imports_they_check():
    """Guards the checks themselves: a function-level relative import, and a cycle made on purpose."""
    assert "whisper_spec.whisper.ctranslate2" in GRAPH["whisper_spec.whisper.checkpoints"]
    assert "whisper_spec.core.loop" in GRAPH["whisper_spec.whisper.engine"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
