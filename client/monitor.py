"""`consortium partner evaluate`: a partner scores a release on a labelled file of its own and
keeps the report. The model is built exactly as the run built it (base model + the release's
trainable weights) and scored by the task's own evaluate, so the numbers are those the run's
evaluation gives on that file; calibration (ECE) comes from common.evaluation.calibration.

Local only: nothing here sends anything. No flwr here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import protocol as P
from common.evaluation.calibration import (confidences_and_correct, expected_calibration_error,
                                reliability_bins)
from common.errors import ConfigError
from common.evaluation.groups import group_scores
from common.evaluation.metrics import per_class_scores, sum_counts
from common.model.release import read_release, release_weights
from common.infra.storage import atomic_write_bytes, atomic_write_json, finite_or_none
from common.tasks import get_task

logger = logging.getLogger(__name__)
FORMAT = "consortium-monitoring/1"
REPORT_JSON, REPORT_TEXT = "monitoring.json", "monitoring.md"
BINS = 10


@dataclass(frozen=True)
class MonitorRequest:
    """What the partner asks for on the command line."""

    model: Path  # a release: OUT-DIR/model of a run
    data: Path  # a labelled file of the partner's, read as the run's task reads files
    text_column: str = ""  # empty = the release's run config
    label_column: str = ""
    group_column: str = ""  # per-group counts (common.evaluation.groups), small groups suppressed
    out: Path | None = None  # empty = monitoring/RELEASE_ID
    min_group_size: int = 10  # fewest examples a group's counts are shown for
    allow_hub: bool = False  # download the base model if this machine lacks it (else offline)


def _probabilities(model: Any, encoded: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, gold) per scored position: a text, or a tagged word (gold >= 0)."""
    from common.evaluation.scoring import log_probabilities

    probs = np.exp(log_probabilities(model, encoded))
    gold = encoded.tensors[-1].numpy()
    if probs.ndim == 3:  # a tag per token: the words' first pieces carry a gold tag
        gold = gold[:, : probs.shape[1]]
        keep = gold >= 0
        return probs[keep], gold[keep]
    return probs, gold


def score_release(request: MonitorRequest) -> dict[str, Any]:
    """The report: the task's metrics, per-class counts and scores, and calibration. A file
    the task cannot read is the loader's one-line DataError, raised before any model loads."""
    from common.model.factory import build_model, load_tokenizer, load_trainable_state

    release = read_release(request.model)
    config = release.config()
    task = get_task(config.task)
    if request.min_group_size < 1:
        raise ConfigError(f"--min-group-size {request.min_group_size}: must be >= 1")
    data = task.read(request.data, config, release.labels, request.text_column,
                     request.label_column, subgroup_column=request.group_column or None)
    model = build_model(config, release.labels, offline=not request.allow_hub)
    load_trainable_state(model, release_weights(release))
    tokenizer = load_tokenizer(config, offline=not request.allow_hub)
    metrics = task.evaluate(model, tokenizer, data, config.max_length,
                            min_group_size=request.min_group_size)
    probs, gold = _probabilities(model, task.encode(tokenizer, data, config.max_length))
    confidences, correct = confidences_and_correct(probs, gold)
    counts = sum_counts([metrics])
    return {
        "format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "release_id": release.release_id, "parent": release.record.get("parent"),
        "model": str(release.path), "data": str(Path(request.data).resolve()),
        "task": config.task, "examples": int(metrics[P.NUM_EXAMPLES]),
        "metric": task.main_metric, "value": finite_or_none(metrics[task.main_metric]),
        "metrics": {k: finite_or_none(v) for k, v in metrics.items() if "/" not in k},
        "at_release": release.record.get("evaluation"),
        "per_class": {label: {**{k: float(v) for k, v in counts[label].items()},
                              **per_class_scores({label: counts[label]})[label]}
                      for label in counts},
        "calibration": {"ece": finite_or_none(expected_calibration_error(confidences, correct,
                                                                         BINS)),
                        "bins": reliability_bins(confidences, correct, BINS),
                        "scored": "texts" if probs.shape[0] == len(data) else "tagged words"},
        **({"group_column": request.group_column, "min_group_size": request.min_group_size,
            "groups": group_scores([metrics])} if request.group_column else {}),
    }


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def report_text(report: dict[str, Any]) -> str:
    """The short Markdown summary written beside monitoring.json."""
    baseline = report.get("at_release") or {}
    lines = [f"# Monitoring: release {report['release_id']}", "",
             f"- Data: `{report['data']}` ({report['examples']} examples, scored here only)",
             f"- {report['metric']}: {_num(report['value'])} (at release, mean over partners' "
             f"held-out splits: {_num(baseline.get('mean'))})",
             f"- Expected calibration error ({BINS} bins, over "
             f"{report['calibration']['scored']}): {_num(report['calibration']['ece'])}", "",
             "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {int(c['support'])} | {_num(c['precision'])} | "
              f"{_num(c['recall'])} | {_num(c['f1'])} |" for label, c in
              report["per_class"].items()]
    if "groups" in report:  # per group of `--group-column`, none below --min-group-size
        groups = report["groups"].get("eval_groups", {})
        lines += ["", f"Per {report['group_column']} (groups under {report['min_group_size']} "
                  "examples, or that the totals would reveal, left out):", "",
                  "| group | examples | accuracy |", "|---|---|---|"]
        lines += [f"| {g} | {v['examples']} | {_num(v['accuracy'])} |" for g, v in groups.items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path | None) -> Path:
    """monitoring.json and monitoring.md in ``out`` (default monitoring/RELEASE_ID)."""
    directory = out or Path("monitoring") / report["release_id"]
    atomic_write_json(directory / REPORT_JSON, report)
    atomic_write_bytes(directory / REPORT_TEXT, report_text(report).encode())
    logger.info("monitoring report written to %s", directory)
    return directory


def evaluate_release(request: MonitorRequest) -> tuple[Path, dict[str, Any]]:
    report = score_release(request)
    return write_report(report, request.out), report
