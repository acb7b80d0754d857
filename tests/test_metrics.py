"""common.evaluation.metrics: accuracy and macro-F1 against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.evaluation.metrics import (accuracy, class_counts, macro_f1, per_class_scores,
                                       split_count_key, sum_counts)

Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_accuracy_by_hand():
    # positions 0, 2, 3 agree: 3 / 5
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)
    assert accuracy(np.array(Y_TRUE), np.array(Y_PRED)) == pytest.approx(0.6)


def test_macro_f1_by_hand():
    # F1 = 2TP / (2TP + FP + FN), per class:
    #   class 0: TP=1 (pos 0), FP=1 (pos 4: true 2), FN=1 (pos 1: pred 1)  -> 2/4 = 0.5
    #   class 1: TP=2 (pos 2, 3), FP=1 (pos 1: true 0), FN=0             -> 4/5 = 0.8
    #   class 2: TP=0, FP=0, FN=1 (pos 4)                                -> 0/1 = 0.0
    # macro = (0.5 + 0.8 + 0.0) / 3 = 1.3 / 3
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(1.3 / 3)


def test_macro_f1_counts_a_class_only_predicted():
    # class 0: TP=1, FN=1 -> 2/3; class 1 (never true): FP=1 -> 0; macro = 1/3
    assert macro_f1([0, 0], [0, 1]) == pytest.approx(1 / 3)


def test_macro_f1_ignores_classes_absent_from_both():
    # only classes 1 and 3 appear: both perfect
    assert macro_f1([1, 3, 3], [1, 3, 3]) == pytest.approx(1.0)


def test_macro_f1_is_not_weighted_by_class_size():
    # class 0 (4 rows): TP=4, FP=1 -> 8/9; class 1 (1 row): TP=0, FN=1 -> 0; macro = 4/9
    y_true, y_pred = [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(0.8)
    assert macro_f1(y_true, y_pred) == pytest.approx(4 / 9)


@pytest.mark.parametrize("y_true, y_pred", [([2, 0, 1], [2, 0, 1]), (["a", "b"], ["a", "b"])])
def test_perfect_predictions(y_true, y_pred):
    assert accuracy(y_true, y_pred) == 1.0
    assert macro_f1(y_true, y_pred) == 1.0


def test_all_wrong():
    assert accuracy([0, 1], [1, 0]) == 0.0
    assert macro_f1([0, 1], [1, 0]) == 0.0


def test_empty_inputs_give_nan():
    assert math.isnan(accuracy([], []))
    assert math.isnan(macro_f1([], []))


def test_results_are_python_floats():
    assert type(accuracy(Y_TRUE, Y_PRED)) is float
    assert type(macro_f1(Y_TRUE, Y_PRED)) is float


def test_class_counts_by_hand():
    # labels a=0, b=1, c=2; Y_TRUE = [0, 0, 1, 1, 2], Y_PRED = [0, 1, 1, 1, 0]
    counts = class_counts(Y_TRUE, Y_PRED, ("a", "b", "c"))
    assert counts == {"tp/a": 1.0, "fp/a": 1.0, "fn/a": 1.0,   # pos 0 | pos 4 | pos 1
                      "tp/b": 2.0, "fp/b": 1.0, "fn/b": 0.0,   # pos 2, 3 | pos 1 | -
                      "tp/c": 0.0, "fp/c": 0.0, "fn/c": 1.0}   # - | - | pos 4
    # the counts give back macro-F1: F1 = 2TP / (2TP + FP + FN) per class
    scores = per_class_scores(sum_counts([counts]))
    assert np.mean([s["f1"] for s in scores.values()]) == pytest.approx(macro_f1(Y_TRUE, Y_PRED))
    assert scores["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                         "support": 2.0})


def test_class_counts_cover_labels_never_seen():
    counts = class_counts([0, 0], [0, 0], ("a", "b"))
    assert counts["tp/b"] == counts["fp/b"] == counts["fn/b"] == 0.0
    assert per_class_scores(sum_counts([counts]))["b"]["f1"] is None


def test_split_count_key():
    assert split_count_key("tp/B-PER") == ("tp", "B-PER")
    assert split_count_key("fn/a/b") == ("fn", "a/b")
    for key in ("accuracy", "tp/", "xx/label", "macro-f1"):
        assert split_count_key(key) is None
