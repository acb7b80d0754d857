"""A monitoring run (run config ``monitor = MODEL_DIR``): the coordinator sends the release's
weights once to every partner, in an EVALUATE Message naming the release; each partner scores
them on its monitoring data and, if its policy allows, replies counts only (client.monitor_request).
Nothing is trained, no ε is spent. Each partner's accuracy now (the task's main metric) is set
against its accuracy at release (release.json ``evaluation``, its held-out split after the last
round), and a partner whose accuracy fell by more than ``drift-threshold`` is flagged.

Written to OUT (the monitoring run's out-dir): ``monitoring/<release id>.jsonl``, the history
of that release (one line per monitoring run, appended: every partner's counts as received,
the comparison, refusals), ``monitoring.json`` (this run's comparison) and ``monitoring.md``
(its "Drift since release" section).
"""

from __future__ import annotations

import datetime as dt
import logging
from operator import itemgetter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import MessageType
from flwr.serverapp import Grid

from common import protocol as P
from common.config import RunConfig
from common.evaluation.groups import group_scores
from common.model.release import Release, check_continues, read_release, release_weights
from common.infra.storage import (append_jsonl, atomic_write_bytes, atomic_write_json,
                            finite_or_none, json_safe)
from common.tasks import get_task
from server.messaging import make_messages, partner_name, stream_replies
from server.monitoring_report import SUMMARY_JSON, SUMMARY_TEXT, drift_text

logger = logging.getLogger(__name__)
FORMAT = "consortium-drift/1"
HISTORY_DIR = "monitoring"  # OUT/monitoring/<release id>.jsonl: a release's history
TOLERANCE = 1e-9  # a drop equal to the threshold, give or take float rounding, is no drift


def drift_check(at_release: Mapping[str, float | None], now: Mapping[str, float | None],
                threshold: float) -> dict[str, dict[str, Any]]:
    """Per partner that reported now: its value now and at release, the drop (at release −
    now) and ``drift`` = drop > threshold. A partner absent from the baseline (or without a
    value in it) is reported with drop None and never flagged."""
    rows: dict[str, dict[str, Any]] = {}
    for name in sorted(now):
        value, base = finite_or_none(now[name]), at_release.get(name)
        base = finite_or_none(base) if isinstance(base, (int, float)) else None
        drop = base - value if base is not None and value is not None else None
        rows[name] = {"now": value, "at_release": base, "drop": drop,
                      "in_baseline": name in at_release,
                      "drift": drop is not None and drop > threshold + TOLERANCE}
    return rows


def summarize(release: Release, metric: str, threshold: float,
              reports: Mapping[str, Mapping[str, float]], refused: list[dict[str, str]],
              failures: list[dict[str, Any]]) -> dict[str, Any]:
    """monitoring.json: the release, the baseline, each reporting partner's drift row (with
    its examples and, where it sent them, its groups' scores), the flagged, refused, failed."""
    baseline = release.record.get("evaluation") or {}
    now = {name: float(m[metric]) if isinstance(m.get(metric), (int, float)) else None
           for name, m in reports.items()}
    rows = drift_check(baseline.get("per_partner") or {}, now, threshold)
    for name, row in rows.items():
        row["examples"] = int(reports[name].get(P.NUM_EXAMPLES, 0))
        groups = group_scores([reports[name]]).get("eval_groups")
        if groups:
            row["groups"] = groups
    return {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "release_id": release.release_id, "release": str(release.path),
            "metric": metric.replace("-", "_"), "drift_threshold": threshold,
            "baseline_round": baseline.get("round"), "baseline_mean": baseline.get("mean"),
            "partners": rows, "flagged": [n for n, r in rows.items() if r["drift"]],
            "not_in_baseline": [n for n, r in rows.items() if not r["in_baseline"]],
            "refused": refused, "failures": failures}


def ask_partners(grid: Grid, config: RunConfig, release: Release, arrays: dict[str, np.ndarray],
                 ) -> tuple[dict[str, dict[str, float]], list[dict[str, str]], list[dict]]:
    """One EVALUATE Message per partner with the release's weights and its id; returns the
    reports (partner -> counts), the refusals and the failures (error replies, silence)."""
    failures: list[dict[str, Any]] = []
    messages = make_messages(grid, MessageType.EVALUATE, 0, arrays,
                             str(release.record.get("frozen_fingerprint") or ""),
                             config.min_partners, extra={P.MONITOR_RELEASE: release.release_id})
    reports: dict[str, dict[str, float]] = {}
    refused: list[dict[str, str]] = []
    for reply in stream_replies(grid, messages, config.round_timeout, {}, failures):
        name, partner = partner_name(reply), reply.content.config_records[P.PARTNER]
        if partner.get(P.REFUSAL):
            refused.append({"partner": name, "reason": str(partner[P.REFUSAL])})
        else:
            reports[name] = {k: float(v) for k, v in  # type: ignore[arg-type]
                             reply.content.metric_records[P.METRICS].items()}
    by_name = itemgetter("partner")  # replies come in any order
    return reports, sorted(refused, key=by_name), sorted(failures, key=by_name)


def run_monitoring(grid: Grid, config: RunConfig) -> Path:
    """Ask every partner for its counts on the release, compare with the release's baseline,
    append the release's history and write this run's comparison; returns OUT."""
    out = Path(config.out_dir).resolve()
    release = read_release(config.monitor)
    check_continues(release, config, config.label_list)  # the partners build this model
    arrays = release_weights(release)
    baseline = release.record.get("evaluation") or {}
    metric = str(baseline.get("metric") or "").replace("_", "-") or \
        get_task(config.task).main_metric
    logger.info("monitoring release %s: %s now vs at release, drift above a drop of %g",
                release.release_id, metric, config.drift_threshold)
    reports, refused, failures = ask_partners(grid, config, release, arrays)
    for failure in refused + failures:
        logger.warning("monitoring: %s: %s", failure["partner"], failure["reason"])
    summary = summarize(release, metric, config.drift_threshold, reports, refused, failures)
    history = out / HISTORY_DIR / f"{release.release_id}.jsonl"
    append_jsonl(history, json_safe({**{k: summary[k] for k in (
        "created", "release_id", "metric", "drift_threshold", "partners", "flagged", "refused",
        "failures")}, "out_dir": str(out), "reports": reports}))
    summary["history"] = {"file": str(history.relative_to(out)),
                          "runs": len(history.read_text(encoding="utf-8").splitlines())}
    atomic_write_json(out / SUMMARY_JSON, json_safe(summary))
    atomic_write_bytes(out / SUMMARY_TEXT, drift_text(summary).encode())
    for name in summary["flagged"]:
        row = summary["partners"][name]
        logger.warning("drift: %s's %s fell from %.4f at release to %.4f (drop %.4f > %g)",
                       name, summary["metric"], row["at_release"], row["now"], row["drop"],
                       config.drift_threshold)
    logger.info("monitoring done: %d report(s), %d flagged, %d refused; %s", len(reports),
                len(summary["flagged"]), len(refused), out / SUMMARY_TEXT)
    return out

