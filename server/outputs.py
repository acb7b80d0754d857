"""What a run leaves on disk: metrics.jsonl, the privacy report and the exported model."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.config import RunConfig
from common.model import build_model, exportable_model, load_tokenizer, load_trainable_state
from common.storage import append_jsonl, atomic_write_bytes, atomic_write_json, finite_or_none
from server.model_card import model_card

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PRIVACY_REPORT = "privacy_report.json"
MODEL_DIR = "model"


def append_metrics(out_dir: Path, line: Mapping[str, Any]) -> None:
    append_jsonl(out_dir / METRICS_FILE, json_safe(line))


def json_safe(value: Any) -> Any:
    """NaN / ±inf (an empty batch's loss, ε without DP) become null: JSON has no such numbers."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def truncate_metrics(out_dir: Path, last_round: int) -> None:
    """Drop lines of rounds after ``last_round`` (a round that ran past the last checkpoint)."""
    path = out_dir / METRICS_FILE
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["round"] <= last_round]
    atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())


def privacy_report(config: RunConfig, partners: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per partner: ε, δ, σ, q, steps, C, as computed from the partner's own ledger history;
    with central-dp also the partner-level ε (server.central_dp) next to it."""
    return {
        "dp": config.dp,
        "level": "sample-level DP at each partner (DP-SGD, Opacus RDP accountant)",
        "max_grad_norm": config.max_grad_norm,
        "update_clip_norm": config.update_clip_norm,
        "partner_level": {
            "central_dp": config.central_dp,
            "level": "partner-level DP: Gaussian noise added by the coordinator to each round's "
                     "example-weighted mean, sigma = z * C * max w / sum w over the updates "
                     "averaged (zero-out adjacency; weights and participation public); each "
                     "round one Gaussian mechanism, sampling rate 1, Opacus RDP accountant",
            "noise_multiplier": config.central_noise_multiplier if config.central_dp else None,
            "clip_norm": config.update_clip_norm if config.central_dp else None,
            "delta": config.delta if config.central_dp else None,
        },
        "partners": {name: dict(rec) for name, rec in sorted(partners.items())},
    }


def write_privacy_report(out_dir: Path, report: Mapping[str, Any]) -> None:
    atomic_write_json(out_dir / PRIVACY_REPORT, report)


def export_model(out_dir: Path, config: RunConfig, labels: tuple[str, ...],
                 arrays: Mapping[str, np.ndarray], report: Mapping[str, Any],
                 final_line: Mapping[str, Any] | None = None) -> Path:
    """save_pretrained of the merged model + tokenizer + label map + config + privacy report
    + a README.md model card (``final_line``: the last round's metrics.jsonl line, for its results).

    Written to a temp directory and renamed, so ``model/`` is always whole.
    """
    model = build_model(config, labels)
    load_trainable_state(model, arrays)
    plain = exportable_model(model)
    plain.eval()
    final, tmp = out_dir / MODEL_DIR, out_dir / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    load_tokenizer(config).save_pretrained(tmp)
    atomic_write_json(tmp / "labels.json", {"labels": list(labels)})
    atomic_write_json(tmp / "run_config.json", config.to_mapping())
    atomic_write_json(tmp / PRIVACY_REPORT, report)
    atomic_write_bytes(tmp / "README.md", model_card(config, labels, report,
                                                          final_line).encode())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    logger.info("shared model written to %s", final)
    return final
