"""common.privacy.sigma_cache: a σ calibrated once is kept on disk, and never trusted without a
check."""

from __future__ import annotations

import json
import logging
import stat

import pytest
from opacus.accountants import RDPAccountant

from common.privacy import sigma_cache
from common.privacy.ledger import CALIBRATION_TOLERANCE, calibrate_noise, epsilon_of

DELTA = 1e-5
ARGS = (3.0, DELTA, 0.125, 24)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSORTIUM_CACHE_DIR", str(tmp_path / "cache"))
    calibrate_noise.cache_clear()  # as a fresh process
    yield tmp_path / "cache" / sigma_cache.FILE
    calibrate_noise.cache_clear()


def _no_search(monkeypatch):
    import opacus.accountants.utils as utils

    def refuse(**_kwargs):
        raise AssertionError("searched σ again")
    monkeypatch.setattr(utils, "get_noise_multiplier", refuse)


def test_a_fresh_process_reuses_the_kept_sigma(cache, monkeypatch):
    from opacus.accountants.utils import get_noise_multiplier

    sigma = calibrate_noise(*ARGS)
    assert sigma == get_noise_multiplier(target_epsilon=3.0, target_delta=DELTA,
                                         sample_rate=0.125, steps=24, accountant="rdp",
                                         epsilon_tolerance=CALIBRATION_TOLERANCE)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    calibrate_noise.cache_clear()
    _no_search(monkeypatch)
    assert calibrate_noise(*ARGS) == sigma


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_tampered_sigma_is_refused_and_searched_again(cache, caplog, scale):
    """A smaller σ would overspend, a larger one waste utility: both are outside Opacus'
    bound, so the search runs again and the file gets the right value."""
    sigma = calibrate_noise(*ARGS)
    entries = json.loads(cache.read_text())
    (entry,) = entries
    cache.write_text(json.dumps({entry: sigma * scale}))
    calibrate_noise.cache_clear()
    with caplog.at_level(logging.WARNING, logger="common.privacy.ledger"):
        assert calibrate_noise(*ARGS) == sigma
    assert "calibrating again" in caplog.text
    assert json.loads(cache.read_text()) == {entry: sigma}
    assert ARGS[0] - CALIBRATION_TOLERANCE <= epsilon_of([(sigma, 0.125, 24)], DELTA) <= ARGS[0]


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '{"x": "20"}'])
def test_a_damaged_file_is_ignored_and_rewritten(cache, body):
    cache.parent.mkdir(parents=True)
    cache.write_text(body)
    sigma = calibrate_noise(*ARGS)
    assert list(json.loads(cache.read_text()).values())[-1] == sigma


def test_an_unwritable_folder_costs_a_search_and_one_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CONSORTIUM_CACHE_DIR", str(blocker / "cache"))
    calibrate_noise.cache_clear()
    with caplog.at_level(logging.WARNING, logger="common.privacy.sigma_cache"):
        first = calibrate_noise(*ARGS)
        calibrate_noise.cache_clear()
        assert calibrate_noise(*ARGS) == first
    calibrate_noise.cache_clear()
    assert caplog.text.count("cannot keep noise calibrations") == 1


def test_epsilon_is_exactly_what_an_opacus_accountant_gives():
    """Not approximately: the same floating-point sum of Opacus' own RDP, history as run."""
    for history in ([(1.1, 0.25, 8)], [(1.1, 0.25, 8), (0.9, 0.1, 20), (1.1, 0.25, 8)],
                    [(0.7, 0.01, 300), (4.0, 1.0, 2)]):
        accountant = RDPAccountant()
        accountant.history = list(history)
        assert epsilon_of(history, DELTA) == accountant.get_epsilon(DELTA)


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CONSORTIUM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sigma_cache.cache_dir() == tmp_path / "consortium"
