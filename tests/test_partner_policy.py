"""A malicious coordinator against one partner's policy, through the real ClientApp handlers:
evaluation asked twice or of a round the partner did not train, code the partner has not
approved, and runs that fall short of the partner's requirements. Every refusal is audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import app
from client.partner import AUDIT_LOG
from common.wire.records import from_array_record, to_array_record
from common import protocol as P
from common.code_hash import code_hash, running_code_hash
from common.config import RunConfig
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def task_identity():  # Message(reply_to=...) reads it, as in a real ClientApp process
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class Partner:
    """One partner's ClientApp, fed Messages as a coordinator would send them."""

    def __init__(self, tiny_bert: str, tmp_path: Path, node: dict[str, Any] | None = None,
                 **run: Any) -> None:
        values = dict(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                      batch_size=8, local_epochs=1, num_rounds=2, noise_multiplier=1.0,
                      dp_plan_check=False, out_dir=str(tmp_path / "out"))
        values.update(run)
        self.config = RunConfig(**values)
        self.root = tmp_path / "ledgers"
        # the tiny data cannot learn: a partner with its own data must allow it (item 2)
        self.context = Context(1, 1, {"partner-name": "org-a", "ledger-dir": str(self.root),
                                      "allow-unlearnable-rounds": True, **(node or {})},
                               RecordDict(), self.config.to_mapping())
        model = build_model(self.config, LABELS)
        self.arrays, self.fingerprint = trainable_state(model), frozen_fingerprint(model)

    def _send(self, kind: str, rnd: int, arrays: dict[str, np.ndarray],
              evaluate: int = 0) -> Message:
        config = {P.ROUND: rnd, P.MODEL_FINGERPRINT: self.fingerprint}
        if evaluate:
            config[P.EVALUATE_ROUND] = evaluate
        msg = Message(RecordDict({P.ARRAYS: to_array_record(arrays), P.CONFIG: ConfigRecord(
            config)}),
            dst_node_id=1, message_type=kind, group_id=str(rnd))
        handler = app.train if kind == MessageType.TRAIN else app.evaluate
        return handler(msg, self.context)

    def train(self, rnd: int, evaluate: int = 0) -> Message:
        return self._send(MessageType.TRAIN, rnd, self.arrays, evaluate)

    def evaluate(self, rnd: int, arrays: dict[str, np.ndarray] | None = None) -> Message:
        return self._send(MessageType.EVALUATE, rnd, arrays or self.arrays)

    def audit(self) -> list[dict[str, Any]]:
        path = self.root / AUDIT_LOG
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def refusal(reply: Message) -> str:
    return str(reply.content.config_records[P.PARTNER].get(P.REFUSAL, ""))


def test_evaluation_once_per_round_the_partner_trained(tiny_bert: str, tmp_path: Path) -> None:
    partner = Partner(tiny_bert, tmp_path)
    assert "did not train" in refusal(partner.evaluate(2))
    trained = partner.train(1)
    assert not refusal(trained)
    update = from_array_record(trained.content.array_records[P.ARRAYS])
    first = partner.evaluate(1, update)
    assert not refusal(first)
    metrics = dict(first.content.metric_records[P.METRICS])
    assert P.ACCURACY in metrics and P.EVAL_LOSS not in metrics  # counts, no exact loss
    crafted = {k: v + 0.5 for k, v in update.items()}  # other weights, same round
    assert "already evaluated" in refusal(partner.evaluate(1, crafted))
    refused = [e for e in partner.audit() if e.get("refused")]
    assert [e["message"] for e in refused] == ["evaluation", "evaluation"]
    assert all(e["bytes_sent"] == 0 for e in refused)


def eval_refusal(reply: Message) -> str:
    return str(reply.content.config_records[P.PARTNER].get(P.EVAL_REFUSAL, ""))


def test_a_train_message_evaluates_the_model_it_brings_first(tiny_bert: str,
                                                             tmp_path: Path) -> None:
    """The same policy as the evaluate Message: once, a round it trained, the round before."""
    partner = Partner(tiny_bert, tmp_path, num_rounds=3)
    assert not eval_refusal(partner.train(1))  # round 1 asks for nothing
    reply = partner.train(2, evaluate=1)
    assert not refusal(reply) and not eval_refusal(reply)
    assert P.ARRAYS in reply.content.array_records
    metrics = dict(reply.content.metric_records[P.EVALUATION])
    assert P.ACCURACY in metrics and P.EVAL_LOSS not in metrics  # counts, no exact loss
    again = partner.train(2, evaluate=1)  # trained again (a resumed round): evaluated once
    assert "already evaluated" in eval_refusal(again) and not refusal(again)
    assert P.EVALUATION not in again.content.metric_records
    assert "aggregate of round 2" in eval_refusal(partner.train(3, evaluate=1))
    assert [e["message"] for e in partner.audit() if e.get("refused")] == ["evaluation"] * 2
    off = Partner(tiny_bert, tmp_path / "off", {"evaluation": "off"})
    off.train(1)
    reply = off.train(2, evaluate=1)
    assert "evaluation = off" in eval_refusal(reply) and P.ARRAYS in reply.content.array_records


def test_first_evaluation_before_any_training_is_refused(tiny_bert: str,
                                                          tmp_path: Path) -> None:
    assert "did not train" in refusal(Partner(tiny_bert, tmp_path).evaluate(1))


def test_evaluation_off_and_full(tiny_bert: str, tmp_path: Path) -> None:
    off = Partner(tiny_bert, tmp_path / "off", {"evaluation": "off"})
    off.train(1)
    assert "evaluation = off" in refusal(off.evaluate(1))
    full = Partner(tiny_bert, tmp_path / "full", {"evaluation": "full"})
    full.train(1)
    assert P.EVAL_LOSS in dict(full.evaluate(1).content.metric_records[P.METRICS])


def test_code_the_partner_has_not_approved_is_refused(tiny_bert: str, tmp_path: Path) -> None:
    partner = Partner(tiny_bert, tmp_path, {"allowed-code": "0" * 64})
    reason = refusal(partner.train(1))
    assert "allowed-code" in reason
    assert not list(partner.root.glob("org-a@*.json"))  # nothing trained, nothing spent
    assert partner.audit()[-1]["refused"] == reason
    approved = Partner(tiny_bert, tmp_path / "ok", {"allowed-code": running_code_hash()})
    assert not refusal(approved.train(1))


def test_approve_hashes_a_reviewed_checkout(tmp_path: Path) -> None:
    assert code_hash(ROOT) == running_code_hash()
    copy = tmp_path / "checkout"
    for path in [ROOT / "pyproject.toml", *ROOT.glob("c*/*.py")]:
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    first = code_hash(copy)
    (copy / "client" / "app.py").write_text((copy / "client" / "app.py").read_text() + "\n#\n")
    assert code_hash(copy) != first


@pytest.mark.parametrize("node, run, reason", [
    ({"min-partners": 5}, {"min_partners": 2}, "never takes part with fewer than 5"),
    ({"require-secure-aggregation": True}, {}, "requires secure-aggregation"),
    ({"require-central-dp": "true"}, {}, "requires central-dp"),
    ({"max-rounds": 1}, {"num_rounds": 2}, "trains at most 1 per run"),
])
def test_runs_short_of_the_partners_requirements_are_refused(
        tiny_bert: str, tmp_path: Path, node: dict, run: dict, reason: str) -> None:
    partner = Partner(tiny_bert, tmp_path, node, **run)
    assert reason in refusal(partner.train(1))
    assert not list(partner.root.glob("org-a@*.json"))


def test_batch_metrics_leave_only_when_the_policy_says_so(tiny_bert: str,
                                                          tmp_path: Path) -> None:
    quiet = dict(Partner(tiny_bert, tmp_path / "q").train(1).content.metric_records[P.METRICS])
    assert P.TRAIN_LOSS not in quiet and P.CLIPPED_FRACTION not in quiet
    opened = Partner(tiny_bert, tmp_path / "o", {"release-metrics": "train-loss"})
    metrics = dict(opened.train(1).content.metric_records[P.METRICS])
    assert P.TRAIN_LOSS in metrics and P.CLIPPED_FRACTION not in metrics


def test_unknown_release_metric_is_a_config_error() -> None:
    from client.policy import PartnerSettings
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="release-metrics"):
        PartnerSettings.from_node_config({"release-metrics": "eval-loss"})
    with pytest.raises(ConfigError, match="evaluation"):
        PartnerSettings.from_node_config({"evaluation": "everything"})
    assert RunConfig().min_partners >= 1


def test_bad_secure_aggregation_setup_is_refused_before_any_epsilon(tiny_bert: str,
                                                                     tmp_path: Path) -> None:
    from common.wire.secagg_params import setup_parameters

    partner = Partner(tiny_bert, tmp_path, secure_aggregation=True, min_partners=2)
    params = {**setup_parameters(partner.config), P.SECAGG_THRESHOLD: 2,
              P.SECAGG_MAX_WEIGHT: 1e12}  # the weight-isolation attack of issue 13
    msg = Message(RecordDict({P.ARRAYS: to_array_record(partner.arrays), P.CONFIG: ConfigRecord(
        {P.ROUND: 1, P.MODEL_FINGERPRINT: partner.fingerprint}), P.SECAGG: ConfigRecord(
        {P.SECAGG_STAGE: P.SECAGG_SETUP, **params})}),
        dst_node_id=1, message_type=MessageType.TRAIN, group_id="1")
    reason = refusal(app.train(msg, partner.context))
    assert "the run config gives" in reason
    assert not list(partner.root.glob("org-a@*.json"))  # refused before training: 0 spent


def grouped_csv(path: Path, groups: dict[str, list[str]]) -> Path:
    """A labelled file with a `site` group and a `pid` person column: ``groups`` maps each site
    to the person of each of its rows."""
    rows = ["text,label,site,pid"]
    for site, persons in groups.items():
        rows += [f"{site} note {i} by {person} about the match,{LABELS[i % len(LABELS)]},"
                 f"{site},{person}" for i, person in enumerate(persons)]
    path.write_text("\n".join(rows) + "\n")
    return path


def group_keys(metrics: dict) -> set[str]:
    return {k.split("/")[1] for k in metrics if k.startswith("group/")}


def test_a_run_cannot_lower_the_partners_group_floor(tiny_bert: str, tmp_path: Path) -> None:
    """`--set min-group-size=1` released every singleton group of a partner that set a
    group-column and no floor of its own: the partner's floor (10 unless it sets one) holds,
    and the run can only raise it."""
    data = grouped_csv(tmp_path / "own.csv", {"north": [f"n{i}" for i in range(40)],
                                              "south": [f"s{i}" for i in range(40)],
                                              "rare": [f"r{i}" for i in range(8)]})
    node = {"data-path": str(data), "text-column": "text", "label-column": "label",
            "group-column": "site", "test-fraction": 0.5}

    def groups(name: str, extra: dict, **run: Any) -> set[str]:
        partner = Partner(tiny_bert, tmp_path / name, {**node, **extra},
                          labels=",".join(LABELS), **run)
        assert not refusal(partner.train(1))
        reply = partner.evaluate(1)
        assert not refusal(reply)
        return group_keys(dict(reply.content.metric_records[P.METRICS]))

    assert "rare" in groups("own-floor-1", {"min-group-size": 1}, min_group_size=1)  # held out
    floored = groups("run-floor-1", {}, min_group_size=1)
    assert floored and "rare" not in floored  # the partner's default floor, 10, held
    assert not groups("run-raises", {}, min_group_size=1000)  # the run may raise it


def test_monitoring_counts_persons_not_rows(tiny_bert: str, tmp_path: Path) -> None:
    """One person's twelve notes are one person: with a person column, their group is under
    the floor of 10 in a monitoring answer (and, the margins, the next smallest group too)."""
    data = grouped_csv(tmp_path / "own.csv", {"north": [f"n{i}" for i in range(20)]})
    watched = grouped_csv(tmp_path / "new.csv", {"solo": ["p0"] * 12,
                                                 "east": [f"e{i}" for i in range(15)],
                                                 "west": [f"w{i}" for i in range(16)]})
    partner = Partner(tiny_bert, tmp_path, {
        "data-path": str(data), "text-column": "text", "label-column": "label",
        "group-column": "site", "person-column": "pid", "monitoring": "counts",
        "monitor-data": str(watched)}, labels=",".join(LABELS))
    msg = Message(RecordDict({P.ARRAYS: to_array_record(partner.arrays), P.CONFIG: ConfigRecord(
        {P.ROUND: 0, P.MODEL_FINGERPRINT: partner.fingerprint, P.MONITOR_RELEASE: "r1"})}),
        dst_node_id=1, message_type=MessageType.EVALUATE, group_id="0")
    reply = app.evaluate(msg, partner.context)
    assert not refusal(reply)
    metrics = dict(reply.content.metric_records[P.METRICS])
    assert metrics[P.NUM_EXAMPLES] == 43 and group_keys(metrics) == {"west"}
    assert metrics["group/west/n"] == 16


def test_partner_start_with_a_group_column_keeps_a_floor_of_10(tmp_path: Path) -> None:
    """`consortium partner start --group-column site` (no --min-group-size): the node config it
    passes gives a floor of 10 that a run's min-group-size = 1 does not lower."""
    import argparse

    from client import cli
    from client.policy import PartnerSettings

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers(dest="command"))
    start = ["partner", "start", "--coordinator", "127.0.0.1:9092", "--data", "a.csv",
             "--max-epsilon", "1", "--insecure", "--group-column", "site"]
    for extra, floor in [([], 10), (["--min-group-size", "25"], 25), (["--min-group-size", "3"],
                                                                       3)]:
        settings = PartnerSettings.from_node_config(dict(cli._policy(parser.parse_args(
            start + extra))))
        assert settings.smallest_group(RunConfig(min_group_size=1)) == floor
        assert settings.smallest_group(RunConfig(min_group_size=30)) == max(floor, 30)


def test_an_error_reply_carries_a_reason_code_not_the_row(
        tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed row in the partner's data: the coordinator gets a fixed reason code, never
    the exception's text (which quotes the file and the row); the partner's log keeps both."""
    data = tmp_path / "clinic-notes.csv"
    data.write_text("text,label\nseen at the clinic,health\nfollow-up call,Jane Roe HIV positive\n")
    partner = Partner(tiny_bert, tmp_path, {"data-path": str(data), "text-column": "text",
                                            "label-column": "label"}, labels=",".join(LABELS))
    reply = partner.train(1)
    assert reply.has_error() and reply.error.reason == P.ERROR_DATA
    assert not list(partner.root.glob("org-a@*.json"))  # nothing trained, nothing spent
    log = capsys.readouterr().err
    assert str(data) in log and "Jane Roe HIV positive" in log


def test_a_refusal_names_no_path_of_the_partner(tiny_bert: str, tmp_path: Path) -> None:
    """A lost ledger is refused in words that quote its path: the coordinator reads LEDGER-DIR
    in its place, the partner's audit log keeps the path."""
    partner = Partner(tiny_bert, tmp_path)
    assert not refusal(partner.train(1))
    [ledger] = partner.root.glob("org-a@*.json")
    ledger.unlink()
    reason = refusal(partner.train(2))
    assert "is missing" in reason and f"LEDGER-DIR/{ledger.name}" in reason
    assert str(tmp_path) not in reason and str(ledger) in partner.audit()[-1]["refused"]
