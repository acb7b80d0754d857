"""The coordinator's per-round fold: bad updates from one partner are rejected with their reason
and the round goes on with the rest (the logic `server/coordinator.py` runs on every reply)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common import protocol as P
from server.aggregation import RoundFold
from server.outputs import json_safe

CURRENT = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}


def update(w: list[float], b: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.array(w, np.float32), "b": np.array([b], np.float32)}


def metrics(examples: float, loss: float = 0.5) -> dict[str, float]:
    return {P.NUM_EXAMPLES: examples, P.TRAIN_LOSS: loss}


def test_bad_updates_are_rejected_with_reasons_and_the_round_goes_on() -> None:
    fold = RoundFold(CURRENT, clip_norm=10.0)
    good = update([0.6, 0.8, 0.0])  # norm 1
    offers = {
        "good": (good, metrics(30, 0.4)),
        "nan": (update([np.nan, 0, 0]), metrics(10)),
        "inf": (update([np.inf, 0, 0]), metrics(10)),
        "shape": ({"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}, metrics(10)),
        "dtype": ({"w": np.zeros(3, np.float64), "b": np.zeros(1, np.float32)}, metrics(10)),
        "scaled": (update([600.0, 800.0, 0.0]), metrics(10)),  # 1000 × good
        "no-count": (good, {P.TRAIN_LOSS: 0.1}),
        "zero-count": (good, metrics(0)),
        "flipped": (update([-0.6, -0.8, 0.0]), metrics(10, 0.8)),  # within the clip: accepted
    }
    for name, (arrays, m) in offers.items():
        fold.offer(name, arrays, m)
    fold.refuse("broke", "budget exhausted")
    assert fold.accepted == ["good", "flipped"]
    reasons = {f["partner"]: f["reason"] for f in fold.failures}
    assert "NaN or Inf" in reasons["nan"] and "NaN or Inf" in reasons["inf"]
    assert "got float32[4]" in reasons["shape"] and "got float64[3]" in reasons["dtype"]
    assert "exceeds the agreed update-clip-norm 10" in reasons["scaled"]
    assert "num-examples" in reasons["no-count"] and "positive" in reasons["zero-count"]
    assert reasons["broke"] == "refused: budget exhausted"
    # example-weighted mean of the two accepted: (30 * good + 10 * flipped) / 40
    np.testing.assert_allclose(fold.mean.result()["w"], [0.3, 0.4, 0.0], rtol=1e-6)
    assert fold.train_loss() == pytest.approx((0.4 * 30 + 0.8 * 10) / 40)


def test_metrics_lines_never_hold_nan() -> None:
    line = json_safe({"train_loss": math.nan, "max_epsilon": math.inf,
                      "per": {"a": [1.0, math.nan]}, "n": 3})
    assert line == {"train_loss": None, "max_epsilon": None, "per": {"a": [1.0, None]}, "n": 3}


HONEST = [[1.0, 1.1, 0.9], [0.9, 1.0, 1.0], [1.1, 0.9, 1.1], [1.0, 1.0, 1.0]]
ATTACK = [-5.0, -5.0, -5.0]  # sign-flipped and scaled, yet inside the clip (norm 8.7 < 10)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean:0.2", "krum:1"])
def test_robust_rules_resist_one_attacker_fedavg_does_not(rule: str) -> None:
    def run(robust: str) -> np.ndarray:
        fold = RoundFold(CURRENT, clip_norm=10.0, robust=robust)
        for i, w in enumerate(HONEST + [ATTACK]):
            assert fold.offer(f"p{i}", update(w), metrics(10))
        return fold.result()["w"]

    assert np.all(run("") < 0)  # the plain mean is dragged to the attacker's side
    robust = run(rule)
    assert np.all(np.abs(robust - 1.0) <= 0.11), robust


@pytest.mark.parametrize("spec", ["mean", "median:1", "trimmed-mean:0.5", "trimmed-mean:x",
                                  "krum:-1", "krum"])
def test_bad_aggregation_specs(spec: str) -> None:
    from common.config import RunConfig
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="aggregation="):
        RunConfig(aggregation=spec)


def test_krum_needs_enough_updates() -> None:
    from common.errors import UpdateError
    from server.robust import robust_aggregate

    with pytest.raises(UpdateError, match="more than 4 updates"):
        robust_aggregate([(update(w), 10.0) for w in HONEST], "krum:1")
