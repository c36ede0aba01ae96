"""Print lrscan's module import graph problems: import cycles, modules over the size limit and
modules without a docstring (which should say the module's one job).

Every import counts, at module level, inside a function (a function-level import still ties the
two modules together) or under ``if TYPE_CHECKING:``. Relative imports are resolved, and `from pkg import name` counts as an import
of `pkg.name` where `name` is a submodule and of `pkg` otherwise. The implicit import of a parent
package (Python runs `pkg/__init__.py` before `pkg.mod`) is not counted: every submodule would
otherwise form a cycle with a package whose `__init__` imports it.
A registry's reference to a built-in entry by name (``"lrscan.analyze.metrics:metrics.analyzer"``,
loaded on first lookup as an entry point is) is data, not an import statement, and is not counted.

Usage: python benchmarks/import_graph.py [PACKAGE_DIR] [--json]
Exit status 1 when there is a cycle, 0 otherwise (the other findings are reported, not failed on).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

MAX_LINES = 600


def module_names(package_dir: Path) -> dict[str, Path]:
    """Map every module's dotted name to its file, `pkg/__init__.py` standing for `pkg`."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _deepest_known(target: str, known: set[str]) -> str | None:
    """The longest prefix of a dotted name that is one of the package's modules."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules one import statement in `module` brings in."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
    else:
        return set()
    return {m for m in (_deepest_known(t, known) for t in targets) if m is not None}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Each module's set of the package's modules it imports anywhere in its body."""
    names = module_names(package_dir)
    known = set(names)
    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            edges |= _imported(node, module, is_package, known)
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest closed path through a component's first module, to show how the cycle closes."""
    members = set(component)
    start = component[0]
    previous, frontier = {start: None}, [start]
    while frontier:
        reached = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    reached.append(child)
        frontier = reached
    return component


def oversized(package_dir: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Modules with more than `limit` lines, with their line counts."""
    counts = {m: len(p.read_text().splitlines()) for m, p in module_names(package_dir).items()}
    return {m: n for m, n in sorted(counts.items()) if n > limit}


def undocumented(package_dir: Path) -> list[str]:
    """Modules without a docstring."""
    return [m for m, p in module_names(package_dir).items() if not ast.get_docstring(ast.parse(p.read_text()))]


def report(package_dir: Path) -> dict:
    graph = import_graph(package_dir)
    found = cycles(graph)
    return {"cycles": [{"modules": c, "path": cycle_path(graph, c)} for c in found],
            "oversized": oversized(package_dir), "undocumented": undocumented(package_dir), "modules": len(graph)}


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--json"]
    package_dir = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "lrscan"
    result = report(package_dir)
    if "--json" in argv:
        print(json.dumps(result))
    else:
        print(f"{result['modules']} modules, {len(result['cycles'])} import cycles, "
              f"{len(result['oversized'])} modules over {MAX_LINES} lines, {len(result['undocumented'])} without a docstring")
        for c in result["cycles"]:
            print(f"cycle ({len(c['modules'])} modules): {', '.join(c['modules'])}")
            print(f"  e.g. {' -> '.join(c['path'])}")
        for module, n in result["oversized"].items():
            print(f"over {MAX_LINES} lines: {module} ({n})")
        for module in result["undocumented"]:
            print(f"no docstring: {module}")
    return 1 if result["cycles"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
