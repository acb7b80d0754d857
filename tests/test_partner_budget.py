"""A partner's budget the coordinator cannot reset: one ledger per data source, a held-out split
fixed at the partner, the whole plan checked at round 1, and no lost release under concurrency."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from client.data import partner_dataset
from client.partner import train_round
from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import BudgetExceededError, ConfigError, PrivacyError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.privacy.ledger import PrivacyLedger, Release, epsilon_of, spend

DELTA = 1e-5


def _config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, labels="neg,pos", max_length=16, batch_size=8,
                  local_epochs=1, num_rounds=1, noise_multiplier=1.0, delta=DELTA,
                  dp_plan_check=False,
                  out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def _own(tmp_path: Path, data: Path, **policy) -> PartnerSettings:
    """org-a with its own data file and, as a real partner must, its own ledger-dir; its
    policy lets the tiny data's unlearnable plans train (the run's dp-plan-check cannot)."""
    policy = {"allow_unlearnable_rounds": True, **policy}
    return PartnerSettings(name="org-a", data_path=str(data), ledger_dir=str(tmp_path / "ledgers"),
                           **policy)


def _round(config: RunConfig, partner: PartnerSettings, rnd: int = 1, run: str = "r") -> dict:
    model = build_model(config, config.label_list)
    return train_round(config, partner, trainable_state(model), frozen_fingerprint(model), rnd,
                       run).metrics


def _ledger(tmp_path: Path) -> dict:
    [path] = (tmp_path / "ledgers").glob("org-a@*.json")
    return json.loads(path.read_text())["body"]


def test_run_config_cannot_open_a_fresh_ledger(tiny_bert: str, tmp_path: Path,
                                               sentiment_csv: Path) -> None:
    """Other seed, test-fraction, label order, an appended row: all compose into one ledger,
    and max-epsilon stops the run that would pass it."""
    partner = _own(tmp_path, sentiment_csv, max_epsilon=30.0)
    runs = [dict(), dict(seed=7), dict(test_fraction=0.5), dict(labels="pos,neg")]
    spent = []
    for i, change in enumerate(runs):
        spent.append(_round(_config(tiny_bert, tmp_path, **change), partner, run=f"run-{i}"))
    with sentiment_csv.open("a") as handle:  # 12 rows: the keyed split holds one out at random,
        handle.writelines(f"the food was great good fine {i},pos,food\n" for i in range(12))
        # so all twelve land in the held-out fifth with probability 0.2 ** 12
    spent.append(_round(_config(tiny_bert, tmp_path), partner, run="run-appended"))
    body = _ledger(tmp_path)
    assert [r["run_id"] for r in body["releases"]] == [f"run-{i}" for i in range(4)] + [
        "run-appended"]
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in body["releases"]]
    assert spent[-1]["epsilon"] == pytest.approx(epsilon_of(history, DELTA), rel=1e-9)
    assert all(a["epsilon"] < b["epsilon"] for a, b in zip(spent, spent[1:]))
    shas = [r["data_sha256"] for r in body["releases"]]
    assert shas[0] == shas[1] == shas[2]  # seed and test-fraction moved no row into training
    assert shas[4] not in shas[:4]  # the appended row is visible to an auditor
    tight = _own(tmp_path, sentiment_csv, max_epsilon=spent[-1]["epsilon"] * 1.01)
    with pytest.raises(BudgetExceededError):
        _round(_config(tiny_bert, tmp_path, seed=99), tight, run="run-over")
    assert len(_ledger(tmp_path)["releases"]) == 5


def test_a_new_data_id_is_the_partners_explicit_choice(tiny_bert: str, tmp_path: Path,
                                                       sentiment_csv: Path) -> None:
    config = _config(tiny_bert, tmp_path)
    _round(config, _own(tmp_path, sentiment_csv))
    _round(config, _own(tmp_path, sentiment_csv, data_id="v2"))
    names = sorted(p.name for p in (tmp_path / "ledgers").glob("org-a@*.json"))
    assert len(names) == 2 and "org-a@v2.json" in names
    with pytest.raises(ConfigError, match="data-id"):
        PartnerSettings.from_node_config({"data-id": "../x"})


def test_held_out_split_is_fixed_at_the_partner(tiny_bert: str, tmp_path: Path,
                                                sentiment_csv: Path) -> None:
    partner = _own(tmp_path, sentiment_csv)
    tests = []
    for change in (dict(), dict(seed=3), dict(test_fraction=0.6), dict(labels="pos,neg")):
        config = _config(tiny_bert, tmp_path, **change)
        _, test = partner_dataset(config, partner, config.label_list)
        tests.append(sorted(test.texts))
    assert all(t == tests[0] for t in tests) and 0 < len(tests[0]) < 40
    bigger = _own(tmp_path, sentiment_csv, test_fraction=0.5)
    _, more = partner_dataset(_config(tiny_bert, tmp_path), bigger, ("neg", "pos"))
    assert set(tests[0]) <= set(more.texts)  # a larger fraction only adds rows


def test_a_plan_that_cannot_finish_is_refused_at_round_one(tiny_bert: str, tmp_path: Path,
                                                           sentiment_csv: Path) -> None:
    partner = _own(tmp_path, sentiment_csv, max_epsilon=6.0)
    one = _round(_config(tiny_bert, tmp_path, epsilon=5.0, noise_multiplier=0.0), partner)
    assert one["epsilon"] == pytest.approx(5.0, rel=0.02)
    # a second run calibrated to ε = 5 on its own cannot finish within the 6 (RDP composes
    # two ε = 5 runs to about 7)
    config = _config(tiny_bert, tmp_path, epsilon=5.0, noise_multiplier=0.0, num_rounds=3)
    with pytest.raises(BudgetExceededError, match="plan from round 1"):
        _round(config, partner, rnd=1, run="second")
    assert len(_ledger(tmp_path)["releases"]) == 1


def test_delta_check_uses_the_larger_delta(tiny_bert: str, tmp_path: Path,
                                           sentiment_csv: Path) -> None:
    partner = _own(tmp_path, sentiment_csv, delta=0.1)
    with pytest.raises(PrivacyError, match="delta = 0.1 is not below"):
        _round(_config(tiny_bert, tmp_path), partner)


def _spend_many(args: tuple[str, int, int]) -> None:
    path, worker, count = args
    for i in range(count):
        spend(path, "src", Release(f"w{worker}", i, 1.0, 0.01, 10), DELTA, float("inf"))


def test_two_processes_on_one_ledger_lose_no_release(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.json")
    with multiprocessing.get_context("fork").Pool(2) as pool:  # fork: no re-import of torch
        pool.map(_spend_many, [(path, 0, 15), (path, 1, 15)])
    releases = PrivacyLedger.open(path, "src").releases
    assert len(releases) == 30
    assert sorted((r.run_id, r.round) for r in releases) == sorted(
        (f"w{w}", i) for w in (0, 1) for i in range(15))


def test_concurrent_spenders_cannot_both_pass_the_budget(tmp_path: Path) -> None:
    """The budget is checked on the state re-read under the lock: with room for one release,
    exactly one of two spenders gets it."""
    path = tmp_path / "ledger.json"
    release = Release("r", 1, 1.0, 0.01, 100)
    room = epsilon_of([(1.0, 0.01, 100)], DELTA) * 1.0001
    spend(path, "src", release, DELTA, room)
    with pytest.raises(BudgetExceededError):
        spend(path, "src", release, DELTA, room)
    assert len(PrivacyLedger.open(path, "src").releases) == 1


def test_version_one_ledgers_are_folded_in(tmp_path: Path, tiny_bert: str,
                                           sentiment_csv: Path) -> None:
    from common.infra.storage import write_sealed_json

    old = {"version": 1, "data_fingerprint": "f" * 64, "releases": [
        {"run_id": "old", "round": 1, "noise_multiplier": 1.0, "sample_rate": 0.2, "steps": 5}]}
    write_sealed_json(tmp_path / "ledgers" / f"org-a-{'0' * 16}.json", old)
    _round(_config(tiny_bert, tmp_path), _own(tmp_path, sentiment_csv))
    assert [r["run_id"] for r in _ledger(tmp_path)["releases"]] == ["old", "r"]
    assert np.isfinite(PrivacyLedger.open(
        next((tmp_path / "ledgers").glob("org-a@*.json")), _ledger(tmp_path)["source"]
    ).epsilon(DELTA))


def test_a_refusal_states_the_rounds_and_the_run_epsilon_that_still_fit(tmp_path: Path) -> None:
    """What a refused plan could still do, checked against Opacus' own accountant: that many
    rounds fit and one more does not; a run targeting the stated ε (σ calibrated by Opacus) fits,
    and one a little above does not."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    from common.privacy.ledger import what_fits

    def composed(history) -> float:
        accountant = RDPAccountant()
        accountant.history = list(history)
        return accountant.get_epsilon(DELTA)

    spent = [(0.9, 0.1, 20)]  # an earlier run on this data: ε 5.23
    plan = [(0.8, 0.125, 16)] * 3  # ε 8.23, 10.12, 11.68 after 1, 2, 3 rounds
    budget = 10.0
    assert composed(spent + plan) > budget  # the plan is refused
    rounds, epsilon = what_fits(spent, plan, DELTA, budget)
    assert composed(spent + plan[:rounds]) <= budget < composed(spent + plan[:rounds + 1])
    steps = sum(n for _, _, n in plan)
    sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=DELTA, sample_rate=0.125,
                                 steps=steps, accountant="rdp")
    assert composed(spent + [(sigma, 0.125, n) for _, _, n in plan]) <= budget
    above = get_noise_multiplier(target_epsilon=epsilon + 0.05, target_delta=DELTA,
                                 sample_rate=0.125, steps=steps, accountant="rdp")
    assert composed(spent + [(above, 0.125, n) for _, _, n in plan]) > budget
    ledger = PrivacyLedger(tmp_path / "l.json", "src",
                           [Release("old", 1, *spent[0])])
    with pytest.raises(BudgetExceededError, match=f"What still fits: {rounds} of these 3 round"
                       rf"\(s\) as planned, or all of them at epsilon <= {epsilon:.3f}"):
        ledger.check_budget(Release("new", 1, *plan[0]), DELTA, budget, plan[1:])
    assert ledger.releases == [Release("old", 1, *spent[0])]  # nothing recorded


def test_the_run_config_cannot_place_a_real_partners_ledger(tiny_bert: str, tmp_path: Path,
                                                            sentiment_csv: Path) -> None:
    """Issue 33 item 8: a partner with its own data keeps its ledger where its node config says;
    a run config's ledger-dir (the coordinator's choice: an empty directory is ε = 0) is never
    used for it, and without a node-config ledger-dir the round is refused, nothing spent."""
    config = _config(tiny_bert, tmp_path, ledger_dir=str(tmp_path / "fresh"))
    no_dir = PartnerSettings(name="org-a", data_path=str(sentiment_csv),
                             allow_unlearnable_rounds=True)
    with pytest.raises(ConfigError, match="sets no ledger-dir"):
        _round(config, no_dir)
    assert not (tmp_path / "fresh").exists()
    _round(config, _own(tmp_path, sentiment_csv))
    assert list((tmp_path / "ledgers").glob("org-a@*.json")) and not (tmp_path / "fresh").exists()
