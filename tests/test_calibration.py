"""common.evaluation.calibration: ECE and its reliability table against a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest

from common.evaluation.calibration import (confidences_and_correct, expected_calibration_error,
                                reliability_bins)


def test_ece_on_a_hand_computed_case() -> None:
    # 5 bins of width 0.2:
    #   (0.8, 1.0]: 0.95 right, 0.85 wrong  -> accuracy 0.5, confidence 0.9,   |gap| 0.4
    #   (0.6, 0.8]: 0.65 right, 0.62 right  -> accuracy 1.0, confidence 0.635, |gap| 0.365
    #   (0.2, 0.4]: 0.30 wrong              -> accuracy 0.0, confidence 0.3,   |gap| 0.3
    # ECE = 2/5 * 0.4 + 2/5 * 0.365 + 1/5 * 0.3 = 0.16 + 0.146 + 0.06 = 0.366
    confidences = np.array([0.95, 0.85, 0.65, 0.62, 0.30])
    correct = np.array([True, False, True, True, False])
    assert expected_calibration_error(confidences, correct, bins=5) == pytest.approx(0.366)
    table = reliability_bins(confidences, correct, bins=5)
    assert [b["count"] for b in table] == [0, 1, 0, 2, 2]
    assert table[0]["accuracy"] is None and table[0]["confidence"] is None
    assert table[3]["confidence"] == pytest.approx(0.635) and table[3]["accuracy"] == 1.0


def test_bins_are_closed_on_the_right_and_a_calibrated_model_scores_zero() -> None:
    table = reliability_bins(np.array([0.8, 0.0]), np.array([True, False]), bins=5)
    assert table[3]["count"] == 1 and table[0]["count"] == 1  # (0.6, 0.8] and [0, 0.2]
    # four predictions at 0.75, three right: accuracy = confidence
    assert expected_calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0], bool)) == 0.0
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], bool)))


def test_confidence_is_the_top_probability_and_correct_its_class() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    confidences, correct = confidences_and_correct(probabilities, np.array([0, 1, 0]))
    assert confidences.tolist() == [0.7, 0.6, 0.5]
    assert correct.tolist() == [True, False, True]  # a tie goes to the first class, as argmax
    with pytest.raises(ValueError, match="do not match"):
        confidences_and_correct(probabilities, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_bins(np.array([1.5]), np.array([True]))
