"""server.evaluation: weighted means, worst partner, gap and pooled per-class scores, by hand."""

from __future__ import annotations

import math

import pytest

from common import protocol as P
from server.evaluation import main_metric, progress_line, summarize_round, weighted_means

# three partners' evaluate replies, as the coordinator receives them
REPLIES = {
    "clinic-b": {P.NUM_EXAMPLES: 50.0, P.ACCURACY: 0.6, P.MACRO_F1: 0.5, P.EVAL_LOSS: 1.0,
                 "tp/x": 1.0, "fp/x": 1.0, "fn/x": 0.0,
                 "tp/y": 2.0, "fp/y": 0.0, "fn/y": 3.0, "tp/z": 0.0, "fp/z": 0.0, "fn/z": 0.0},
    "clinic-a": {P.NUM_EXAMPLES: 100.0, P.ACCURACY: 0.9, P.MACRO_F1: 0.8, P.EVAL_LOSS: 0.2,
                 "tp/x": 3.0, "fp/x": 1.0, "fn/x": 2.0,
                 "tp/y": 4.0, "fp/y": 2.0, "fn/y": 1.0, "tp/z": 0.0, "fp/z": 0.0, "fn/z": 0.0},
    "clinic-c": {P.NUM_EXAMPLES: 50.0, P.ACCURACY: 0.75, P.MACRO_F1: 0.7, P.EVAL_LOSS: 0.6},
}


def test_weighted_mean_worst_best_and_gap_by_hand():
    line = summarize_round(REPLIES, P.ACCURACY)
    # accuracy: (0.9·100 + 0.6·50 + 0.75·50) / 200 = 157.5 / 200
    assert line["eval_mean"]["accuracy"] == pytest.approx(0.7875)
    # macro-F1: (80 + 25 + 35) / 200; loss: (20 + 50 + 30) / 200
    assert line["eval_mean"]["macro_f1"] == pytest.approx(0.7)
    assert line["eval_mean"]["eval_loss"] == pytest.approx(0.5)
    assert line["eval_worst"] == {"partner": "clinic-b", "value": 0.6}
    assert line["eval_best"] == {"partner": "clinic-a", "value": 0.9}
    assert line["eval_gap"] == pytest.approx(0.3)
    assert line["eval_metric"] == "accuracy" and line["eval_examples"] == 200
    assert line["eval_per_partner"]["clinic-b"] == {"accuracy": 0.6, "macro_f1": 0.5,
                                                    "eval_loss": 1.0, "num_examples": 50}
    assert list(line["eval_per_partner"]) == ["clinic-a", "clinic-b", "clinic-c"]


def test_pooled_per_class_scores_by_hand():
    per_class = summarize_round(REPLIES, P.ACCURACY)["eval_per_class"]
    # x: TP 3+1 = 4, FP 1+1 = 2, FN 2+0 = 2 -> P = 4/6, R = 4/6, F1 = 8/12, support 6
    assert per_class["x"] == pytest.approx({"precision": 4 / 6, "recall": 4 / 6,
                                            "f1": 8 / 12, "support": 6.0})
    # y: TP 4+2 = 6, FP 2+0 = 2, FN 1+3 = 4 -> P = 6/8, R = 6/10, F1 = 12/18, support 10
    assert per_class["y"] == pytest.approx({"precision": 0.75, "recall": 0.6,
                                            "f1": 12 / 18, "support": 10.0})
    # z: never predicted, never true: every ratio is 0/0
    assert per_class["z"] == {"precision": None, "recall": None, "f1": None, "support": 0.0}


def test_pooling_is_not_the_mean_of_partner_scores():
    # partner a alone: x P = 3/4; b alone: x P = 1/2; their mean 0.625 != pooled 4/6
    pooled = summarize_round(REPLIES, P.ACCURACY)["eval_per_class"]["x"]["precision"]
    assert pooled != pytest.approx((3 / 4 + 1 / 2) / 2)


def test_a_partner_without_a_finite_value_is_left_out():
    replies = {"a": {P.NUM_EXAMPLES: 10.0, P.ACCURACY: 0.5},
               "b": {P.NUM_EXAMPLES: 0.0, P.ACCURACY: math.nan},  # empty held-out split
               "c": {P.NUM_EXAMPLES: 30.0, P.ACCURACY: 0.9}}
    line = summarize_round(replies, P.ACCURACY)
    assert line["eval_mean"]["accuracy"] == pytest.approx((5 + 27) / 40)
    assert line["eval_worst"]["partner"] == "a" and line["eval_gap"] == pytest.approx(0.4)


def test_no_replies_gives_nones_not_errors():
    line = summarize_round({}, P.ACCURACY)
    assert line["eval_worst"] is None and line["eval_gap"] is None
    assert line["eval_mean"] == {} and line["eval_per_class"] == {}
    assert weighted_means({"a": {P.NUM_EXAMPLES: 0.0, P.ACCURACY: 1.0}}) == {"accuracy": None}


def test_main_metric_per_task():
    assert main_metric("text-classification") == "accuracy"
    assert main_metric("token-classification") == "entity-f1"
    with pytest.raises(ValueError, match="pick one of"):
        main_metric("translation")


def test_entity_f1_is_read_as_the_main_metric():
    replies = {"a": {P.NUM_EXAMPLES: 10.0, "entity-f1": 0.7},
               "b": {P.NUM_EXAMPLES: 10.0, "entity-f1": 0.5}}
    line = summarize_round(replies, main_metric("token-classification"))
    assert line["eval_metric"] == "entity_f1"
    assert line["eval_mean"]["entity_f1"] == pytest.approx(0.6)
    assert line["eval_gap"] == pytest.approx(0.2) and line["eval_worst"]["partner"] == "b"


def test_progress_line_names_mean_worst_and_gap():
    line = {"round": 2, "partners_replied": ["clinic-a", "clinic-b", "clinic-c"],
            "train_loss": 0.5, "max_epsilon": 3.25, "upload_bytes": 1_500_000,
            "download_bytes": 3_000_000, **summarize_round(REPLIES, P.ACCURACY)}
    text = progress_line(line, 5, dp=True)
    assert text == ("round 2/5 | partners 3 | train loss 0.5000 | accuracy mean 0.7875, worst "
                    "0.6000 (clinic-b), gap 0.3000 | max ε 3.2500 | up 1.50 MB, down 3.00 MB")
    assert "max ε ∞" in progress_line(line, 5, dp=False)
