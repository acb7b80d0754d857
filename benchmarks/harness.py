"""The harness every benchmark runs through: arms declared by name, measured one after another
under the same conditions, the machine / version header, JSON written atomically after every arm
(a run that is stopped, or an arm that raises, keeps what was measured) and a printed table.

A benchmark is then a declaration of its arms and one function that measures an arm:

    arms = [Arm("lora_dp", {"epsilon": 8.0}), Arm("lora_no_dp", {"dp": False})]
    head = header("benchmarks.sentiment")
    results = run_arms(arms, measure, save=lambda done: write_json(path, {**head, "arms": done}))
    print(table(results.values(), [Column("accuracy", "final_accuracy", ".4f")]))

torch is imported only to name the CUDA devices, and only when a header is made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from common.infra.machine import PACKAGES, cuda_devices, machine, versions  # noqa: F401
from common.infra.storage import atomic_write_bytes

logger = logging.getLogger(__name__)
Result = TypeVar("Result")


@dataclass(frozen=True)
class Arm:
    """One setting a benchmark measures: its name in the JSON and table, and what sets it apart."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an arm needs a name: it keys the JSON and the table")


@dataclass(frozen=True)
class Column:
    """A table column: its title, the row key (or a function of the row) and a format spec that
    applies to numbers (strings are printed as they are, None as ``missing``)."""

    title: str
    value: str | Callable[[Mapping[str, Any]], Any]
    fmt: str = ""
    missing: str = ""

    def raw(self, row: Mapping[str, Any]) -> Any:
        return self.value(row) if callable(self.value) else row.get(self.value)

    def cell(self, row: Mapping[str, Any]) -> str:
        value = self.raw(row)
        if value is None:
            return self.missing
        return value if isinstance(value, str) else format(value, self.fmt)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the benchmark's docstring: its first paragraph above the
    options, the rest (command lines, what is measured) below them in ``--help``."""
    first, _, rest = (doc or "").strip().partition("\n\n")
    return argparse.ArgumentParser(description=" ".join(first.split()),
                                   epilog=rest.strip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def command(module: str, argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run: ``python -m MODULE`` and its arguments."""
    return " ".join(["python -m " + module, *(sys.argv[1:] if argv is None else argv)])


def header(module: str, load_key: str = "load_average", packages: Sequence[str] = (),
           **extra: Any) -> dict[str, Any]:
    """What every result file starts with: the command, the machine (``load_key`` and ``extra``
    as in ``machine``) and the versions of ``packages`` (default PACKAGES)."""
    return {"command": command(module), "machine": machine(load_key, **extra),
            "versions": versions(*packages)}


def write_json(path: str | Path, body: Any) -> Path:
    """Write ``body`` to ``path`` atomically (a reader sees the old file or the new one, never
    half of one), creating its folder."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode())
    return path


def read_json(path: str | Path, default: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's results to merge into (benchmarks that run data sets one at a time)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def run_arms(arms: Iterable[Arm], measure: Callable[[Arm], Result],
             save: Callable[[dict[str, Result]], None] | None = None) -> dict[str, Result]:
    """Measure every arm in turn, in this process, under the same conditions; after each, ``save``
    gets every result so far. An arm that raises stops the run, with the earlier arms saved."""
    results: dict[str, Result] = {}
    for arm in arms:
        if arm.name in results:
            raise ValueError(f"arm {arm.name!r} is declared twice; arm names key the results")
        started = time.perf_counter()
        try:
            results[arm.name] = measure(arm)
        except BaseException:
            logger.error("arm %s failed after %.0f s; the %d arms before it are kept", arm.name,
                         time.perf_counter() - started, len(results))
            raise
        logger.info("arm %s: %.1f s", arm.name, time.perf_counter() - started)
        if save is not None:
            save(dict(results))
    return results


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column],
          markdown: bool = False) -> str:
    """Rows under their column titles: columns of text left-aligned, numbers right-aligned; with
    ``markdown`` a table to paste into BENCHMARKS.md."""
    rows = list(rows)
    cells = [[c.title for c in columns]] + [[c.cell(r) for c in columns] for r in rows]
    if markdown:
        lines = [f"| {' | '.join(row)} |" for row in cells]
        lines.insert(1, "|" + "|".join("---" for _ in columns) + "|")
        return "\n".join(lines)
    left = [all(isinstance(v, str) for v in map(c.raw, rows) if v is not None) for c in columns]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(" ".join(cell.ljust(w) if is_left else cell.rjust(w)
                              for cell, w, is_left in zip(row, widths, left)).rstrip()
                     for row in cells)
