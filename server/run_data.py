"""A finished (or stopped) run's files read back for the report and the model card.

Strict: a missing or damaged metrics.jsonl, privacy report or run config is a ReportError that
names the file and, for metrics.jsonl, the line. Lines written before the fairness fields existed
(no ``eval_mean`` / ``eval_worst``) are read too: those values are derived from the per-partner
ones.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.errors import ReportError
from server.outputs import METRICS_FILE, MODEL_DIR, PRIVACY_REPORT

logger = logging.getLogger(__name__)
RUN_CONFIG = "run_config.json"  # inside MODEL_DIR


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every round's line, in order; each a JSON object with an integer ``round``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: not found; is this a run's out-dir?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from exc
    lines: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                              "the line is damaged — fix or delete it") from None
        if not isinstance(line, dict) or type(line.get("round")) is not int:
            raise ReportError(f"{where}: expected a JSON object with an integer \"round\"")
        if lines and line["round"] <= lines[-1]["round"]:
            raise ReportError(f"{where}: round {line['round']} follows round "
                              f"{lines[-1]['round']}; rounds must increase")
        line["_where"] = where
        lines.append(line)
    if not lines:
        raise ReportError(f"{path}: holds no rounds")
    return lines


def last_metrics_line(path: Path) -> dict[str, Any] | None:
    """The final round's line, or None (logged) when the file is missing or damaged."""
    try:
        line = read_metrics(path)[-1]
    except ReportError as exc:
        logger.warning("no final evaluation for the model card: %s", exc)
        return None
    line.pop("_where", None)
    return line


def read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.exists() and not required:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: unreadable or not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return value


def number(line: Mapping[str, Any], *keys: str) -> float:
    """``line[k1][k2]...`` as a float; NaN when absent or null; ReportError when not a number."""
    value: Any = line
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{line.get('_where', METRICS_FILE)}: {'.'.join(keys)} = {value!r} "
                          "is not a number")
    return float(value)


@dataclass
class RunSeries:
    """Per-round series of a run, ready to plot (NaN where a round has no value)."""

    metric: str
    rounds: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    per_partner: dict[str, list[float]] = field(default_factory=dict)
    epsilon: dict[str, list[float]] = field(default_factory=dict)
    train_loss: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)
    download: list[float] = field(default_factory=list)
    coordinator: list[float] = field(default_factory=list)  # its own set (server-eval-data)
    budgets: dict[str, float] = field(default_factory=dict)  # partners' own max-epsilon, told


def _partner_values(line: Mapping[str, Any], metric: str) -> dict[str, float]:
    per = line.get("eval_per_partner") or {}
    if not isinstance(per, Mapping):
        raise ReportError(f"{line['_where']}: eval_per_partner is not an object")
    return {name: number(line, "eval_per_partner", name, metric) for name in per}


def series(lines: list[dict[str, Any]]) -> RunSeries:
    """Every plotted series, with worst and gap derived where an older line lacks them."""
    metric = str(lines[-1].get("eval_metric") or "accuracy")
    out = RunSeries(metric)
    for i, line in enumerate(lines):
        values = _partner_values(line, metric)
        finite = [v for v in values.values() if math.isfinite(v)]
        mean = number(line, "eval_mean", metric)
        out.rounds.append(line["round"])
        out.mean.append(mean if math.isfinite(mean) else number(line, f"eval_{metric}"))
        worst = number(line, "eval_worst", "value")
        out.worst.append(worst if math.isfinite(worst) or not finite else min(finite))
        gap = number(line, "eval_gap")
        out.gap.append(gap if math.isfinite(gap) or not finite else max(finite) - min(finite))
        for name, value in values.items():
            out.per_partner.setdefault(name, [math.nan] * i).append(value)
        key = "epsilon_per_partner" if line.get("epsilon_per_partner") else "max_epsilon"
        eps = line.get(key) if key == "epsilon_per_partner" else {"max over partners": None}
        if not isinstance(eps, Mapping):
            raise ReportError(f"{line['_where']}: {key} is not an object")
        for name in eps:
            value = number(line, key, name) if key == "epsilon_per_partner" else number(line, key)
            out.epsilon.setdefault(name, [math.nan] * i).append(value)
        for target in (out.per_partner, out.epsilon):  # a partner absent this round
            for values_of in target.values():
                values_of.extend([math.nan] * (i + 1 - len(values_of)))
        out.train_loss.append(number(line, "train_loss"))
        out.eval_loss.append(number(line, "eval_loss"))
        out.upload.append(number(line, "upload_bytes"))
        out.download.append(number(line, "download_bytes"))
        out.coordinator.append(number(line, "eval_coordinator", metric))
        told = line.get("budget_per_partner") or {}
        if not isinstance(told, Mapping):
            raise ReportError(f"{line['_where']}: budget_per_partner is not an object")
        out.budgets.update({name: number(line, "budget_per_partner", name) for name in told})
    return out


@dataclass(frozen=True)
class RunData:
    run_dir: Path
    lines: list[dict[str, Any]]
    privacy: dict[str, Any] | None
    config: dict[str, Any] | None


def load_run(run_dir: Path, config: Mapping[str, Any] | None = None) -> RunData:
    """metrics.jsonl (required), the privacy report and the run config (when present)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory; pass a run's out-dir")
    lines = read_metrics(run_dir / METRICS_FILE)
    privacy = read_json(run_dir / PRIVACY_REPORT, required=False)
    if config is None:
        config = read_json(run_dir / MODEL_DIR / RUN_CONFIG, required=False)
    return RunData(run_dir, lines, privacy, dict(config) if config is not None else None)
