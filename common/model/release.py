"""A release read back: the shared model directory a run exported, its lineage record
(``release.json``) and the exact trainable weights the coordinator held
(``release_weights.npz``), so that a later run can continue from it (run config `init-from`)
and a partner can score it on new data. Written by server.release; no flwr here.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from common.config import RunConfig
from common.errors import ConfigError

RELEASE_FILE = "release.json"
WEIGHTS_FILE = "release_weights.npz"
FORMAT = "consortium-release/1"
# run-config keys that decide the trainable layout: a run continuing a release must match them
LAYOUT_KEYS = ("base-model", "task", "finetune")
FINETUNE_KEYS = {"lora": ("lora-r", "lora-alpha", "lora-layers", "lora-freeze-a"),
                 "pooled-lora": ("lora-r", "lora-alpha", "lora-layers", "lora-freeze-a"),
                 "full": ("freeze-embeddings",), "bias": ()}
# what a monitoring run (run config `monitor`) takes from the release: the model partners build
MODEL_KEYS = ("base-model", "task", "finetune", "lora-r", "lora-alpha", "lora-layers",
              "lora-freeze-a", "freeze-embeddings", "labels", "max-length")


@dataclass(frozen=True)
class Release:
    """A model directory and its release.json."""

    path: Path
    record: dict[str, Any]

    @property
    def release_id(self) -> str:
        return str(self.record["release_id"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.record["labels"])

    @property
    def run_config(self) -> dict[str, Any]:
        return dict(self.record["run_config"])

    def config(self) -> RunConfig:
        """The release's run config; keys this code does not know (a newer release) are
        ConfigError naming them."""
        return RunConfig.from_mapping(self.run_config)


def weights_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    return buffer.getvalue()


def layout_of(arrays: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Tensor name -> [dtype, shape]: what a continuing run's trainable parameters must be."""
    return {name: [str(np.asarray(a).dtype), list(np.asarray(a).shape)]
            for name, a in sorted(arrays.items())}


def read_release(where: str | Path) -> Release:
    """The release in ``where``: a model directory (OUT-DIR/model) or a run's out-dir.
    ConfigError, naming the path, when there is none or it does not parse."""
    path = Path(where).expanduser().resolve()
    if not (path / RELEASE_FILE).is_file() and (path / "model" / RELEASE_FILE).is_file():
        path = path / "model"
    file = path / RELEASE_FILE
    if not file.is_file():
        raise ConfigError(f"{where}: not a release (no {RELEASE_FILE}); give a model "
                          "directory a consortium run exported (its OUT-DIR/model)")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: unreadable or not JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{file}: not a {FORMAT} record (format "
                          f"{record.get('format') if isinstance(record, dict) else None!r})")
    missing = [k for k in ("release_id", "run_config", "labels", "weights_sha256",
                           "trainable_layout") if k not in record]
    if missing:
        raise ConfigError(f"{file}: missing {missing}; the release is damaged")
    return Release(path, record)


def release_weights(release: Release) -> dict[str, np.ndarray]:
    """The trainable weights the coordinator released, checked against release.json's SHA-256
    and layout; ConfigError naming the file otherwise."""
    file = release.path / WEIGHTS_FILE
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the release's weights ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != release.record["weights_sha256"]:
        raise ConfigError(f"{file}: SHA-256 differs from {RELEASE_FILE}'s; the weights were "
                          "changed or truncated")
    with np.load(io.BytesIO(data)) as npz:
        arrays = {name: npz[name] for name in npz.files}
    if layout_of(arrays) != release.record["trainable_layout"]:
        raise ConfigError(f"{file}: its tensors are not the layout {RELEASE_FILE} records")
    return arrays


def _same(key: str, theirs: Any, ours: Any) -> bool:
    if key == "base-model" and theirs and ours and theirs != ours:
        a, b = Path(str(theirs)).expanduser(), Path(str(ours)).expanduser()
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return bool(theirs == ours)


def check_continues(release: Release, config: RunConfig, labels: Sequence[str]) -> None:
    """A run may start from ``release`` only with the same base model, task, labels (ids in
    the same order) and finetune settings; one ConfigError names every difference."""
    # a key added since the release was written: it trained with that key's default
    theirs, ours = {**RunConfig().to_mapping(), **release.run_config}, config.to_mapping()
    same_mode = theirs.get("finetune") == config.finetune  # then its own settings count
    keys = LAYOUT_KEYS + (FINETUNE_KEYS.get(config.finetune, ()) if same_mode else ())
    diffs = [f"{key} = {theirs.get(key)!r} in the release, {ours[key]!r} in this run"
             for key in keys if not _same(key, theirs.get(key), ours[key])]
    if tuple(labels) != release.labels:
        diffs.append(f"labels {','.join(release.labels)} in the release, {','.join(labels)} "
                     "in this run")
    if diffs:
        raise ConfigError(f"init-from {release.path}: {'; '.join(diffs)}; run with the "
                          "release's settings, or leave init-from empty to start from the base "
                          "model")


def check_layout(release: Release, initial: Mapping[str, np.ndarray], fingerprint: str) -> None:
    """The run's own model must have the release's trainable tensors (names, dtypes, shapes)
    and the same frozen base weights; ConfigError naming the first differences."""
    theirs, ours = release.record["trainable_layout"], layout_of(initial)
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [f"{n} {theirs[n]} vs {ours[n]}" for n in sorted(set(ours) & set(theirs))
              if theirs[n] != ours[n]]
    problems = ([f"tensors this run trains but the release lacks {missing[:3]}"] if missing
                else []) + ([f"release tensors this run lacks {extra[:3]}"] if extra else []) + (
        [f"dtype/shape (release vs run) {shapes[:3]}"] if shapes else [])
    recorded = release.record.get("frozen_fingerprint")
    if not problems and recorded and recorded != fingerprint:
        problems.append("the frozen base-model weights differ (frozen fingerprint)")
    if problems:
        raise ConfigError(f"init-from {release.path}: trainable layout differs from this run's "
                          f"model: {'; '.join(problems)}")


def check_against_model(release: Release, config: RunConfig, labels: Sequence[str]) -> None:
    """check_continues, then check_layout against the run's own model, built here as the
    coordinator will build it: a command line can refuse every mismatch before it writes."""
    from common.training.fingerprint import frozen_fingerprint
    from common.model.factory import build_model, trainable_state

    check_continues(release, config, labels)
    model = build_model(config, tuple(labels))
    check_layout(release, trainable_state(model), frozen_fingerprint(model))


def monitoring_config(config: RunConfig, release: Release) -> RunConfig:
    """A monitoring run's config: ``monitor`` as the release's directory (absolute) and the
    release's model settings (MODEL_KEYS), so that every partner builds the release's model."""
    theirs, ours, defaults = release.run_config, config.to_mapping(), RunConfig().to_mapping()
    clash = [f"{k} = {ours[k]!r} (the release has {theirs[k]!r})" for k in MODEL_KEYS
             if k in theirs and ours.get(k) != theirs[k] and ours.get(k) != defaults.get(k)]
    if clash:  # set explicitly, and not what the release was trained with: never overridden
        raise ConfigError(f"monitor {release.path}: {'; '.join(clash)}; a monitoring run "
                          "scores the release as it was trained: drop these settings")
    return RunConfig.from_mapping({**ours, "monitor": str(release.path),
                                   **{k: theirs[k] for k in MODEL_KEYS if k in theirs}})
