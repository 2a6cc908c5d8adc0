"""The package's layers: every import of a warmstart module points down (or stays in its own layer), and no two
modules import each other, directly or round a longer cycle. Lazy imports inside functions count too.

Layers, bottom to top (README "Layout"): the base modules (errors, atomic, jsonfile, outputs, signals, tables,
progress, examples, config)
-> runtime/ -> data/ -> models/ -> eval/ -> train/ -> recipes/ -> report/ -> demo/ -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "warmstart"
LAYERS = [
    {"errors", "atomic", "jsonfile", "outputs", "signals", "tables", "progress", "examples", "config", "__init__", "__main__"},
    {"runtime"},
    {"data"},
    {"models"},
    {"eval"},
    {"train"},
    {"recipes"},
    {"report"},
    {"demo"},
    {"cli"},
]
# __main__ only runs the CLI: it is the entry point, above everything
TOP_ONLY = {"__main__"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every warmstart module `path` imports (`from warmstart.x import y` counts y when it is a module)."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "warmstart"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "warmstart":
                continue
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                out.add(sub if _exists(sub) else name)
    out.discard(mod)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key in TOP_ONLY:
        return len(LAYERS)
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module}: in no layer; add its package to LAYERS and to the README's Layout")


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in SRC.rglob("*.py")}


def test_every_module_is_in_a_layer():
    for module in _graph():
        _layer(module)


def test_imports_point_down():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in sorted(_graph().items())
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle through them
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from warmstart.train.loop import train\n", "up"),
    ("import warmstart.report\n", "up"),
    ("def f():\n    from warmstart.recipes import sweep\n", "up"),
    ("from warmstart.errors import UserError\n", "down"),
])
def test_the_walk_sees_upward_imports(tmp_path, source, expected):
    """The check itself: a data/ module importing train/, report/ or (lazily) recipes/ is caught."""
    fake = SRC / "data" / "_layer_probe.py"
    try:
        fake.write_text(source)
        targets = _imports(fake)
        assert targets, source
        up = any(_layer(t) > _layer("warmstart.data._layer_probe") for t in targets)
        assert up == (expected == "up")
    finally:
        fake.unlink()
