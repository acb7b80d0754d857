"""Federated evaluation as pure functions: weighted means, the worst partner, the fairness gap,
and per-class precision / recall / F1 pooled from the partners' counts.

Input is what partners report per round (``{partner: {metric key: value}}``, keys of
common.protocol); output is the part of a metrics.jsonl line the coordinator writes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from common import protocol as P
from common.evaluation.groups import group_scores, split_group_key
from common.evaluation.metrics import per_class_scores, split_count_key, sum_counts
from common.tasks import get_task


def main_metric(task: str) -> str:
    """The protocol key of the task's main metric (accuracy, entity-f1): the one the worst
    partner and the gap are read on. ConfigError (a ValueError) for an unknown task."""
    return get_task(task).main_metric


def line_key(metric: str) -> str:
    """``macro-f1`` -> ``macro_f1``: metric keys as metrics.jsonl spells them."""
    return metric.replace("-", "_")


def _is_count(key: str) -> bool:
    """num-examples, a per-class count or a per-group count: pooled, never averaged."""
    return key == P.NUM_EXAMPLES or split_count_key(key) is not None \
        or split_group_key(key) is not None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def weighted_means(per_partner: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Every reported metric (not counts, not num-examples) averaged with each partner weighted
    by its examples; partners whose value is missing or not finite are left out of that mean."""
    keys: dict[str, None] = {}
    for metrics in per_partner.values():
        keys.update((k, None) for k in metrics if not _is_count(k))
    means: dict[str, float | None] = {}
    for key in keys:
        pairs = [(float(m[key]), float(m.get(P.NUM_EXAMPLES, 0.0)))
                 for m in per_partner.values() if _finite(m.get(key))]
        total = sum(w for _, w in pairs)
        means[line_key(key)] = sum(v * w for v, w in pairs) / total if total > 0 else None
    return means


def extremes(values: Mapping[str, float | None]) -> dict[str, Any]:
    """Worst and best partner on one higher-is-better metric, and the gap best − worst.
    Partners with no finite value are skipped; with none left, every field is None."""
    finite = {name: float(v) for name, v in values.items() if _finite(v)}
    if not finite:
        return {"eval_worst": None, "eval_best": None, "eval_gap": None}
    worst = min(finite, key=lambda n: (finite[n], n))
    best = max(finite, key=lambda n: (finite[n], n))
    return {"eval_worst": {"partner": worst, "value": finite[worst]},
            "eval_best": {"partner": best, "value": finite[best]},
            "eval_gap": finite[best] - finite[worst]}


def summarize_round(per_partner: Mapping[str, Mapping[str, float]],
                    metric: str) -> dict[str, Any]:
    """The evaluation part of a metrics.jsonl line, from each partner's evaluation of the
    line's model (sent with its next train reply, or in its final evaluate reply)."""
    partners = {
        name: {**{line_key(k): v for k, v in m.items() if not _is_count(k)},
               "num_examples": int(m.get(P.NUM_EXAMPLES, 0))}
        for name, m in sorted(per_partner.items())}
    main = line_key(metric)
    return {
        "eval_metric": main,
        "eval_examples": sum(p["num_examples"] for p in partners.values()),
        "eval_mean": weighted_means(per_partner),
        **extremes({name: p.get(main) for name, p in partners.items()}),
        "eval_per_partner": partners,
        "eval_per_class": per_class_scores(sum_counts([per_partner[n] for n in partners])),
        **group_scores([per_partner[n] for n in partners]),  # groups inside partners, if any
    }


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(float(value), spec) if _finite(value) else "n/a"


def megabytes(n: Any) -> str:
    return f"{n / 1e6:.2f} MB" if _finite(n) else "n/a"


def progress_line(line: Mapping[str, Any], num_rounds: int, dp: bool) -> str:
    """The coordinator's one log line per round, from its metrics.jsonl line."""
    metric = line.get("eval_metric") or "accuracy"
    worst = line.get("eval_worst") or {}
    fairness = (f"{metric} mean {_fmt((line.get('eval_mean') or {}).get(metric))}, worst "
                f"{_fmt(worst.get('value'))} ({worst.get('partner', 'n/a')}), gap "
                f"{_fmt(line.get('eval_gap'))}")
    return (f"round {line['round']}/{num_rounds} | partners {len(line.get('partners_replied', []))}"
            + (f" | train loss {_fmt(loss)}" if (loss := line.get("train_loss")) is not None
               else "")  # partners release it only when their policy allows
            + f" | {fairness} | max ε "
            f"{_fmt(line.get('max_epsilon')) if dp else '∞'} | up "
            f"{megabytes(line.get('upload_bytes'))}, down {megabytes(line.get('download_bytes'))}"
            + (f" | coordinator's set {metric} {_fmt(own.get(metric))}"
               if isinstance(own := line.get("eval_coordinator"), Mapping) else "")
            + (f" | worst group {_fmt(group.get('value'))} ({group.get('group')}), group gap "
               f"{_fmt(line.get('eval_group_gap'))}"
               if isinstance(group := line.get("eval_group_worst"), Mapping) else ""))


def summarize_held_out(metrics: Mapping[str, float], source: str) -> dict[str, Any]:
    """The coordinator's own evaluation, kept apart from the partners' mean, worst and gap."""
    return {"source": source, "num_examples": int(metrics.get(P.NUM_EXAMPLES, 0)),
            **{line_key(k): v for k, v in metrics.items() if not _is_count(k)},
            "per_class": per_class_scores(sum_counts([dict(metrics)]))}
