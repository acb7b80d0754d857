"""common.privacy.ledger: ε from Opacus' RDP accountant, σ calibration, the persistent privacy
ledger."""

from __future__ import annotations

import math
import os
import stat

import pytest
from opacus.accountants import RDPAccountant
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from common.errors import BudgetExceededError, CheckpointError, PrivacyError
from common.privacy.ledger import (PrivacyLedger, Release, calibrate_noise, epsilon_of,
                            poisson_schedule)

DELTA = 1e-5
FP = "a" * 64
ROUNDS = [Release("run-1", 1, 1.1, 0.25, 8), Release("run-1", 2, 1.1, 0.25, 8),
          Release("run-2", 1, 0.9, 0.1, 20)]


def _opacus_epsilon(history, delta):
    """ε computed independently: a fresh accountant stepped one DP-SGD step at a time."""
    accountant = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("history", [
    [(1.1, 0.25, 8)],
    [(1.1, 0.25, 8), (1.1, 0.25, 8)],
    [(1.1, 0.25, 8), (0.9, 0.1, 20), (2.0, 0.5, 3)],
])
def test_epsilon_matches_a_fresh_opacus_accountant(history):
    expected = _opacus_epsilon(history, DELTA)
    assert epsilon_of(history, DELTA) == pytest.approx(expected, rel=1e-12)
    assert epsilon_of(history, DELTA) > 0


def test_epsilon_of_nothing_is_zero_and_of_no_noise_is_infinite():
    assert epsilon_of([], DELTA) == 0.0
    assert epsilon_of([(1.1, 0.25, 8), (0.0, 0.25, 8)], DELTA) == math.inf


@pytest.mark.parametrize("target, q, steps", [(2.0, 0.25, 16), (8.0, 0.1, 60), (0.5, 0.05, 40)])
def test_calibrated_noise_spends_the_target(target, q, steps):
    sigma = calibrate_noise(target, DELTA, q, steps)
    assert sigma > 0
    spent = epsilon_of([(sigma, q, steps)], DELTA)
    assert spent == pytest.approx(target, rel=0.01)
    assert spent <= target  # never more than asked for


def test_more_budget_means_less_noise():
    assert calibrate_noise(8.0, DELTA, 0.25, 16) < calibrate_noise(2.0, DELTA, 0.25, 16)


@pytest.mark.parametrize("n, batch, epochs, expected", [
    (100, 32, 2, (1 / 4, 8)),   # ceil(100 / 32) = 4 batches, 2 epochs
    (96, 32, 1, (1 / 3, 3)),
    (97, 32, 3, (1 / 4, 12)),
    (10, 32, 5, (1.0, 5)),
])
def test_poisson_schedule(n, batch, epochs, expected):
    assert poisson_schedule(n, batch, epochs) == expected


@pytest.mark.parametrize("n", [
    100, 640, 1000,
    2976,  # 93 batches: Opacus runs int(1 / (1/93)) = 92 steps
])
def test_poisson_schedule_matches_opacus_steps_per_epoch(n):
    q, steps = poisson_schedule(n, 32, 1)
    assert len(UniformWithReplacementSampler(num_samples=n, sample_rate=q)) == steps


def test_ledger_persists_across_processes(tmp_path):
    path = tmp_path / "ledgers" / "partner.json"
    ledger = PrivacyLedger.open(path, FP)
    assert ledger.releases == [] and ledger.epsilon(DELTA) == 0.0
    assert not path.exists()  # opening does not write
    for release in ROUNDS:
        ledger.record(release)
    reopened = PrivacyLedger.open(path, FP)
    assert reopened.releases == ROUNDS
    assert reopened.history == [(1.1, 0.25, 8), (1.1, 0.25, 8), (0.9, 0.1, 20)]
    assert reopened.epsilon(DELTA) == ledger.epsilon(DELTA)
    assert reopened.epsilon(DELTA) == pytest.approx(_opacus_epsilon(reopened.history, DELTA),
                                                    rel=1e-12)


def test_epsilon_grows_with_every_record(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", FP)
    spent = [ledger.epsilon(DELTA)]
    for release in ROUNDS:
        ledger.record(release)
        spent.append(PrivacyLedger.open(tmp_path / "l.json", FP).epsilon(DELTA))
    assert all(a < b for a, b in zip(spent, spent[1:])), spent


def test_a_rerun_round_counts_again(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", FP)
    ledger.record(ROUNDS[0])
    once = ledger.epsilon(DELTA)
    ledger.record(ROUNDS[0])  # the same round re-sent after a restart
    assert len(PrivacyLedger.open(tmp_path / "l.json", FP).releases) == 2
    assert ledger.epsilon(DELTA) > once


def test_ledger_of_other_data_is_refused(tmp_path):
    path = tmp_path / "l.json"
    PrivacyLedger.open(path, FP).record(ROUNDS[0])
    with pytest.raises(PrivacyError, match="other data"):
        PrivacyLedger.open(path, "b" * 64)


@pytest.mark.parametrize("keep", [0, 25, -5])
def test_truncated_ledger_is_an_error_not_a_reset(tmp_path, keep):
    path = tmp_path / "l.json"
    ledger = PrivacyLedger.open(path, FP)
    ledger.record(ROUNDS[0])
    ledger.record(ROUNDS[1])
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError):
        PrivacyLedger.open(path, FP)


def test_check_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", FP)
    ledger.record(ROUNDS[0])
    projected = epsilon_of(ledger.history + [(1.1, 0.25, 8)], DELTA)
    assert projected > ledger.epsilon(DELTA)
    assert ledger.check_budget(ROUNDS[1], DELTA, max_epsilon=projected * 1.01) == projected
    assert ledger.check_budget(ROUNDS[1], DELTA, max_epsilon=projected) == projected
    with pytest.raises(BudgetExceededError, match="round 2") as info:
        ledger.check_budget(ROUNDS[1], DELTA, max_epsilon=projected * 0.99)
    assert isinstance(info.value, PrivacyError)
    assert ledger.releases == [ROUNDS[0]]  # checking records nothing
    assert PrivacyLedger.open(tmp_path / "l.json", FP).releases == [ROUNDS[0]]


def test_check_budget_of_a_first_release_above_the_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "l.json", FP)
    with pytest.raises(BudgetExceededError):
        ledger.check_budget(Release("r", 1, 0.3, 0.5, 50), DELTA, max_epsilon=1.0)


def test_ledger_file_is_private(tmp_path):
    path = tmp_path / "l.json"
    PrivacyLedger.open(path, FP).record(ROUNDS[0])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["l.json"]
