"""The layout's rules, read from the code's own imports (ast), so they hold from now on:
common/ never imports Flower; only common.cli and common.launch print; server/ and client/ never
import each other; no package imports another in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "server", "client")
PRINTING = ("common.cli", "common.launch")  # applications: they own the terminal


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module `name` imports, at the top or inside a function, resolved to full dotted names."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return found


def _internal(name: str) -> set[str]:
    return {m for m in _imports(name) if m in MODULES and m != name}


def test_the_layout_is_read_whole():
    assert {"common.integrity.watermark.api", "common.secure.he", "server.app", "client.app"} <= set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "common"])
def test_common_never_imports_flower(name):
    flower = sorted(m for m in _imports(name) if m.split(".")[0] == "flwr")
    assert not flower, f"{name} imports {flower}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "common"
                                  and not m.startswith(PRINTING)])
def test_a_library_never_prints(name):
    tree = ast.parse(MODULES[name].read_text())
    calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not calls, f"{name} calls print() on lines {calls}"


@pytest.mark.parametrize("side, other", [("server", "client"), ("client", "server")])
def test_server_and_client_never_import_each_other(side, other):
    crossing = {m: sorted(i for i in _imports(m) if i.split(".")[0] == other)
                for m in MODULES if m.split(".")[0] == side}
    assert not {m: i for m, i in crossing.items() if i}


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "common"])
def test_common_never_imports_the_apps(name):
    apps = sorted(m for m in _imports(name) if m.split(".")[0] in ("server", "client"))
    assert not apps, f"{name} imports {apps}"


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def _package(module: str) -> str:
    """The room a module lives in: common.<package> (or the top module), server, client."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "common" else parts[0]


def test_no_import_circle():
    cycle = _find_circle({m: _internal(m) for m in MODULES})
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        graph.setdefault(_package(module), set()).update(
            _package(m) for m in _internal(module) if _package(m) != _package(module))
    cycle = _find_circle(graph)
    assert cycle is None, "packages import each other: " + " -> ".join(cycle or [])
