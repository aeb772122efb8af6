"""The package map in ARCHITECTURE.md, checked: which layer may import which, no import
cycle between modules (imports for type checking and inside functions count), and no
module too long to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import mesh_llm

PACKAGE = Path(mesh_llm.__file__).parent
BASE = {"errors", "changes", "logutil", "netutil", "__init__"}  # small shared utilities
# Each layer and what it may import besides itself and BASE.
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "mesh": set(),
    "api": {"models"},
    "inference": {"models", "mesh", "api"},
    "console": {"api"},
    "node": {"models", "mesh", "api", "inference", "console"},
    "deploy": {"models", "mesh", "node"},
    "cli": {"models", "mesh", "api", "inference", "console", "node", "deploy"},
    "__main__": {"cli"},
}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The mesh_llm modules `path` imports, by absolute name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            if node.module is None:
                out.update(f"{target}.{a.name}" for a in node.names)
            else:
                out.add(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mesh_llm"):
            out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mesh_llm"))
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imports_of(path):
            # "from . import x" names a module or a name in a package: keep modules only
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = sorted(
        f"{a} imports {b}" for a, targets in graph().items() for b in targets
        if layer(a) != layer(b) and layer(b) not in BASE
        and layer(b) not in ALLOWED.get(layer(a), set()))
    assert wrong == []


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert [" -> ".join(c) for c in cycles] == []


def test_every_module_is_short_enough_to_read() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
