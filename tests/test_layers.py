"""One-way layers, read from the code's own imports (lazy ones inside functions included):
common <- client / server <- simulations <- benchmarks, no import cycles, and task code in
common/*.py free of Flower."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "client", "server", "simulations", "benchmarks")
MAY_NOT_IMPORT = {
    "common": {"client", "server", "simulations", "benchmarks"},
    "client": {"server", "simulations", "benchmarks"},
    "server": {"client", "simulations", "benchmarks"},
    "simulations": {"benchmarks"},
    "benchmarks": set(),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if p.is_file()}
    return {name: {m for m in _imports(path) if m in files} for name, path in files.items()}


def test_layers_point_one_way() -> None:
    wrong = [f"{name} imports {target}"
             for name, targets in _graph().items()
             for target in targets
             if target.split(".")[0] in MAY_NOT_IMPORT[name.split(".")[0]]]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_task_code_imports_no_flwr() -> None:
    """common/*.py is task code (data, model, training, privacy); common/wire/ is the one shared
    place that speaks Flower's records. flwr-datasets is a data library, not the runtime."""
    for path in (ROOT / "common").glob("*.py"):
        flwr = [m for m in _imports(path) if m == "flwr" or m.startswith("flwr.")]
        assert not flwr, f"{path.relative_to(ROOT)} imports {sorted(flwr)}"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from server.outputs import json_safe\n")
    assert "server.outputs" in _imports(probe)
