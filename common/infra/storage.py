"""Atomic, self-checking JSON files: written to a temp file, fsynced, renamed; hashed on read."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from common.errors import CheckpointError


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, payload: Any, mode: int = 0o644) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode(), mode)


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append one JSON line and fsync it: a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: ε = ∞ (no DP) is written as null."""
    return float(value) if value is not None and math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """NaN / ±inf (an empty batch's loss, ε without DP) become null: JSON has no such numbers."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _digest(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_sealed_json(path: str | Path, body: dict[str, Any], mode: int = 0o644) -> None:
    """Atomically write ``body`` with a SHA-256 of its canonical form beside it."""
    atomic_write_json(path, {"body": body, "sha256": _digest(body)}, mode)


def read_sealed_json(path: str | Path) -> dict[str, Any]:
    """Read a file written by ``write_sealed_json``; any truncation or edit is a CheckpointError."""
    path = Path(path)
    try:
        sealed = json.loads(path.read_text(encoding="utf-8"))
        body, digest = sealed["body"], sealed["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated ({exc})") from exc
    if _digest(body) != digest:
        raise CheckpointError(f"{path}: content does not match its SHA-256; the file was "
                              "changed or damaged")
    return body
