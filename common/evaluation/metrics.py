"""Classification and entity metrics as small pure functions (checked against hand-computed
values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from common import protocol as P


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(y_true, y_pred)
    if len(classes) == 0:
        return float("nan")
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


COUNT_KINDS = (P.TRUE_POSITIVES, P.FALSE_POSITIVES, P.FALSE_NEGATIVES)  # keys "tp/<label>", ...


def class_counts(y_true: np.ndarray, y_pred: np.ndarray,
                 labels: tuple[str, ...]) -> dict[str, float]:
    """Per-class true-positive, false-positive and false-negative counts, keyed
    ``tp/<label>`` etc., for every label of the run (ids are positions in ``labels``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    counts: dict[str, float] = {}
    for c, label in enumerate(labels):
        counts[f"{P.TRUE_POSITIVES}/{label}"] = float(np.sum((y_pred == c) & (y_true == c)))
        counts[f"{P.FALSE_POSITIVES}/{label}"] = float(np.sum((y_pred == c) & (y_true != c)))
        counts[f"{P.FALSE_NEGATIVES}/{label}"] = float(np.sum((y_pred != c) & (y_true == c)))
    return counts


def split_count_key(key: str) -> tuple[str, str] | None:
    """``"tp/sports"`` -> ("tp", "sports"); any other key -> None."""
    kind, sep, label = key.partition("/")
    return (kind, label) if sep and kind in COUNT_KINDS and label else None


def sum_counts(reports: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Pool the count keys of several metric reports: {label: {tp, fp, fn}}."""
    pooled: dict[str, dict[str, float]] = {}
    for report in reports:
        for key, value in report.items():
            parsed = split_count_key(key)
            if parsed:
                kind, label = parsed
                per = pooled.setdefault(label, dict.fromkeys(COUNT_KINDS, 0.0))
                per[kind] += float(value)
    return pooled


def precision_recall_f1(tp: float, fp: float, fn: float) -> dict[str, float | None]:
    """P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN); None where a ratio is 0/0.
    ``support`` is TP + FN, the examples (or entities) truly of the class."""
    def ratio(num: float, den: float) -> float | None:
        return num / den if den else None

    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "support": tp + fn}


def per_class_scores(pooled: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Precision / recall / F1 / support per class from pooled counts, in the order given."""
    return {label: precision_recall_f1(c[P.TRUE_POSITIVES], c[P.FALSE_POSITIVES],
                                       c[P.FALSE_NEGATIVES]) for label, c in pooled.items()}


@dataclass(frozen=True)
class EntityScores:
    """Entity-level scores (seqeval, IOB2, default mode) and token accuracy of tagged sentences."""

    precision: float  # micro over entities
    recall: float
    f1: float
    macro_f1: float  # unweighted mean of per-type F1 over the types in gold or predictions
    token_accuracy: float  # share of words whose tag is right, O included
    counts: dict[str, tuple[int, int, int]]  # type -> (true positives, false pos., false neg.)


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]],
                  types: Sequence[str] = ()) -> EntityScores:
    """Scores of predicted tag sequences against gold ones; ``counts`` holds every type of
    ``types`` (zeros included) and any other type that occurs."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities

    true, pred = [list(s) for s in y_true], [list(s) for s in y_pred]
    if [len(s) for s in true] != [len(s) for s in pred]:
        raise ValueError("gold and predicted sentences differ in length")
    gold_spans = {(i, *e) for i, s in enumerate(true) for e in get_entities(s)}
    pred_spans = {(i, *e) for i, s in enumerate(pred) for e in get_entities(s)}
    counts = {t: (0, 0, 0) for t in types}
    for t in sorted({s[1] for s in gold_spans | pred_spans} | set(types)):
        g = {s for s in gold_spans if s[1] == t}
        p = {s for s in pred_spans if s[1] == t}
        counts[t] = (len(g & p), len(p - g), len(g - p))
    if not true:
        nan = float("nan")
        return EntityScores(nan, nan, nan, nan, nan, counts)
    kw = dict(zero_division=0)
    return EntityScores(
        precision=float(precision_score(true, pred, **kw)),
        recall=float(recall_score(true, pred, **kw)),
        f1=float(f1_score(true, pred, **kw)),
        macro_f1=float(f1_score(true, pred, average="macro", **kw)) if gold_spans | pred_spans
        else 0.0,
        token_accuracy=float(accuracy_score(true, pred)),
        counts=counts)


def entity_count_metrics(scores: EntityScores) -> dict[str, float]:
    """The per-type entity counts as metric keys ``tp/<type>``, ``fp/<type>``, ``fn/<type>``
    (the same keys class_counts gives per class, so the coordinator pools both alike)."""
    out: dict[str, float] = {}
    for index, kind in enumerate(COUNT_KINDS):
        out.update({f"{kind}/{t}": float(c[index]) for t, c in scores.counts.items()})
    return out
