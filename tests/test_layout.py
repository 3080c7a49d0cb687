"""Engine layout: every engine module imports on its own in a fresh interpreter, and the
engine's module-level imports form no cycle (checkpoint formats do not need the run store)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def engine_modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ENGINE.rglob("*.py")):
        parts = list(p.relative_to(ENGINE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["torchdeck", *parts])] = p
    return out


def module_level_imports(name: str, path: Path) -> set[str]:
    """torchdeck modules imported at module level (not inside functions, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("torchdeck"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("torchdeck"):
                    found.add(mod)
                    found.update(f"{mod}.{a.name}" for a in node.names)

    visit(tree.body)
    return found


def test_no_import_cycles_in_the_engine():
    mods = engine_modules()
    graph = {m: {d for d in module_level_imports(m, p) if d in mods and d != m} for m, p in mods.items()}
    # A package's __init__ importing its own submodules is not a cycle with them.
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert cycles == []


def test_checkpoint_formats_do_not_need_runs():
    mods = engine_modules()
    for m, p in mods.items():
        if m.startswith("torchdeck.checkpoints"):
            assert not {d for d in module_level_imports(m, p) if d.startswith("torchdeck.runs")}, m


# An integration imports its framework, an optional dependency (the `real` extra): without one
# of these, its import fails saying what to install.
FRAMEWORKS = {"torchdeck.integrations.lightning": ("lightning", "pytorch_lightning"),
              "torchdeck.integrations.transformers": ("transformers",)}


@pytest.mark.parametrize("module", sorted(engine_modules()))
def test_each_engine_module_imports_alone(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    needs = FRAMEWORKS.get(module)
    if needs and not any(importlib.util.find_spec(n) for n in needs):
        assert out.returncode != 0 and f"{module} needs" in out.stderr and "pip install" in out.stderr, out.stderr
        return
    assert out.returncode == 0, out.stderr
