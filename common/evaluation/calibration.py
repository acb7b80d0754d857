"""Calibration of predicted probabilities: expected calibration error (ECE) over equal-width
confidence bins (Guo et al., 2017) and the reliability table it is computed from.

Pure numpy: a prediction's confidence is its top probability, and it is correct when that
class is the gold one. A bin is ``(lower, upper]`` (the first also holds 0); ECE is the
example-weighted mean of |accuracy − mean confidence| over non-empty bins.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confidences_and_correct(probabilities: np.ndarray,
                            gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, whether the top class is ``gold``) per row of ``probabilities``
    (shape examples × classes)."""
    probabilities, gold = np.asarray(probabilities, dtype=np.float64), np.asarray(gold)
    if probabilities.ndim != 2 or len(probabilities) != len(gold):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match "
                         f"{len(gold)} gold labels")
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == gold


def reliability_bins(confidences: np.ndarray, correct: np.ndarray,
                     bins: int = 10) -> list[dict[str, Any]]:
    """Per bin: its bounds, how many predictions fall in it, their mean confidence and their
    accuracy (None for an empty bin)."""
    if bins < 1:
        raise ValueError(f"bins = {bins}: need at least 1")
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidences.shape != correct.shape:
        raise ValueError(f"{confidences.shape} confidences vs {correct.shape} outcomes")
    if np.any((confidences < 0) | (confidences > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for i, (lower, upper) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (confidences > lower) & (confidences <= upper)
        if i == 0:
            inside |= confidences == 0.0
        count = int(inside.sum())
        table.append({"lower": float(lower), "upper": float(upper), "count": count,
                      "confidence": float(confidences[inside].mean()) if count else None,
                      "accuracy": float(correct[inside].mean()) if count else None})
    return table


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray,
                               bins: int = 10) -> float:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over the non-empty bins; NaN for no
    predictions."""
    table = reliability_bins(confidences, correct, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in table if b["count"]))
