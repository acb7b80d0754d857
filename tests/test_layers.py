"""One-way layers, read from the code's own imports (lazy ones inside functions included):
common <- client / server <- simulations <- benchmarks between the top folders, and inside common
its parts (subpackages and top-level modules) in the order of LAYERS; no import cycles; at most
MAX_TOP_MODULES modules at the top of common/; task code in common/ free of Flower outside
common/wire/."""

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
# common's parts, the ground first: a part imports only parts on lower rows (and itself); parts
# on one row do not import each other
LAYERS = (
    ("errors", "protocol"),  # the vocabulary: the exceptions, the names of the Messages' keys
    ("infra",),  # storage, processes, logs, console, keys, the machine
    ("deid", "privacy"),  # de-identification; the privacy ledger, σ, the DP planner
    ("data",),  # a partner's text files, the demo data
    ("training",),  # DP-SGD, batches, schedules, cached features
    ("evaluation",),  # scoring, metrics, groups, the privacy audit, the oracle
    ("tasks",),  # the task registry, each task and its own data code
    ("config",),  # the run configuration: it checks the task's name
    ("sources", "partition", "wire", "model"),  # labels, simulated slices, the wire, the model
    ("partner_rows", "code_hash"),  # a partner's rows; the hash a partner approves
)
MAX_TOP_MODULES = 15


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


def _part(module: str) -> str | None:
    """The part of common a module belongs to (``common.privacy.ledger`` -> privacy)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "common" and len(parts) > 1 else None


def _rank() -> dict[str, int]:
    return {part: row for row, parts in enumerate(LAYERS) for part in parts}


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import inside common that does not run down LAYERS (or stays in its own part)."""
    rank = _rank()
    wrong = []
    for name, targets in graph.items():
        for target in targets:
            mine, theirs = _part(name), _part(target)
            if mine is None or theirs is None or mine == theirs:
                continue
            if mine not in rank or theirs not in rank:
                wrong.append(f"{name} imports {target}: place both parts in LAYERS")
            elif rank[theirs] >= rank[mine]:
                wrong.append(f"{name} ({mine}, row {rank[mine]}) imports {target} "
                             f"({theirs}, row {rank[theirs]})")
    return sorted(wrong)


def _common_parts() -> set[str]:
    common = ROOT / "common"
    return ({p.stem for p in common.glob("*.py") if p.stem != "__init__"}
            | {p.parent.name for p in common.glob("*/__init__.py")})


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


def test_every_part_of_common_stands_on_one_layer() -> None:
    placed = [part for parts in LAYERS for part in parts]
    assert len(placed) == len(set(placed)), "a part stands on two rows of LAYERS"
    assert _common_parts() == set(placed), (
        f"not in LAYERS: {sorted(_common_parts() - set(placed))}; "
        f"in LAYERS, not in common/: {sorted(set(placed) - _common_parts())}")


def test_common_layers_point_down() -> None:
    wrong = upward(_graph())
    assert not wrong, "\n".join(wrong)


def test_common_keeps_few_modules_at_its_top() -> None:
    top = sorted(p.name for p in (ROOT / "common").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_MODULES, (
        f"{len(top)} modules at the top of common/ (at most {MAX_TOP_MODULES}): {top}; "
        "move some into the subpackage that owns their concern")


def test_each_subpackage_says_what_it_owns() -> None:
    for init in sorted((ROOT / "common").rglob("__init__.py")):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)}"


def test_task_code_imports_no_flwr() -> None:
    """Task code in common/ (data, model, training, privacy) does not import flwr; common/wire/
    is the one shared place that speaks Flower's records. flwr-datasets is a data library, not
    the runtime."""
    wire = ROOT / "common" / "wire"
    for path in (ROOT / "common").rglob("*.py"):
        if wire in path.parents:
            continue
        flwr = [m for m in _imports(path) if m == "flwr" or m.startswith("flwr.")]
        assert not flwr, f"{path.relative_to(ROOT)} imports {sorted(flwr)}"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from server.outputs import json_safe\n")
    assert "server.outputs" in _imports(probe)


def test_the_checker_sees_an_import_up_the_layers() -> None:
    graph = {"common.infra.storage": {"common.training.loop", "common.errors"},
             "common.privacy.ledger": {"common.deid.deidentify"},
             "common.training.loop": {"common.training.batching", "common.privacy.planner"},
             "common.nowhere": {"common.errors"}}
    assert upward(graph) == [
        "common.infra.storage (infra, row 1) imports common.training.loop (training, row 4)",
        "common.nowhere imports common.errors: place both parts in LAYERS",
        "common.privacy.ledger (privacy, row 2) imports common.deid.deidentify (deid, row 2)"]
