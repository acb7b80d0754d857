"""Round checkpoints a stopped run resumes from: weights (.npz) + a sealed manifest (.json).

Both are written atomically; the manifest carries the SHA-256 of the weights file. A damaged newest
checkpoint is reported loudly and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import CheckpointError, ConfigError
from common.infra.storage import atomic_write_bytes, read_sealed_json, write_sealed_json

logger = logging.getLogger(__name__)
KEEP = 2
PENDING_LINE = "pending_line"  # state entry: the round's metrics line before the partners'
# evaluations of its model, which come with the next round's train replies (or the final evaluate)


@dataclass(frozen=True)
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]  # run config, partner privacy records, anything the server must resume


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **ckpt.arrays)
    weights = buffer.getvalue()
    stem = directory / f"round-{ckpt.round:05d}"
    atomic_write_bytes(stem.with_suffix(".npz"), weights)
    write_sealed_json(stem.with_suffix(".json"), {
        "round": ckpt.round, "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "state": ckpt.state})
    for old in sorted(directory.glob("round-*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".npz").unlink(missing_ok=True)


def _load(manifest: Path) -> Checkpoint:
    body = read_sealed_json(manifest)
    weights_path = manifest.with_suffix(".npz")
    try:
        weights = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{weights_path}: cannot read ({exc})") from exc
    if hashlib.sha256(weights).hexdigest() != body["weights_sha256"]:
        raise CheckpointError(f"{weights_path}: SHA-256 differs from its manifest; truncated or "
                              "changed")
    with np.load(io.BytesIO(weights)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Checkpoint(int(body["round"]), arrays, body["state"])


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that passes its hashes; damaged newer ones are logged and skipped."""
    for manifest in sorted(directory.glob("round-*.json"), reverse=True):
        try:
            return _load(manifest)
        except CheckpointError as exc:
            logger.error("checkpoint %s is damaged and is skipped: %s", manifest.name, exc)
    return None


def config_diff(saved: dict[str, Any], current: dict[str, Any],
                ignore: tuple[str, ...] = ("resume", "out-dir")) -> list[str]:
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys
            if saved.get(k) != current.get(k)]


def check_same_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    diff = config_diff(saved, current)
    if diff:
        raise ConfigError("cannot resume with a changed run config: " + "; ".join(diff)
                          + ". Use the original values, or start a new run in another out-dir")
