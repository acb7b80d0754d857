"""Issue 33 item 5: what one malicious partner can do to the aggregate under secure aggregation.

The coordinator cannot see what a partner masked, so a partner that masks (Σr)·target in place
of r·Δ sets the round's mean to ≈ target. What holds whatever it masks (server.secagg.
aggregate_bounds, docs/privacy.md): the masked weights sum to the announced (capped) ones, every
coordinate of the unmasked sum lies in [0, k·T], so |a_j| ≤ k·c / Σr, and ‖a‖ ≤ C(1 + 10⁻⁶) +
√d·k·(2c/T)/Σr; hence its pull on the mean, ‖a − h‖ (h: the others' share of the mean), is at
most that norm bound + ‖h‖ < 2C + slack. Four partner state machines in process, the fourth
malicious; no Flower processes."""

from __future__ import annotations

import numpy as np
import pytest

from client.secagg_protocol import PartnerSecAgg
from common.errors import UpdateError
from common.wire.secagg_identity import simulated_identity
from server.aggregation import validate_update
from server.secagg import (AggregateBounds, SecAggRound, aggregate_bounds, check_mean_update)
from tests.test_secagg import play_round

C, LEVELS, SIZE, W, K = 1.0, 2**22, 64, 100.0, 4
EXAMPLES = {1: 40.0, 2: 60.0, 3: 100.0, 4: 80.0}  # partner 4 is the malicious one
BAD = 4


class Forger(PartnerSecAgg):
    """A partner that masks ``forged`` (integers, weight entry first) instead of its update."""

    forged: np.ndarray = np.zeros(0)

    def add_masks(self, vector: np.ndarray) -> np.ndarray:
        return super().add_masks(self.forged)


def honest_deltas(seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    deltas = {n: rng.normal(0, 0.3 / np.sqrt(SIZE), SIZE) for n in EXAMPLES}
    return {n: d / max(1.0, np.linalg.norm(d) / C) for n, d in deltas.items()}  # ≤ C each


def ratios() -> dict[int, float]:
    return {n: round(min(e, W) / W * LEVELS) / LEVELS for n, e in EXAMPLES.items()}


def forged(values: np.ndarray, clipping_range: float) -> np.ndarray:
    """The integers that dequantize to ``values`` (weighted, any size), after the honest weight
    entry: what the malicious partner masks."""
    q = np.round((values + clipping_range) / (2 * clipping_range) * LEVELS).astype(np.int64)
    return np.concatenate([[round(ratios()[BAD] * LEVELS)], q])


def run_round(vector: np.ndarray | None, clipping_range: float = C,
              seed: int = 0) -> tuple[np.ndarray, float, np.ndarray]:
    """One round, partner 4 masking ``vector`` (None: honest). Returns (the mean the
    coordinator applies, its quantization error, h = the honest partners' share of the mean);
    UpdateError when the coordinator rejects the sum."""
    deltas = honest_deltas(seed)
    proto = SecAggRound(3, clipping_range, LEVELS, SIZE, W)
    ids = {n: simulated_identity(seed, n - 1, K) for n in EXAMPLES}
    partners = {n: (Forger() if n == BAD and vector is not None else PartnerSecAgg())
                for n in EXAMPLES}
    if vector is not None:
        partners[BAD].forged = vector  # type: ignore[attr-defined]
    mean, error = play_round(proto, partners, ids, EXAMPLES, W, deltas)
    check_mean_update(mean, error, C)
    r = ratios()
    honest = sum(r[n] * deltas[n] for n in EXAMPLES if n != BAD) / sum(r.values())
    return mean, error, honest


def bounds(clipping_range: float = C) -> AggregateBounds:
    return aggregate_bounds(K, sum(ratios().values()), C, clipping_range, LEVELS, SIZE)


def test_one_partner_sets_the_mean_and_stays_within_the_bound() -> None:
    """The issue's attack: masking (Σr)·target moves the mean to target + h, whatever the
    partner's own weight; the same update in the clear is rejected by the per-update check."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=SIZE)
    target *= 0.7 * C / np.linalg.norm(target)
    mean, error, honest = run_round(forged(sum(ratios().values()) * target, C))
    assert np.max(np.abs(mean - (target + honest))) <= 2 * error  # the partner chose the mean
    assert np.linalg.norm(mean) <= bounds().norm
    assert np.max(np.abs(mean)) <= bounds().coordinate
    pull = np.linalg.norm(mean - honest)
    assert pull > 2 * C * ratios()[BAD] / sum(ratios().values())  # > twice an honest pull
    assert pull <= bounds().norm + np.linalg.norm(honest) < 2 * C + 1e-3
    with pytest.raises(UpdateError, match="exceeds the agreed update-clip-norm"):
        validate_update({"u": sum(ratios().values()) / ratios()[BAD] * target},
                        {"u": np.zeros(SIZE)}, C)  # without SecAgg: r·Δ must be ≤ r·C


def test_a_mean_beyond_the_bound_is_rejected() -> None:
    big = np.full(SIZE, 3 * C / np.sqrt(SIZE))  # a mean of norm 3C
    with pytest.raises(UpdateError, match="exceeds update-clip-norm"):
        run_round(forged(sum(ratios().values()) * big, C))
    wrapped = forged(np.zeros(SIZE), C)
    wrapped[5] = -3 * LEVELS  # wraps mod 2^32: far above what k partners can sum
    with pytest.raises(UpdateError, match="outside \\[0, 4 × 4194304\\]"):
        run_round(wrapped)


def test_the_coordinate_bound_holds_when_the_norm_does_not_bind() -> None:
    """With secagg-clipping-range c = C / 50, k·c / Σr is below C: one coordinate pushed past it
    keeps the norm under C (so the norm check alone passed it before this fix) but leaves the
    sum's range, and the round's sum is dropped."""
    c = C / 50
    spike = np.zeros(SIZE)
    spike[7] = 1.5 * K * c  # a mean coordinate of ≈ 1.5·k·c/Σr ≈ 0.18 < C
    assert 1.5 * bounds(c).coordinate < C
    with pytest.raises(UpdateError, match="outside"):
        run_round(forged(spike, c), clipping_range=c)
    spike[7] = 0.9 * c  # inside whatever the others sent: accepted, and within the bound
    mean, _, _ = run_round(forged(spike, c), clipping_range=c)
    assert np.max(np.abs(mean)) <= bounds(c).coordinate


@pytest.mark.parametrize("seed", range(4))
def test_every_accepted_mean_is_within_the_bound(seed: int) -> None:
    """Whatever the malicious partner masks (random integers within and far beyond the range,
    scaled targets, spikes), a mean the coordinator applies satisfies the documented bound."""
    rng = np.random.default_rng(100 + seed)
    c = C / 10 if seed % 2 else C
    weight, total = round(ratios()[BAD] * LEVELS), sum(ratios().values())

    def target(norm: float) -> np.ndarray:
        direction = rng.normal(size=SIZE)
        return forged(total * norm * C * direction / np.linalg.norm(direction), c)

    candidates = [
        np.concatenate([[weight], rng.integers(-K * LEVELS, 2 * K * LEVELS, SIZE)]),
        np.concatenate([[weight], rng.integers(0, LEVELS + 1, SIZE)]),
        target(0.5), target(rng.uniform(0.8, 1.5)),
        forged(np.where(np.arange(SIZE) == seed, rng.uniform(-1.5, 1.5) * K * c, 0.0), c),
    ]
    accepted = 0
    for vector in candidates:
        try:
            mean, _, honest = run_round(vector, clipping_range=c, seed=seed)
        except UpdateError:
            continue
        accepted += 1
        assert np.linalg.norm(mean) <= bounds(c).norm
        assert np.max(np.abs(mean)) <= bounds(c).coordinate * (1 + 1e-9)
        assert np.linalg.norm(mean - honest) <= bounds(c).norm + np.linalg.norm(honest)
    assert 1 <= accepted < len(candidates)
