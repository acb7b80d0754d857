"""Scores per group of people inside each partner (its ``group-column``: sex, age band, region),
as counts that can be pooled across partners, with small groups suppressed. Pure functions.

A partner sends, for each group it may report, ``group/<value>/n`` (held-out examples),
``group/<value>/correct`` and the per-class ``group/<value>/tp/<label>`` (fp, fn) counts; the
values are URL-quoted so any text is a safe key. The column itself and any row's group never
leave the partner.

Suppression (k-anonymity of the counts, k = ``min-group-size``): a group with fewer than k
held-out examples is left out of everything sent; with a person column, fewer than k distinct
persons (one person's twelve notes are one person, not twelve examples). Because the partner's
totals are also sent, one left-out group could be recovered as total − the others; so while the
groups left out hold between 1 and k − 1 examples (persons) together, the next smallest group is
left out too (secondary suppression, as statistical offices do for tables with margins).
"""

from __future__ import annotations

import math
from typing import AbstractSet, Any, Mapping, Sequence
from urllib.parse import quote, unquote

import numpy as np

from common.evaluation.metrics import class_counts, per_class_scores, sum_counts

PREFIX = "group/"


def reported_groups(sizes: Mapping[str, int | AbstractSet[str]], min_size: int) -> set[str]:
    """The groups whose counts may leave: each has ≥ ``min_size`` examples, and those left out
    together hold 0 or ≥ ``min_size`` (else the margins would give them away). A group's size
    is its examples, or the set of its persons: then both count distinct persons."""
    def size(groups: Sequence[str]) -> int:
        members = [sizes[g] for g in groups]
        if all(isinstance(m, int) for m in members):
            return sum(members)  # type: ignore[arg-type]
        return len(set().union(*members))  # a person in two groups is one person

    order = sorted(sizes, key=lambda g: (size([g]), g))
    left_out = [g for g in order if size([g]) < min_size]
    kept = [g for g in order if size([g]) >= min_size]
    while kept and 0 < size(left_out) < min_size:
        left_out.append(kept.pop(0))
    return set(kept)


def group_counts(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str],
                 labels: tuple[str, ...], min_size: int,
                 persons: Sequence[str] = ()) -> dict[str, float]:
    """The ``group/...`` count keys of one partner's evaluation, small groups suppressed; with
    ``persons`` (whose row each is), a group's size is its number of distinct persons."""
    y_true, y_pred, groups_a = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    sizes: dict[str, int | AbstractSet[str]]
    if len(persons):
        sizes = {}
        for group, person in zip(groups, persons):
            sizes.setdefault(str(group), set()).add(str(person))  # type: ignore[union-attr]
    else:
        sizes = {str(g): int(n) for g, n in zip(*np.unique(groups_a, return_counts=True))}
    out: dict[str, float] = {}
    for group in sorted(reported_groups(sizes, min_size)):
        mine = groups_a == group
        key = PREFIX + quote(group, safe="")
        out[f"{key}/n"] = float(mine.sum())
        out[f"{key}/correct"] = float((y_true[mine] == y_pred[mine]).sum())
        out.update({f"{key}/{k}": v for k, v in class_counts(y_true[mine], y_pred[mine],
                                                            labels).items()})
    return out


def split_group_key(key: str) -> tuple[str, str] | None:
    """``"group/F/tp/pos"`` -> ("F", "tp/pos"); any other key -> None."""
    if not key.startswith(PREFIX):
        return None
    group, sep, rest = key[len(PREFIX):].partition("/")
    return (unquote(group), rest) if sep and group and rest else None


def pool_groups(reports: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Sum each group's counts over the partners' reports: {group: {"n", "correct", "tp/x"...}}."""
    pooled: dict[str, dict[str, float]] = {}
    for report in reports:
        for key, value in report.items():
            parsed = split_group_key(key)
            if parsed and isinstance(value, (int, float)) and math.isfinite(value):
                group, rest = parsed
                cell = pooled.setdefault(group, {})
                cell[rest] = cell.get(rest, 0.0) + float(value)
    return pooled


def group_scores(reports: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """The per-group part of a metrics.jsonl line: each group's examples, accuracy and
    per-class scores pooled over partners, the worst and best group and the gap."""
    groups = {}
    for group, cell in sorted(pool_groups(reports).items()):
        n = cell.get("n", 0.0)
        groups[group] = {"examples": int(n),
                         "accuracy": cell.get("correct", 0.0) / n if n > 0 else None,
                         "per_class": per_class_scores(sum_counts([cell]))}
    scored = {g: v["accuracy"] for g, v in groups.items() if v["accuracy"] is not None}
    if not scored:
        return {"eval_groups": groups, "eval_group_worst": None, "eval_group_best": None,
                "eval_group_gap": None} if groups else {}
    worst = min(scored, key=lambda g: (scored[g], g))
    best = max(scored, key=lambda g: (scored[g], g))
    return {"eval_groups": groups,
            "eval_group_worst": {"group": worst, "value": scored[worst]},
            "eval_group_best": {"group": best, "value": scored[best]},
            "eval_group_gap": scored[best] - scored[worst]}
