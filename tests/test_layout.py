"""The package's layering, read from its source: no import circles, matplotlib only in
curvature.plots, no module named like the function its package exports, the rooms
importing no sibling's private names and touching no other object's private state."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "curvature"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import statement, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def _edges() -> dict[str, set[str]]:
    """Module -> package modules it imports (``from curvature import x`` counts as
    importing ``curvature.x``; a submodule's import of its own package is not an edge)."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for module, names in _imports(name, path):
            for target in [module] + [f"{module}.{n}" for n in names]:
                if target in MODULES and target != name and not name.startswith(target + "."):
                    edges.setdefault(name, set()).add(target)
    return edges


def test_no_import_circles():
    edges, state, stack, circles = _edges(), {}, [], []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == "open":
                circles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for m in MODULES:
        if m not in state:
            visit(m)
    assert circles == []


def test_matplotlib_only_in_the_plotting_room():
    users = {name for name, path in MODULES.items()
             for module, _ in _imports(name, path) if module.split(".")[0] == "matplotlib"}
    assert users and all(u == "curvature.plots" or u.startswith("curvature.plots.")
                         for u in users), sorted(users)


@pytest.mark.parametrize("package", ["curvature.operators", "curvature.pipeline", "curvature.plots",
                                     "curvature.algorithms"])
def test_submodules_are_modules(package):
    """``import curvature.pipeline.x`` gives the module, never a function of that name."""
    pkg = importlib.import_module(package)
    for name in MODULES:
        if name.startswith(package + "."):
            attr = getattr(pkg, name.rsplit(".", 1)[1])
            assert isinstance(attr, types.ModuleType), name


def test_top_level_submodules_are_modules():
    """``import curvature.x`` gives the module for every file or folder directly in the
    package (``cv.trace`` is a function, so there is no module ``curvature.trace``)."""
    import curvature

    children = {n.split(".")[1] for n in MODULES if n.count(".") >= 1}
    assert {"algorithms", "checks", "estimators"} <= children
    for child in sorted(children):
        module = importlib.import_module(f"curvature.{child}")
        assert getattr(curvature, child) is module, child
    for function in ("eigenvalues", "trace", "diagonal", "spectral_density"):
        assert function not in children and callable(getattr(curvature, function))


ROOMS = ("pipeline", "plots", "atomic", "inputs", "data_loop", "risk", "batches", "operators",
         "landscape", "monitor", "train", "algorithms", "estimators", "checks")
"""Rooms held to the no-private-names rules (the data loop, the operators and every room
that sums over data through it, and the application rooms)."""


def _rooms() -> list[str]:
    return [n for n in MODULES if n.split(".")[1:2] and n.split(".")[1] in ROOMS]


def test_rooms_import_no_private_names():
    found = [(n, m, x) for n in _rooms() for m, names in _imports(n, MODULES[n])
             if m.startswith("curvature") for x in names
             if x.startswith("_") and f"{m}.{x}" not in MODULES]
    assert found == []


TORCH_INTERNALS = {"_version", "_forward_cls"}
"""torch attributes the rooms read: a tensor's version counter, an autograd node's Function."""


def test_rooms_touch_no_private_attributes_of_other_objects():
    """``x._name`` only on ``self``/``cls`` (never another object's private state, e.g. an
    operator reaching into the risk's internals), torch internals named above excepted."""
    found = []
    for n in _rooms():
        for node in ast.walk(ast.parse(MODULES[n].read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in TORCH_INTERNALS
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append((n, node.lineno, ast.unparse(node)))
    assert found == []


def test_room_docstrings():
    """Every room of the data loop and the operators says at its top what it owns."""
    for n in _rooms():
        doc = ast.get_docstring(ast.parse(MODULES[n].read_text()))
        assert doc and len(doc) > 40, n
