"""A malicious partner that claims a huge ``num-examples`` to dominate the average: under plain
FedAvg, multi-Krum and secure aggregation its weight is capped at ``max-partner-weight``, and a
claim its own DP sampling rate contradicts is rejected. Hand-computed expectations; the
coordinator's fold (server.aggregation.RoundFold) and the secure-aggregation stages are called
directly, plus one real round in which a rejected update's spent ε is still reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.secagg import PartnerSecAgg
from common import protocol as P
from common.config import RunConfig
from common.errors import UpdateError
from common.wire.secagg_params import threshold_for
from common.infra.storage import read_sealed_json
from common.wire.weights import capped_weight, check_claimed_examples
from server.aggregation import RoundFold

CAP = 20.0  # max-partner-weight
LIE = 1e12  # the inflated claim
CURRENT = {"w": np.zeros(3, np.float32)}


def offer_all(fold: RoundFold, updates: list[tuple[list[float], dict[str, float]]]) -> np.ndarray:
    for i, (w, metrics) in enumerate(updates):
        assert fold.offer(f"p{i}", {"w": np.array(w, np.float32)}, metrics), fold.failures
    return fold.result()["w"]


def claim(examples: float, sample_rate: float = 0.0) -> dict[str, float]:
    return {P.NUM_EXAMPLES: examples, P.SAMPLE_RATE: sample_rate, P.TRAIN_LOSS: 0.5}


def test_fedavg_caps_an_inflated_claim() -> None:
    """Three honest partners (10 examples each) push (1, 0, 0); the inflater pushes (0, 1, 0)
    and claims 10^12. Its share of the mean is CAP / (CAP + 30) = 0.4, not ≈ 1."""
    honest = [([1.0, 0.0, 0.0], claim(10))] * 3
    inflater = ([0.0, 1.0, 0.0], claim(LIE))
    capped = offer_all(RoundFold(CURRENT, 10.0, max_weight=CAP), [*honest, inflater])
    np.testing.assert_allclose(capped, [30 / 50, 20 / 50, 0], rtol=1e-6)
    uncapped = offer_all(RoundFold(CURRENT, 10.0), [*honest, inflater])
    assert uncapped[1] > 0.999  # without the cap the inflater is the average


def test_multi_krum_caps_an_inflated_claim() -> None:
    """multi-krum:1 over 5 updates keeps the 4 with the best scores and averages them by
    weight. The inflater sits next to the honest cluster, so Krum keeps it; the far honest
    update is dropped. Kept: three of weight 10, the inflater capped at 20."""
    updates = [([1.0, 0.0, 0.0], claim(10)), ([1.1, 0.0, 0.0], claim(10)),
               ([0.9, 0.0, 0.0], claim(10)), ([3.0, 0.0, 0.0], claim(10)),
               ([1.0, 0.2, 0.0], claim(LIE))]
    merged = offer_all(RoundFold(CURRENT, 10.0, robust="multi-krum:1", max_weight=CAP), updates)
    assert merged[1] == pytest.approx(0.2 * CAP / (CAP + 30), rel=1e-6)  # its share: 0.4
    assert merged[0] == pytest.approx((10 * 1 + 10 * 1.1 + 10 * 0.9 + CAP * 1.0) / 50, rel=1e-6)
    uncapped = offer_all(RoundFold(CURRENT, 10.0, robust="multi-krum:1"), updates)
    assert uncapped[1] == pytest.approx(0.2, rel=1e-6)  # without the cap: all its update


def test_a_claim_its_own_sampling_rate_contradicts_is_rejected() -> None:
    """Under DP q = 1 / ceil(n / B): 50 examples at B = 8 give q = 1/7."""
    check_claimed_examples(50, 1 / 7, 8)
    for n in (48, 57, LIE):  # 48 and 57 would be 6 and 8 batches
        with pytest.raises(UpdateError, match="contradicts the partner's sample-rate 1/7"):
            check_claimed_examples(n, 1 / 7, 8)
    check_claimed_examples(LIE, 1 / 7, None)  # B chosen by the partner: only n >= 7 is sure
    with pytest.raises(UpdateError, match="at least 7"):
        check_claimed_examples(5, 1 / 7, None)
    with pytest.raises(UpdateError, match="whole number of batches"):
        check_claimed_examples(50, 0.3, 8)
    fold = RoundFold(CURRENT, 10.0, max_weight=CAP, dp=True, batch_size=8)
    assert not fold.offer("liar", {"w": np.ones(3, np.float32)}, claim(LIE, 1 / 7))
    assert "contradicts" in fold.failures[0]["reason"]
    assert not fold.offer("no-q", {"w": np.ones(3, np.float32)}, {P.NUM_EXAMPLES: 50.0})
    # a consistent lie (q = B / n) passes the check, and the cap bounds it
    assert fold.offer("consistent", {"w": np.ones(3, np.float32)}, claim(LIE, 8 / LIE))
    assert fold.losses[-1][1] == CAP


def test_secure_aggregation_caps_an_inflated_claim() -> None:
    """The coordinator caps the announced claim, the partner masks min(n, W) / W of its own
    run config's W; the unmasked mean gives the inflater CAP / (CAP + 30) of the weight."""
    from common.wire.secagg_identity import simulated_identity
    from server.secagg import SecAggRound
    from tests.test_secagg import play_round

    deltas = {1: np.array([1.0, 0, 0]), 2: np.array([1.0, 0, 0]), 3: np.array([1.0, 0, 0]),
              4: np.array([0, 1.0, 0])}
    claims = {1: 10.0, 2: 10.0, 3: 10.0, 4: LIE}
    levels = 2**22
    proto = SecAggRound(threshold_for(4, 0.6), 10.0, levels, 3, CAP)
    partners = {n: PartnerSecAgg() for n in deltas}
    ids = {n: simulated_identity(0, n - 1, len(deltas)) for n in deltas}
    mean, error = play_round(proto, partners, ids, claims, CAP, deltas)
    assert partners[4].ratio() == 1.0 and proto.weights[4] == capped_weight(LIE, CAP) == CAP
    np.testing.assert_allclose(mean, [30 / 50, 20 / 50, 0], atol=error + 1e-12)


def test_a_rejected_update_still_reports_the_epsilon_it_spent(tiny_bert: str,
                                                              tmp_path: Path) -> None:
    """A real DP round (simulations.local_grid): partner 2 sends an update 1000× past the clip,
    the coordinator rejects it, yet the privacy report holds that partner's ledger history."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid, sign_flip

    config = RunConfig(base_model=tiny_bert, examples_per_partner=20, max_length=16,
                       batch_size=8, local_epochs=1, num_rounds=1, epsilon=50.0,
                       dp_plan_check=False, out_dir=str(tmp_path / "out"))
    out = run_federation(LocalGrid(config, 3, tampers={2: sign_flip(scale=1e6)}), config)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "exceeds the agreed update-clip-norm" in line["failures"][0]["reason"]
    assert "partner-2" not in line["partners_replied"]
    report = json.loads((out / "privacy_report.json").read_text())["partners"]
    for name in ("partner-0", "partner-1", "partner-2"):
        ledger = [r for path in (out / "ledgers").glob(f"{name}[@-]*.json")
                  for r in read_sealed_json(path)["releases"]]
        assert len(ledger) == 1
        assert report[name]["history"] == [[r["noise_multiplier"], r["sample_rate"],
                                            r["steps"]] for r in ledger]
        assert report[name]["epsilon"] is not None and report[name]["epsilon"] > 0
