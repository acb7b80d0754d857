"""What a run leaves on disk: metrics.jsonl, the privacy report and the exported model."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common import protocol as P
from common.config import RunConfig
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_trainable_state, save_model
from common.privacy.ledger import epsilon_of
from common.model.warm_start import PRIVACY_NOTE, lineage_of
from common.infra.storage import (append_jsonl, atomic_write_bytes, atomic_write_json,
                            finite_or_none, json_safe)
from server.central_dp import INHERITED, absent_partner_level
from server.model_card import model_card
from server.release import write_release

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PRIVACY_REPORT = "privacy_report.json"
MODEL_DIR = "model"


def append_metrics(out_dir: Path, line: Mapping[str, Any]) -> None:
    append_jsonl(out_dir / METRICS_FILE, json_safe(line))


def truncate_metrics(out_dir: Path, last_round: int) -> int:
    """Drop lines of rounds after ``last_round`` (a round that ran past the last checkpoint);
    return the last round that keeps its line (0: none)."""
    path = out_dir / METRICS_FILE
    if not path.exists():
        return 0
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["round"] <= last_round]
    atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())
    return max((int(json.loads(ln)["round"]) for ln in keep), default=0)


def privacy_report(config: RunConfig, partners: Mapping[str, Mapping[str, Any]],
                   inherited: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per partner: ε, δ, σ, q, steps, C, as computed from the partner's own ledger history;
    with central-dp also the partner-level ε (server.central_dp) next to it. ``inherited``: the
    partner-level histories of the release this run continues; those of its partners that took
    no part in this run are carried on (``partner_level_inherited``)."""
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
            INHERITED: absent_partner_level(inherited or {}, partners),
        },
        "partners": {name: dict(rec) for name, rec in sorted(partners.items())},
        **public_data_note(config),
    }


def public_data_note(config: RunConfig) -> dict[str, Any]:
    """With a warm-started base model: its public files and why ε does not cover them."""
    lineage = lineage_of(config.base_model)
    if lineage is None:
        return {}
    return {"public_data": {"files": lineage["public_data"], "objective": lineage["objective"],
                            "epsilon_covers_it": False, "why": PRIVACY_NOTE}}


def record_partner(partners: dict[str, dict[str, Any]], name: str, metrics: Mapping[str, float],
                    config: RunConfig, history_json: str) -> None:
    """Record what a reply says the partner spent: every reply that trained carries the
    partner's whole ledger history, whether its update is then used, rejected or lost with a
    dropout (a refusal or a failure carries it when the partner spent first: record_spending).
    A history that does not parse is logged, not recorded."""
    try:
        history = [(float(s), float(q), int(n)) for s, q, n in json.loads(history_json or "[]")]
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        logger.error("%s sent a privacy history that does not parse (%s); not recorded", name,
                     exc)
        return
    nan = math.nan
    partners[name] = {
        "epsilon": finite_or_none(epsilon_of(history, config.delta)) if config.dp else None,
        "delta": config.delta if config.dp else 0.0,
        "noise_multiplier": metrics.get(P.NOISE_MULTIPLIER, nan),
        "sample_rate": metrics.get(P.SAMPLE_RATE, nan),
        "steps": int(sum(s for _, _, s in history)) if config.dp
        else int(metrics.get(P.STEPS, 0)),
        "max_grad_norm": config.max_grad_norm if config.dp else None,
        "rounds_trained": partners.get(name, {}).get("rounds_trained", 0) + 1,
        "examples": int(metrics.get(P.NUM_EXAMPLES, 0)),  # a count, never data
        "unit": "person" if metrics.get(P.PER_PERSON) else "example",  # what ε protects
        **({"persons": int(metrics[P.PERSONS])} if metrics.get(P.PER_PERSON) else {}),
        "history": [list(h) for h in history],
        **({"plan": {field: metrics[key] for key, field in P.PLAN_KEYS.items()}}
           if all(key in metrics for key in P.PLAN_KEYS) else {}),
        **{k: v for k, v in partners.get(name, {}).items()  # server.central_dp's
           if k.startswith("partner_level_")},
    }


def record_spending(partners: dict[str, dict[str, Any]], name: str, config: RunConfig,
                    history_json: str) -> None:
    """Record the history a reply without a usable update carries (a refusal or a failure after
    the partner spent ε, a noisy evaluation): the partner's ε, steps and history follow it, the
    rest of its record stays; a partner not recorded yet gets a record of no round trained."""
    fresh: dict[str, dict[str, Any]] = {}
    record_partner(fresh, name, {}, config, history_json)
    if name not in fresh:  # the history did not parse (logged)
        return
    if name in partners:
        partners[name].update({k: fresh[name][k] for k in ("epsilon", "steps", "history")})
    else:
        partners[name] = {**fresh[name], "rounds_trained": 0}


def write_privacy_report(out_dir: Path, report: Mapping[str, Any]) -> None:
    atomic_write_json(out_dir / PRIVACY_REPORT, report)


def export_model(out_dir: Path, config: RunConfig, labels: tuple[str, ...],
                 arrays: Mapping[str, np.ndarray], report: Mapping[str, Any],
                 final_line: Mapping[str, Any] | None = None) -> Path:
    """save_pretrained of the merged model + tokenizer + label map + config + privacy report
    + the release's lineage and trainable weights (server.release) + a README.md model card
    (``final_line``: the last round's metrics.jsonl line, for its results).

    Written to a temp directory and renamed, so ``model/`` is always whole.
    """
    model = build_model(config, labels)
    load_trainable_state(model, arrays)
    fingerprint = frozen_fingerprint(model)
    final, tmp = out_dir / MODEL_DIR, out_dir / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, config, tmp, labels)  # save_pretrained + tokenizer, or sentence-transformers
    atomic_write_json(tmp / "labels.json", {"labels": list(labels)})
    atomic_write_json(tmp / "run_config.json", config.to_mapping())
    atomic_write_json(tmp / PRIVACY_REPORT, report)
    release = write_release(tmp, config, labels, arrays, fingerprint, report, final_line)
    atomic_write_bytes(tmp / "README.md", model_card(config, labels, report, final_line,
                                                          release).encode())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    logger.info("shared model written to %s (release %s)", final, release["release_id"])
    return final
