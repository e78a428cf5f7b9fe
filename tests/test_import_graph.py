"""The import graph of our five packages, read statically (ast) from every module,
its module-level and its function-level imports alike (a lazy import is still a
dependency). Dependencies point one way (DESIGN §2): no cycles; nothing outside
service/ imports service; solver imports nothing of ours; and what the API
process loads (service.main, service.api.*, service.schemas, service.jobs,
service.crud, service.dashboard, and everything they reach) imports no torch-side
library.

An import names the most specific module it reaches: `from a.b import c` is an
edge to a.b.c when that is a module, else to a.b. Cycles are looked for between
those named modules; what a module loads counts its packages' __init__ too.
Imports under `if TYPE_CHECKING:` never run and are left out; dynamic ones
(`importlib.import_module`) cannot be read and are not followed."""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("kernels", "sensitivity", "solver", "workers", "service")
API_ROOTS = ("service.main", "service.api", "service.schemas", "service.jobs", "service.crud",
             "service.dashboard")
TORCH_SIDE = ("torch", "triton", "pulp", "transformers", "safetensors", "captum", "pyhessian")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def _ours(name: str) -> str | None:
    """The most specific of our modules that `name` is or lies in."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Full dotted names an import statement reaches."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
            for alias in node.names]


@cache
def imports() -> dict[str, tuple[set[str], set[str]]]:
    """module -> (our modules it names, top-level names of the libraries it imports)."""
    out = {}
    for module, path in modules().items():
        ours, libraries = set(), set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, node):
                if target.split(".")[0] in PACKAGES:
                    found = _ours(target)
                    if found and found != module:
                        ours.add(found)
                else:
                    libraries.add(target.split(".")[0])
        out[module] = (ours, libraries)
    return out


def _with_packages(module: str) -> list[str]:
    """The module and the packages above it, whose __init__ loading it runs."""
    parts = module.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules()]


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle for every strongly connected group of modules (Tarjan)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(set(group))

    for m in graph:
        if m not in index:
            visit(m)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, list[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, for the report."""
    start = min(group)
    parent, queue = {start: None}, deque([start])
    while queue:
        v = queue.popleft()
        for w in graph[v]:
            if w == start:
                path = [v]  # back from v to start
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in group and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle in {group}")


def test_the_graph_is_read():
    assert {"service.main", "workers.pipeline", "solver", "kernels.scheme"} <= set(modules())
    ours, libraries = imports()["workers.latency"]
    assert "kernels.latency" in ours and "torch" in libraries
    assert "service.worker.celery_app" in imports()["service.cli.admin"][0]  # a function-level import
    assert "service.cli.exit_codes" in imports()["service.cli.local"][0]  # `from pkg import module`
    found = cycles({"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": [], "e": ["e"]})
    assert found == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    found = cycles({m: sorted(imports()[m][0]) for m in modules()})
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_nothing_below_the_service_imports_it():
    wrong = sorted(f"{m} imports {t}" for m, (ours, _) in imports().items()
                   if not m.startswith("service") for t in ours if t.split(".")[0] == "service")
    assert not wrong, wrong


def test_the_solver_imports_nothing_of_ours():
    wrong = sorted(f"{m} imports {t}" for m, (ours, _) in imports().items()
                   if m.split(".")[0] == "solver" for t in ours if t.split(".")[0] != "solver")
    assert not wrong, wrong


def test_the_api_process_loads_no_torch_side_library():
    roots = [m for m in modules() if any(m == r or m.startswith(r + ".") for r in API_ROOTS)]
    parent: dict[str, str | None] = {m: None for r in roots for m in _with_packages(r)}
    queue = deque(parent)
    while queue:
        v = queue.popleft()
        for w in sorted(imports()[v][0]):
            for m in _with_packages(w):
                if m not in parent:
                    parent[m] = v
                    queue.append(m)
    wrong = []
    for m in sorted(parent):
        for library in sorted(imports()[m][1] & set(TORCH_SIDE)):
            chain = [m]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            wrong.append(f"{library}: " + " <- ".join(chain))
    assert not wrong, "\n".join(wrong)
