"""Issue 33 item 11: a Message after which the partner's ledger holds more than before is
answered with that history whatever happens after the spending (client.handlers.answer): a
refusal carries it, an error becomes a refusal with its reason code and the history, and the
coordinator records it, so privacy_report.json never under-counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from client.policy import PartnerSettings
from common import protocol as P
from common.config import RunConfig
from common.privacy.ledger import PrivacyLedger, epsilon_of
from common.wire.records import history_from_json
from tests.test_partner_policy import Partner, refusal


@pytest.fixture(autouse=True)
def task_identity():  # Message(reply_to=...) reads it, as in a real ClientApp process
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def ledger_history(partner: Partner) -> list[tuple[float, float, int]]:
    [path] = partner.root.glob("org-a@*.json")
    return PrivacyLedger.open(path, json.loads(path.read_text())["body"]["source"]).history


def sent_history(reply) -> list[tuple[float, float, int]]:
    return history_from_json(str(reply.content.config_records[P.PARTNER][P.PRIVACY_HISTORY]))


def fail_in(monkeypatch: pytest.MonkeyPatch, desc: str) -> None:
    """DP-SGD of the round ``desc`` ("NAME round N") raises, after its release was recorded."""
    import client.partner

    real = client.partner.train_dp

    def train_dp(model, data, settings, dp, prior):
        if settings.desc == desc:
            raise RuntimeError("the GPU fell over at /data/clinic-notes.csv")
        return real(model, data, settings, dp, prior)

    monkeypatch.setattr(client.partner, "train_dp", train_dp)


def test_an_error_after_spending_carries_the_history(tiny_bert: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    partner = Partner(tiny_bert, tmp_path)
    assert not refusal(partner.train(1))
    fail_in(monkeypatch, "org-a round 2")
    reply = partner.train(2)
    assert not reply.has_error()  # an error reply carries no content: a coded refusal instead
    assert refusal(reply) == P.ERROR_INTERNAL  # still the code only, never the text
    history = ledger_history(partner)
    assert len(history) == 2 and sent_history(reply) == history


def test_a_refusal_after_spending_carries_the_history(tiny_bert: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Opacus' accountant disagreeing with the ledger: refused after the release is recorded."""
    import client.partner

    partner = Partner(tiny_bert, tmp_path)
    calls = iter(range(10))
    monkeypatch.setattr(client.partner, "epsilon_of", lambda history, delta: next(calls))
    reply = partner.train(1)
    assert "disagrees with Opacus" in refusal(reply)
    assert sent_history(reply) == ledger_history(partner) and len(sent_history(reply)) == 1


def test_a_refusal_before_spending_carries_none(tiny_bert: str, tmp_path: Path) -> None:
    partner = Partner(tiny_bert, tmp_path, {"max-epsilon": 0.01})
    reply = partner.train(1)
    assert "budget" in refusal(reply)
    assert P.PRIVACY_HISTORY not in reply.content.config_records[P.PARTNER]


def test_the_privacy_report_counts_a_round_that_failed_after_spending(
        tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator's real round loop in process: partner-1 spends in round 2 and fails;
    its report entry is its ledger's ε after both rounds (it had said round 1's)."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    config = RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                       batch_size=8, finetune="lora", dp_plan_check=False, local_epochs=1,
                       num_rounds=2, epsilon=8.0, min_partners=1,
                       out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    fail_in(monkeypatch, "partner-1 round 2")
    out = run_federation(LocalGrid(config, 2), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["partners_replied"] == ["partner-0"]
    assert any(f["partner"] == "partner-1" and P.ERROR_INTERNAL in f["reason"]
               for f in lines[1]["failures"])
    record = json.loads((out / "privacy_report.json").read_text())["partners"]["partner-1"]
    partner = PartnerSettings.from_node_config({"partition-id": 1, "num-partitions": 2})
    ledger = PrivacyLedger.open(partner.ledger_path(config), partner.data_source(config))
    assert len(ledger.history) == 2
    assert record["epsilon"] == pytest.approx(epsilon_of(ledger.history, config.delta),
                                              rel=1e-9)
    assert record["rounds_trained"] == 1 and len(record["history"]) == 2
