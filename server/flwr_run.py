"""Handing the App to `flwr run`: the run-config file it reads, and the check that the run
finished (`flwr run` exits 0 even when the ServerApp failed)."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import RunConfig
from common.errors import ConsortiumError
from server.monitoring_report import SUMMARY_JSON

APP_DIR = Path(__file__).resolve().parent.parent  # the Flower App: pyproject.toml is here


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_run_config(config: RunConfig, path: Path) -> None:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.to_mapping().items()))


def resume_hint(out: Path) -> str:
    if any((out / "checkpoints").glob("round-*.json")):
        return f"the checkpoints in {out} let you finish it: rerun the command with --resume"
    return "no round had finished; rerun the command to start again"


def check_finished(out: Path, returncode: int, monitor: bool = False,
                   since: float = 0.0) -> None:
    """`flwr run` exits 0 even when the ServerApp failed: the exported model is the proof; a
    monitoring run's is its monitoring.json, written after ``since`` (a time.time())."""
    proof = out / SUMMARY_JSON if monitor else out / "model" / "config.json"
    if returncode != 0 or not proof.exists() or proof.stat().st_mtime < since:
        hint = f"; {resume_hint(out)}" if (out / "checkpoints").is_dir() else ""
        raise ConsortiumError(f"the run did not finish (flwr exit code {returncode}); see the "
                              f"log above{hint}")
