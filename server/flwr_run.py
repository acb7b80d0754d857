"""Handing the App to `flwr run`: the App's files (staged, so the FAB build skips the virtual
environment), the run-config file it reads, and the check that the run finished (`flwr run`
exits 0 even when the ServerApp failed)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pathspec

from common.config import RunConfig
from common.infra.console import LOG_FILE, stop_reason
from common.errors import ConsortiumError, RunStopped
from server.monitoring_report import SUMMARY_JSON

APP_DIR = Path(__file__).resolve().parent.parent  # the Flower App: pyproject.toml is here
# folders `flwr build` leaves out of every FAB whatever .gitignore says (flwr/supercore/constant.py
# APP_PUBLISH_EXCLUDE_PATTERNS: .flwr/** and .venv/** at the top, __pycache__ anywhere)
NEVER_PUBLISHED = {".flwr", ".venv"}


def staged_app(into: Path, app_dir: Path = APP_DIR) -> Path:
    """A copy of ``app_dir`` for `flwr run` to build its FAB from: the same FAB, built in about
    a second instead of ten. Flower 1.41's `flwr build` resolves every file under the App before
    it filters them (flwr/cli/utils.py ``collect_files``), the 60,000 files of a virtual
    environment in the checkout included. This copy leaves out only folders whose every file
    Flower would leave out too (``NEVER_PUBLISHED``, ``__pycache__``, and folders .gitignore
    ignores whole, unless it has a ``!`` pattern) and, like Flower, symbolic links; Flower then
    filters the copy with its own rules, so the FAB and its hash are what `flwr run app_dir`
    builds (tests/test_flwr_run.py builds both)."""
    ignore_file = app_dir / ".gitignore"
    lines = [line.strip() for line in (ignore_file.read_text(encoding="utf-8").splitlines()
                                       if ignore_file.is_file() else [])]
    patterns = [line for line in lines if line and not line.startswith("#")]
    with warnings.catch_warnings():  # pathspec 1.x deprecates the kind Flower 1.41 matches with
        warnings.simplefilter("ignore", DeprecationWarning)
        ignored = (pathspec.PathSpec.from_lines("gitwildmatch", patterns)
                   if not any(p.startswith("!") for p in patterns) else None)
    into.mkdir(parents=True, exist_ok=True)
    for folder, subfolders, files in os.walk(app_dir, followlinks=False):
        relative = Path(folder).relative_to(app_dir)
        subfolders[:] = [
            name for name in subfolders
            if name != "__pycache__" and not (relative == Path(".") and name in NEVER_PUBLISHED)
            and not (ignored and ignored.match_file(f"{(relative / name).as_posix()}/"))]
        for name in files:
            source = Path(folder) / name
            if source.is_symlink():
                continue
            (into / relative).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, into / relative / name)
    return into


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


def log_size(out: Path) -> int:
    """Where this run's part of OUT/flwr.log starts (the file is appended to by every run)."""
    log = out / LOG_FILE
    return log.stat().st_size if log.is_file() else 0


def check_finished(out: Path, returncode: int, monitor: bool = False,
                   since: float = 0.0, log_from: int = 0) -> None:
    """`flwr run` exits 0 even when the ServerApp failed: the exported model is the proof; a
    monitoring run's is its monitoring.json, written after ``since`` (a time.time()). An
    expected stop that the ServerApp logged (server.app) is raised as RunStopped, in its own
    words; anything else points at the log."""
    proof = out / SUMMARY_JSON if monitor else out / "model" / "config.json"
    if returncode != 0 or not proof.exists() or proof.stat().st_mtime < since:
        log = out / LOG_FILE
        reason = None
        if log.is_file():
            with open(log, "rb") as handle:
                handle.seek(log_from)
                reason = stop_reason(handle.read().decode(errors="replace"))
        if reason:
            raise RunStopped(reason)
        hint = f"; {resume_hint(out)}" if (out / "checkpoints").is_dir() else ""
        raise ConsortiumError(f"the run did not finish (flwr exit code {returncode}); see the "
                              f"log above or {log}{hint}")
