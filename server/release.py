"""Writing a release's lineage into the exported model directory: ``release.json`` (id, parent,
run config, each partner's ε at release time, δ, privacy unit, code version, the final
evaluation) and ``release_weights.npz`` (the trainable weights exactly as the coordinator held
them, which a continuing run starts from). The format is read back by common.model.release."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.code_hash import running_code_hash
from common.config import RunConfig
from common.errors import ConsortiumError
from common.model.release import (FORMAT, RELEASE_FILE, WEIGHTS_FILE, check_continues, check_layout,
                            layout_of, read_release, release_weights, weights_bytes)
from common.infra.storage import atomic_write_bytes, atomic_write_json, finite_or_none, json_safe
from common.model.warm_start import lineage_of
from server.central_dp import INHERITED

logger = logging.getLogger(__name__)
LIBRARIES = ("flwr", "opacus", "torch", "transformers", "peft")


def release_id(weights_sha256: str, created: dt.datetime) -> str:
    """``rel-<UTC time>-<first 8 hex of the weights' SHA-256>``: sortable, bound to the weights."""
    return f"rel-{created:%Y%m%dT%H%M%SZ}-{weights_sha256[:8]}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def code_version() -> dict[str, Any]:
    """What code made the release: the App's code hash (as `consortium partner approve`
    prints it) and the versions of the libraries that shaped the weights."""
    return {"code_sha256": running_code_hash(), "consortium": _version("consortium"),
            "libraries": {name: _version(name) for name in LIBRARIES}}


def parent_of(config: RunConfig) -> dict[str, Any] | None:
    """The release ``init-from`` names, as the child records it; None for a first release.
    Read at export: if it can no longer be read, its path is kept and the loss logged."""
    if not config.init_from:
        return None
    try:
        parent = read_release(config.init_from)
    except ConsortiumError as exc:
        logger.error("the parent release cannot be read any more (%s); only its path is "
                     "recorded", exc)
        return {"release_id": None, "path": config.init_from, "weights_sha256": None}
    return {"release_id": parent.release_id, "path": str(parent.path),
            "weights_sha256": parent.record["weights_sha256"]}


def privacy_unit(config: RunConfig, partners: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Whom (ε, δ) protects: the unit the partners reported (``unit`` in their privacy
    records), "per partner" when they differ; else as the run config says (a person when
    simulated partners sample by a person column, else one example)."""
    if not config.dp:
        return None
    units = {str(p["unit"]) for p in partners.values() if p.get("unit")}
    if units:
        return units.pop() if len(units) == 1 else "per partner (see partners)"
    return "person" if getattr(config, "person_column", "") else "example"


def _evaluation(final: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The final model's evaluation at release time: the baseline monitoring compares with."""
    if not final:
        return None
    metric = str(final.get("eval_metric") or "accuracy")
    per_partner = final.get("eval_per_partner") or {}
    return {"round": final.get("round"), "metric": metric,
            "mean": (final.get("eval_mean") or {}).get(metric),
            "per_partner": {n: p.get(metric) for n, p in sorted(per_partner.items())}}


def release_record(config: RunConfig, labels: tuple[str, ...],
                   arrays: Mapping[str, np.ndarray], weights_sha256: str, fingerprint: str,
                   report: Mapping[str, Any], final: Mapping[str, Any] | None) -> dict[str, Any]:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    partners = {name: {"epsilon": finite_or_none(p.get("epsilon")), "steps": p.get("steps"),
                       "rounds_trained": p.get("rounds_trained"),
                       **{k: v for k, v in p.items()
                          if k in ("unit", "persons", "partner_level_epsilon",
                                   "partner_level_history", "partner_level_unbounded")}}
                for name, p in sorted((report.get("partners") or {}).items())}
    return {
        "format": FORMAT, "release_id": release_id(weights_sha256, created),
        "created": created.isoformat(), "parent": parent_of(config),
        "run_config": config.to_mapping(), "labels": list(labels),
        "dp": config.dp, "delta": config.delta if config.dp else None,
        "privacy_unit": privacy_unit(config, report.get("partners") or {}),
        "epsilon_note": "each partner's ε over every release from its data source (its own "
                        "ledger), so cumulative over this release and its ancestors",
        "partners": partners, "code": code_version(), "evaluation": _evaluation(final),
        INHERITED: (report.get("partner_level") or {}).get(INHERITED) or {},
        "base_model": {"name": config.base_model or None,  # None: the bundled MiniLM
                       "warm_start": lineage_of(config.base_model)},
        "frozen_fingerprint": fingerprint, "trainable_layout": layout_of(arrays),
        "weights_file": WEIGHTS_FILE, "weights_sha256": weights_sha256,
    }


def write_release(directory: Path, config: RunConfig, labels: tuple[str, ...],
                  arrays: Mapping[str, np.ndarray], fingerprint: str,
                  report: Mapping[str, Any], final: Mapping[str, Any] | None) -> dict[str, Any]:
    """release_weights.npz, then release.json (which carries the weights' SHA-256)."""
    data = weights_bytes(arrays)
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    record = json_safe(release_record(  # NaN / inf: null, never a failed export
        config, labels, arrays, hashlib.sha256(data).hexdigest(), fingerprint, report, final))
    atomic_write_json(directory / RELEASE_FILE, record)
    return record


def initial_weights(config: RunConfig, labels: tuple[str, ...], initial: dict[str, np.ndarray],
                    fingerprint: str) -> dict[str, np.ndarray]:
    """Round 1's weights: the base model's initial trainable ones (``initial``), or with
    ``init-from`` the release's, once its settings, layout and frozen base weights are checked
    against this run's model (ConfigError). A resumed run takes its checkpoint's instead."""
    if not config.init_from or config.resume:
        return initial
    release = read_release(config.init_from)
    check_continues(release, config, labels)
    check_layout(release, initial, fingerprint)
    logger.info("starting from release %s (%s)", release.release_id, release.path)
    return release_weights(release)
