"""Partner-level (central) DP at the coordinator: σ sized to the aggregation actually performed,
recalibrated when replies are missing, really drawn at that σ, and accounted with Opacus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.differential_privacy import compute_stdv
from opacus.accountants import RDPAccountant

from common import protocol as P
from common.config import RunConfig
from common.errors import ConfigError, PrivacyError, UpdateError
from server.aggregation import RoundFold
from server.central_dp import (CentralDP, central_noise_std, clip_exactly, coordinator_rng,
                               record_round)

Z, C, DELTA = 1.1, 2.0, 1e-5
SIZES = {"a": 120, "b": 80, "c": 200, "d": 50, "e": 150}  # examples per partner: unequal
DIM = 200_000


def fresh_epsilon(rounds: int, z: float = Z, q: float = 1.0, delta: float = DELTA) -> float:
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=q)
    return accountant.get_epsilon(delta)


def run_round(replied: dict[str, int], seed: int = 0, min_partners: int = 2,
              updates: dict[str, np.ndarray] | None = None,
              ) -> tuple[RoundFold, dict[str, np.ndarray]]:
    """One coordinator round over ``replied`` partners (the others never answered)."""
    current = {"w": np.zeros(DIM, np.float32)}
    fold = RoundFold(current, clip_norm=C, central=CentralDP(Z, C, min_partners, DELTA),
                     rng=np.random.default_rng(seed))
    for name, size in replied.items():
        update = {"w": (updates or {}).get(name, np.zeros(DIM, np.float32))}
        assert fold.offer(name, update, {P.NUM_EXAMPLES: float(size), P.TRAIN_LOSS: 0.5})
    return fold, fold.result()


def test_sigma_used_is_z_c_max_weight_over_total_of_the_replies() -> None:
    replied = {k: v for k, v in SIZES.items() if k != "c"}  # 5 asked, "c" never replied
    fold, _ = run_round(replied)
    hand = 1.1 * 2.0 * 150 / (120 + 80 + 50 + 150)  # z · C · max w / Σ w over the 4 replies
    assert hand == pytest.approx(0.825)
    assert fold.noise_std == pytest.approx(hand, rel=1e-12)
    # Flower's fixed-clipping wrappers would add z · C / (number sampled) = 0.44: 1.9× too little
    assert compute_stdv(Z, C, len(SIZES)) == pytest.approx(0.44)
    assert fold.noise_std / compute_stdv(Z, C, len(SIZES)) == pytest.approx(1.875)


def test_the_released_mean_is_the_weighted_mean_of_clipped_updates_plus_that_noise() -> None:
    rng = np.random.default_rng(7)
    updates = {k: rng.normal(size=DIM).astype(np.float32) for k in SIZES}
    updates["a"] *= C / np.linalg.norm(updates["a"].astype(np.float64))  # exactly C: not clipped
    updates["d"] *= 0.5 * C / np.linalg.norm(updates["d"].astype(np.float64))
    for k in ("b", "e"):  # 5e-5 over the bound: validation lets it pass, the fold clips it to C
        updates[k] *= C * (1 + 5e-5) / np.linalg.norm(updates[k].astype(np.float64))
    replied = {k: v for k, v in SIZES.items() if k != "c"}
    fold, released = run_round(replied, seed=3, updates=updates)
    clipped = {k: updates[k].astype(np.float64) * min(1.0, C / np.linalg.norm(
        updates[k].astype(np.float64))) for k in replied}
    mean = sum(replied[k] * clipped[k] for k in replied) / sum(replied.values())
    noise = np.random.default_rng(3).normal(0.0, 0.825, DIM)
    assert fold.noise_std == pytest.approx(0.825)
    np.testing.assert_allclose(released["w"], (mean + noise).astype(np.float32),
                               rtol=1e-6, atol=1e-6)
    assert released["w"].dtype == np.float32


def test_an_under_replied_round_is_recalibrated_and_below_min_partners_refused() -> None:
    all_five = run_round(SIZES)[0].noise_std
    without_c = run_round({k: v for k, v in SIZES.items() if k != "c"})[0].noise_std
    without_e = run_round({k: v for k, v in SIZES.items() if k != "e"})[0].noise_std
    assert all_five == pytest.approx(Z * C * 200 / 600)
    assert without_c == pytest.approx(Z * C * 150 / 400) and without_c > all_five
    assert without_e == pytest.approx(Z * C * 200 / 450) and without_e > all_five
    # the relative noise Σ w·σ / (max w · C) is z in every case: each round costs the same ε
    for weights in ([120, 80, 200, 50, 150], [120, 80, 50, 150], [120, 80]):
        assert central_noise_std(Z, C, weights) * sum(weights) / (max(weights) * C) == \
            pytest.approx(Z)
    with pytest.raises(PrivacyError, match="min-partners is 3; the round is refused"):
        run_round({"a": 120, "b": 80}, min_partners=3)


def test_the_noise_added_really_has_that_standard_deviation() -> None:
    fold = RoundFold({"w": np.zeros(DIM, np.float32), "b": np.zeros(10, np.float32)}, C,
                     central=CentralDP(Z, C, 2, DELTA), rng=coordinator_rng())
    for name in ("d", "e", "a", "b"):  # zero updates: whatever comes out is the noise
        fold.offer(name, {"w": np.zeros(DIM, np.float32), "b": np.zeros(10, np.float32)},
                   {P.NUM_EXAMPLES: float(SIZES[name])})
    noise = fold.result()["w"].astype(np.float64)
    sigma = Z * C * 150 / 400
    assert fold.noise_std == pytest.approx(sigma)
    # sample std of 200 000 draws: standard error σ / sqrt(2n) = 0.16 %; 1 % is > 6 s.e.
    assert np.std(noise) == pytest.approx(sigma, rel=0.01)
    assert abs(np.mean(noise)) < 6 * sigma / math.sqrt(DIM)
    # drawn from OS entropy, not the run seed: two coordinators never add the same noise
    again = coordinator_rng().normal(0.0, sigma, 5)
    assert not np.allclose(again, coordinator_rng().normal(0.0, sigma, 5))


def test_partner_level_epsilon_equals_a_fresh_opacus_accountant() -> None:
    central = CentralDP(Z, C, 2, DELTA)
    for rounds in (1, 3, 10):
        assert central.epsilon(rounds) == pytest.approx(fresh_epsilon(rounds), rel=1e-9)
    partners: dict[str, dict] = {k: {} for k in SIZES}
    for rnd in range(1, 4):  # "c" misses round 2: only rounds its update was in count for it
        averaged = [k for k in SIZES if not (k == "c" and rnd == 2)]
        line = record_round(partners, averaged, [SIZES[k] for k in averaged], central, 0.8)
    assert line["central_dp"]["partners_averaged"] == 5
    assert partners["a"]["partner_level_epsilon"] == pytest.approx(fresh_epsilon(3), rel=1e-9)
    assert partners["c"]["partner_level_epsilon"] == pytest.approx(fresh_epsilon(2), rel=1e-9)
    assert partners["c"]["partner_level_history"] == [[Z, 1.0, 1]] * 2
    off = {"x": {}}
    assert record_round(off, ["x"], [10], None, None) == {}
    assert off["x"]["partner_level_epsilon"] is None  # no central DP: no partner-level bound


def test_exact_clip_holds_the_bound_in_float64() -> None:
    current = {"w": np.ones(1000, np.float32)}
    update = {"w": current["w"] + np.full(1000, 1.0, np.float32)}  # norm 31.6
    clipped = clip_exactly(current, update, C)
    assert np.linalg.norm(clipped["w"] - 1.0) == pytest.approx(C, rel=1e-12)
    inside = clip_exactly(current, {"w": current["w"] + 0.01}, C)
    np.testing.assert_allclose(inside["w"], 1.01, rtol=1e-6)


@pytest.mark.parametrize("changes, key", [
    (dict(aggregation="median"), "aggregation"),
    (dict(aggregation="krum:1"), "aggregation"),
    (dict(update_clip_norm=0.0), "update-clip-norm"),
    (dict(central_noise_multiplier=0.0), "central-noise-multiplier"),
])
def test_incompatible_settings_are_refused(changes: dict, key: str) -> None:
    values = {"central_dp": True, "central_noise_multiplier": 1.0, **changes}
    with pytest.raises(ConfigError, match=f"central-dp = true does not work with {key}"):
        RunConfig(**values)
    assert RunConfig(central_dp=True, central_noise_multiplier=1.0).central_dp


def test_a_robust_fold_cannot_carry_central_noise() -> None:
    with pytest.raises(UpdateError, match="weighted mean"):
        RoundFold({"w": np.zeros(2, np.float32)}, C, robust="median",
                  central=CentralDP(Z, C, 2, DELTA))


def test_coordinator_run_recalibrates_and_reports_partner_level_epsilon(
        tiny_bert: str, tmp_path: Path) -> None:
    """The real round loop in process (simulations.local_grid), 5 partners, one silent in
    round 2: σ follows the replies, ε per partner counts its own rounds."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    config = RunConfig(base_model=tiny_bert, examples_per_partner=20, max_length=16,
                       batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=2, dp=False,
                       central_dp=True,
                       central_noise_multiplier=Z, update_clip_norm=C, round_timeout=1.0,
                       out_dir=str(tmp_path / "out"))
    grid = LocalGrid(config, 5, silent=lambda pid, rnd: pid == 4 and rnd == 2)
    out = run_federation(grid, config)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / "privacy_report.json").read_text())
    # σ = z C max w / Σ w over the updates averaged (w: training examples, ~16 each)
    w = {n: p["examples"] for n, p in report["partners"].items()}
    assert lines[0]["central_dp"]["noise_std"] == pytest.approx(
        Z * C * max(w.values()) / sum(w.values()))
    four = [v for n, v in w.items() if n != "partner-4"]
    assert lines[1]["central_dp"]["noise_std"] == pytest.approx(Z * C * max(four) / sum(four))
    assert "no reply within round-timeout" in lines[1]["failures"][0]["reason"]
    assert report["partner_level"]["central_dp"] is True
    eps = {n: p["partner_level_epsilon"] for n, p in report["partners"].items()}
    assert eps["partner-4"] == pytest.approx(fresh_epsilon(1), rel=1e-9)
    assert eps["partner-0"] == pytest.approx(fresh_epsilon(2), rel=1e-9)
    assert lines[1]["central_dp"]["partner_level_epsilon"] == eps
    assert lines[1]["central_dp"]["max_partner_level_epsilon"] == eps["partner-0"]


def test_a_coordinator_crash_after_a_release_is_counted_on_resume(
        tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 2's noised model reaches a partner (round 3's first TRAIN Message, which asks it
    to evaluate that model) and the coordinator dies there. Round 2 was checkpointed before
    that message left, so the resumed run asks for round 2's evaluation again without
    releasing it again, writes its metrics line, and the report counts exactly the releases
    made."""
    import server.coordinator as coordinator
    from flwr.app import MessageType

    from simulations.local_grid import LocalGrid

    class DiesInRound3(LocalGrid):
        def _answer(self, msg):
            reply = super()._answer(msg)
            if self.sent[-1][:2] == (MessageType.TRAIN, 3) and not self.config.resume:
                raise RuntimeError("coordinator killed after round 2's release")
            return reply

    made: list[float] = []  # σ of every central release
    real_release = CentralDP.release

    def release(self, *args, **kwargs):
        noised, std = real_release(self, *args, **kwargs)
        made.append(std)
        return noised, std

    monkeypatch.setattr(CentralDP, "release", release)
    monkeypatch.setattr(coordinator, "export_model", lambda *args, **kwargs: None)
    config = RunConfig(base_model=tiny_bert, examples_per_partner=20, max_length=16,
                       batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=3, dp=False,
                       central_dp=True,
                       central_noise_multiplier=Z, update_clip_norm=C, round_timeout=1.0,
                       out_dir=str(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="killed"):
        coordinator.run_federation(DiesInRound3(config, 3), config)
    assert len(made) == 2
    resumed = config.replace(resume=True)
    out = coordinator.run_federation(LocalGrid(resumed, 3), resumed)
    assert len(made) == 3  # round 2 is not released twice; round 3 once
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert lines[1]["central_dp"]["noise_std"] == pytest.approx(made[1])  # kept from before
    assert "eval_failures" in lines[1]  # evaluated after the restart, but partner-0 refuses:
    # a partner evaluates a round once, and the in-process grid keeps the run id
    assert sorted(lines[1]["eval_per_partner"]) == ["partner-1", "partner-2"]
    assert [f["partner"] for f in lines[1]["eval_failures"]] == ["partner-0"]
    report = json.loads((out / "privacy_report.json").read_text())["partners"]
    for record in report.values():
        assert len(record["partner_level_history"]) == len(made)
        assert record["partner_level_epsilon"] == pytest.approx(fresh_epsilon(3), rel=1e-9)


def test_partner_level_epsilon_is_cumulative_across_init_from(tiny_bert: str,
                                                             tmp_path: Path) -> None:
    """Issue 33 item 12: a run continuing a release (init-from) starts each partner's
    partner-level history from the release's, so the child's ε composes both runs' releases
    (2 + 1 here), as its release.json says ("cumulative over this release and its ancestors");
    a partner of the parent that takes no part in the child is carried on, for the next."""
    from common.model.release import read_release
    from server.central_dp import INHERITED, inherited_partner_level
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    config = RunConfig(base_model=tiny_bert, examples_per_partner=20, max_length=16,
                       batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=2, dp=False,
                       central_dp=True, central_noise_multiplier=Z, update_clip_norm=C,
                       min_partners=1, out_dir=str(tmp_path / "parent"))
    parent = run_federation(LocalGrid(config, 2), config)
    child_config = config.replace(out_dir=str(tmp_path / "child"), num_rounds=1,
                                  init_from=str(parent / "model"))
    child = run_federation(LocalGrid(child_config, 1, run_id=2), child_config)  # partner-0 only
    report = json.loads((child / "privacy_report.json").read_text())
    record = read_release(child / "model").record
    mine = report["partners"]["partner-0"]
    assert mine["partner_level_history"] == [[Z, 1.0, 1]] * 3
    assert mine["partner_level_epsilon"] == pytest.approx(fresh_epsilon(3), rel=1e-9)
    assert record["partners"]["partner-0"]["partner_level_epsilon"] == \
        mine["partner_level_epsilon"]
    assert record[INHERITED] == {"partner-1": [[Z, 1.0, 1]] * 2}  # its parent rounds, kept
    assert inherited_partner_level(record) == {"partner-0": [[Z, 1.0, 1]] * 3,
                                               "partner-1": [[Z, 1.0, 1]] * 2}


def test_an_ancestor_without_central_dp_leaves_no_partner_level_bound() -> None:
    from server.central_dp import inherited_partner_level

    plain = {"run_config": {"central-dp": False},
             "partners": {"a": {"rounds_trained": 2}, "b": {"rounds_trained": 0}}}
    assert inherited_partner_level(plain) == {"a": None, "b": []}
    older = {"run_config": {"central-dp": True, "central-noise-multiplier": Z},
             "partners": {"a": {"rounds_trained": 2, "partner_level_epsilon": 1.0}}}
    assert inherited_partner_level(older) == {"a": [[Z, 1.0, 1]] * 2}  # over-counts, never under
    carried = {**older, "partner_level_inherited": {"b": None, "c": [[Z, 1.0, 1]]}}
    assert inherited_partner_level(carried) == {"a": [[Z, 1.0, 1]] * 2, "b": None,
                                                "c": [[Z, 1.0, 1]]}
    partners: dict[str, dict] = {"a": {}, "c": {}}
    line = record_round(partners, ["a", "c"], [10, 10], CentralDP(Z, C, 2, DELTA), 0.5,
                        inherited_partner_level(plain))
    assert partners["a"]["partner_level_epsilon"] is None and partners["a"][
        "partner_level_unbounded"]
    assert partners["c"]["partner_level_epsilon"] == pytest.approx(fresh_epsilon(1), rel=1e-9)
    assert line["central_dp"]["max_partner_level_epsilon"] is None  # one partner has no bound
    assert inherited_partner_level({"run_config": {"central-dp": True},
                                    "partners": {"a": partners["a"]}}) == {"a": None}
