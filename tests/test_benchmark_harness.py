"""The benchmark harness (benchmarks/harness.py): arms side by side, the header, atomic JSON that
keeps what was measured when an arm raises, and tables."""

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness
from benchmarks.harness import Arm, Column


@pytest.fixture(autouse=True)
def no_cuda_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "cuda_devices", lambda: None)  # no torch import here


def test_arms_run_side_by_side_and_every_result_is_saved_as_it_comes() -> None:
    seen: list[str] = []
    saved: list[dict[str, Any]] = []
    arms = [Arm("plain", {"x": 1}), Arm("dp", {"x": 2}), Arm("ghost", {"x": 3})]

    def measure(arm: Arm) -> dict[str, int]:
        seen.append(arm.name)
        return {"y": 10 * arm.settings["x"]}

    results = harness.run_arms(arms, measure, save=saved.append)
    assert seen == ["plain", "dp", "ghost"]  # declared order, one after another
    assert results == {"plain": {"y": 10}, "dp": {"y": 20}, "ghost": {"y": 30}}
    assert [list(s) for s in saved] == [["plain"], ["plain", "dp"], ["plain", "dp", "ghost"]]


def test_arm_names_key_the_results_so_they_must_be_unique_and_given() -> None:
    with pytest.raises(ValueError, match="'a' is declared twice"):
        harness.run_arms([Arm("a"), Arm("a")], lambda arm: 0)
    with pytest.raises(ValueError, match="needs a name"):
        Arm("")


def test_json_is_written_atomically_with_the_header(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["bench", "--rounds", "2"])
    head = harness.header("benchmarks.example", "load_average_at_start", packages=("pytest",),
                          extra_key=7)
    assert head["command"] == "python -m benchmarks.example --rounds 2"
    assert set(head["machine"]) >= {"platform", "python", "cpus", "load_average_at_start",
                                    "cuda_devices", "extra_key"}
    assert head["machine"]["extra_key"] == 7 and set(head["versions"]) == {"pytest"}
    target = tmp_path / "results" / "example.json"
    harness.write_json(target, {**head, "arms": {"a": 1}})
    harness.write_json(target, {**head, "arms": {"a": 1, "b": 2}})
    assert json.loads(target.read_text()) == {**json.loads(json.dumps(head)),
                                              "arms": {"a": 1, "b": 2}}
    assert [p.name for p in target.parent.iterdir()] == ["example.json"]  # no temp file left
    assert harness.read_json(target, {})["arms"] == {"a": 1, "b": 2}
    assert harness.read_json(tmp_path / "absent.json", {"datasets": {}}) == {"datasets": {}}


def test_an_arm_that_raises_stops_the_run_and_keeps_the_arms_before_it(tmp_path: Path) -> None:
    target = tmp_path / "partial.json"

    def measure(arm: Arm) -> float:
        if arm.name == "broken":
            raise RuntimeError("out of memory")
        return arm.settings["value"]

    arms = [Arm("first", {"value": 0.5}), Arm("second", {"value": 0.75}), Arm("broken"),
            Arm("never")]
    with pytest.raises(RuntimeError, match="out of memory"):
        harness.run_arms(arms, measure,
                         save=lambda done: harness.write_json(target, {"arms": done}))
    assert json.loads(target.read_text()) == {"arms": {"first": 0.5, "second": 0.75}}


def test_table_aligns_formats_and_fills_missing_cells() -> None:
    rows = [{"arm": "lora_dp", "acc": 0.91234, "eps": 7.99},
            {"arm": "lora_no_dp", "acc": 0.9, "eps": None}]
    columns = [Column("arm", "arm"), Column("accuracy", "acc", ".3f"),
               Column("max ε", "eps", ".2f", missing="∞"),
               Column("note", lambda r: "private" if r["eps"] else "not private")]
    assert harness.table(rows, columns).splitlines() == [
        "arm        accuracy max ε note",
        "lora_dp       0.912  7.99 private",
        "lora_no_dp    0.900     ∞ not private"]  # text left-aligned, numbers right-aligned
    assert harness.table(rows, columns, markdown=True).splitlines() == [
        "| arm | accuracy | max ε | note |",
        "|---|---|---|---|",
        "| lora_dp | 0.912 | 7.99 | private |",
        "| lora_no_dp | 0.900 | ∞ | not private |"]


def test_parser_is_described_by_the_benchmark_docstring() -> None:
    doc = """Benchmark: one thing
    against another.

        python -m benchmarks.example [--out results]
    """
    parser = harness.parser(doc)
    assert parser.description == "Benchmark: one thing against another."
    assert "python -m benchmarks.example" in parser.format_help()
