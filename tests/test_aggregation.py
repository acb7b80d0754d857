"""server.aggregation (FedAvg, update validation) and common.wire.updates (update clipping)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import UpdateError
from common.wire.updates import clip_update, update_norm
from server.aggregation import WeightedMean, fedavg, validate_update


def f32(*values):
    return np.array(values, dtype=np.float32)


def test_fedavg_of_two_updates_by_hand():
    a = {"w": f32(1.0, 2.0), "b": f32(0.0)}
    b = {"w": f32(3.0, 6.0), "b": f32(4.0)}
    result = fedavg([(a, 1), (b, 3)])
    # w = (1*[1, 2] + 3*[3, 6]) / 4 = [10, 20] / 4 = [2.5, 5.0];  b = (0 + 12) / 4 = 3
    np.testing.assert_array_equal(result["w"], f32(2.5, 5.0))
    np.testing.assert_array_equal(result["b"], f32(3.0))
    assert set(result) == {"w", "b"}
    assert all(v.dtype == np.float32 for v in result.values())


def test_fedavg_of_three_updates_by_hand():
    m = [{"w": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)},
         {"w": np.array([[2.0, 2.0], [2.0, 2.0]], np.float32)},
         {"w": np.array([[0.0, 4.0], [8.0, -1.0]], np.float32)}]
    result = fedavg([(m[0], 10), (m[1], 20), (m[2], 70)])
    # weights 0.1, 0.2, 0.7:
    #   [0][0] = 0.1 + 0.4 + 0      = 0.5    [0][1] = 0   + 0.4 + 2.8 = 3.2
    #   [1][0] = 0   + 0.4 + 5.6    = 6.0    [1][1] = 0.1 + 0.4 - 0.7 = -0.2
    np.testing.assert_allclose(result["w"], [[0.5, 3.2], [6.0, -0.2]], rtol=1e-6)
    assert result["w"].dtype == np.float32
    assert result["w"].shape == (2, 2)


def test_fedavg_of_one_update_is_that_update():
    only = {"w": f32(1.5, -2.0)}
    np.testing.assert_array_equal(fedavg([(only, 7)])["w"], only["w"])


def test_weighted_mean_keeps_the_total_weight():
    mean = WeightedMean()
    mean.add({"w": f32(1.0)}, 2)
    mean.add({"w": f32(4.0)}, 1)
    assert mean.total_weight == 3
    np.testing.assert_array_equal(mean.result()["w"], f32(2.0))  # (2 + 4) / 3


@pytest.mark.parametrize("weight", [0, 0.0, -1, float("nan"), float("inf")])
def test_weighted_mean_rejects_non_positive_weights(weight):
    with pytest.raises(UpdateError, match="weight"):
        WeightedMean().add({"w": f32(1.0)}, weight)


def test_weighted_mean_without_updates_is_an_error():
    with pytest.raises(UpdateError, match="no update"):
        WeightedMean().result()
    with pytest.raises(UpdateError):
        fedavg([])


@pytest.fixture
def current():
    return {"w": f32(0.0, 0.0), "b": f32(1.0)}


def test_validate_accepts_a_matching_update(current):
    validate_update({"w": f32(3.0, 4.0), "b": f32(1.0)}, current, clip_norm=5.0)
    validate_update({"w": f32(300.0, 400.0), "b": f32(1.0)}, current, clip_norm=0.0)


@pytest.mark.parametrize("update, match", [
    ({"w": f32(0.0, 0.0)}, "missing"),
    ({"w": f32(0.0, 0.0), "b": f32(1.0), "x": f32(0.0)}, "unexpected"),
    ({"w": f32(0.0, 0.0), "c": f32(1.0)}, "missing"),
    ({"w": f32(0.0, 0.0, 0.0), "b": f32(1.0)}, "'w'"),
    ({"w": f32(0.0, 0.0).reshape(1, 2), "b": f32(1.0)}, "'w'"),
    ({"w": np.zeros(2, np.float64), "b": f32(1.0)}, "float64"),
    ({"w": np.zeros(2, np.float16), "b": f32(1.0)}, "float16"),
    ({"w": f32(0.0, float("nan")), "b": f32(1.0)}, "NaN or Inf"),
    ({"w": f32(0.0, 0.0), "b": f32(float("inf"))}, "NaN or Inf"),
    ({"w": f32(0.0, -float("inf")), "b": f32(1.0)}, "NaN or Inf"),
    ({"w": f32(3.0, 4.0), "b": f32(1.1)}, "exceeds"),  # norm sqrt(25 + 0.01) > 5
])
def test_validate_rejects(current, update, match):
    with pytest.raises(UpdateError, match=match):
        validate_update(update, current, clip_norm=5.0)


def test_update_norm_by_hand():
    old = {"a": f32(1.0, 1.0), "b": f32(0.0)}
    new = {"a": f32(2.0, 3.0), "b": f32(-2.0)}
    # differences [1, 2] and [-2]: sqrt(1 + 4 + 4) = 3
    assert update_norm(old, new) == pytest.approx(3.0)


def test_clip_scales_an_update_above_the_bound():
    old, new = {"w": f32(0.0, 0.0)}, {"w": f32(3.0, 4.0)}
    clipped, norm, was_clipped = clip_update(old, new, 2.5)
    assert norm == pytest.approx(5.0)  # sqrt(9 + 16)
    assert was_clipped is True
    np.testing.assert_allclose(clipped["w"], [1.5, 2.0], rtol=1e-6)  # [3, 4] * 2.5 / 5
    assert clipped["w"].dtype == np.float32
    np.testing.assert_array_equal(new["w"], f32(3.0, 4.0))  # input untouched


def test_clip_is_relative_to_the_old_weights():
    old, new = {"w": f32(1.0, 1.0)}, {"w": f32(4.0, 5.0)}
    clipped, norm, was_clipped = clip_update(old, new, 1.0)
    # update [3, 4], norm 5, scaled by 1/5 to [0.6, 0.8]; plus old [1, 1]
    assert (norm, was_clipped) == (pytest.approx(5.0), True)
    np.testing.assert_allclose(clipped["w"], [1.6, 1.8], rtol=1e-6)
    assert update_norm(old, clipped) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("bound", [10.0, 5.0, 0.0])
def test_clip_leaves_an_update_within_the_bound(bound):
    old, new = {"w": f32(0.0, 0.0)}, {"w": f32(3.0, 4.0)}
    clipped, norm, was_clipped = clip_update(old, new, bound)
    assert norm == pytest.approx(5.0)
    assert was_clipped is False
    np.testing.assert_array_equal(clipped["w"], f32(3.0, 4.0))
    assert clipped["w"] is not new["w"]  # a copy
    assert math.isfinite(norm)
