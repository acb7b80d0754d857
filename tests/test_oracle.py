"""Issue 33 item 2: the evaluation oracle has a budget. Every exact answer on a partner's rows
(held-out evaluation counts, monitoring counts) is one entry in its ledger and counts against
its `max-evaluations` over all runs on the data source; `evaluation = dp` answers with Gaussian
noise whose ε the same ledger composes; a DP round predicted not to learn is refused at a
partner with its own data whatever the run's dp-plan-check says. Through the real ClientApp
handlers (tests.test_partner_policy.Partner) and, black-box, `consortium simulate`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from client import app
from client.policy import PartnerSettings
from common import protocol as P
from common.config import RunConfig
from common.evaluation.metrics import class_counts
from common.evaluation.oracle import DEFAULT_MAX_EVALUATIONS, claim_exact_answer, noisy_counts
from common.privacy.ledger import epsilon_of
from common.infra.storage import read_sealed_json
from common.data.synthetic import LABELS
from common.tasks import get_task
from common.wire.records import history_from_json, to_array_record
from tests.test_partner_policy import Partner, eval_refusal, refusal

CLI = str(Path(sys.executable).with_name("consortium"))


@pytest.fixture(autouse=True)
def task_identity():  # Message(reply_to=...) reads it, as in a real ClientApp process
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def ledger_body(partner: Partner) -> dict:
    [path] = partner.root.glob("org-a@*.json")
    return read_sealed_json(path)


def ledger_bytes(partner: Partner) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(partner.root.glob("org-a@*.json")))


def in_run(partner: Partner, run_id: int) -> Partner:
    """The same partner (node config, ledger) answering another run's Messages."""
    c = partner.context
    partner.context = Context(run_id, c.node_id, c.node_config, RecordDict(), c.run_config)
    TaskIdentity.run_id = run_id
    return partner


def test_exact_evaluations_stop_at_max_evaluations_over_all_runs(tiny_bert: str,
                                                                  tmp_path: Path) -> None:
    """The attack of the issue: σ = 1000 (almost no ε a round) and dp-plan-check = false, to
    buy one exact evaluation per round. The partner (simulated, so the run's dp-plan-check
    holds) answers two, its max-evaluations, then refuses, in this run and the next; each
    refusal leaves the ledger as it was."""
    partner = Partner(tiny_bert, tmp_path, {"max-evaluations": 2}, num_rounds=4,
                      noise_multiplier=1000.0, batch_size=64)
    assert not refusal(partner.train(1))
    assert not eval_refusal(partner.train(2, evaluate=1))
    assert not eval_refusal(partner.train(3, evaluate=2))
    assert [a["round"] for a in ledger_body(partner)["answers"]] == [1, 2]
    reply = partner.train(4, evaluate=3)  # trains; the evaluation is refused
    assert "max-evaluations is 2" in eval_refusal(reply) and not refusal(reply)
    assert P.EVALUATION not in reply.content.metric_records
    before = ledger_bytes(partner)
    assert "max-evaluations is 2" in refusal(partner.evaluate(4))  # the final model's
    assert ledger_bytes(partner) == before  # a refusal records nothing
    again = in_run(partner, 2)  # a new run on the same data: the budget is over all runs
    assert not refusal(again.train(1))
    before = ledger_bytes(again)
    assert "max-evaluations is 2" in refusal(again.evaluate(1))
    assert ledger_bytes(again) == before
    assert len(ledger_body(again)["answers"]) == 2
    assert [e["message"] for e in again.audit() if e.get("refused")] == ["evaluation"] * 3


def test_monitoring_answers_count_against_the_same_budget(tiny_bert: str,
                                                          tmp_path: Path) -> None:
    partner = Partner(tiny_bert, tmp_path, {"max-evaluations": 1})
    ask = Message(RecordDict({P.ARRAYS: to_array_record(partner.arrays), P.CONFIG: ConfigRecord(
        {P.ROUND: 0, P.MODEL_FINGERPRINT: partner.fingerprint, P.MONITOR_RELEASE: "r1"})}),
        dst_node_id=1, message_type=MessageType.EVALUATE, group_id="0")
    assert not refusal(app.evaluate(ask, partner.context))
    assert [a["what"] for a in ledger_body(partner)["answers"]] == ["monitoring"]
    before = ledger_bytes(partner)
    assert "max-evaluations is 1" in refusal(app.evaluate(ask, partner.context))
    assert ledger_bytes(partner) == before


def test_the_default_budget_is_finite(tmp_path: Path) -> None:
    assert PartnerSettings("p").max_evaluations == DEFAULT_MAX_EVALUATIONS == 100
    path = tmp_path / "p@s.json"
    for given in range(1, 4):
        assert claim_exact_answer(path, "s", "r", given, "evaluation", 3) == given
    with pytest.raises(Exception, match="max-evaluations is 3"):
        claim_exact_answer(path, "s", "r", 4, "evaluation", 3)


def test_noisy_evaluation_is_paid_in_epsilon_in_the_same_ledger(tiny_bert: str,
                                                                tmp_path: Path) -> None:
    """evaluation = dp: no exact answer is counted; the ledger records a Gaussian release
    (z, q = 1, 1 step), the reply carries the whole history, and ε is Opacus' accountant over
    DP-SGD's rounds and the evaluation together."""
    z = 4.0
    partner = Partner(tiny_bert, tmp_path, {"evaluation": "dp", "evaluation-noise": z,
                                            "max-evaluations": 0}, num_rounds=1)
    assert not refusal(partner.train(1))
    reply = partner.evaluate(1)
    assert not refusal(reply)
    metrics = dict(reply.content.metric_records[P.METRICS])
    assert P.EVAL_LOSS not in metrics and not any(k.startswith("group/") for k in metrics)
    assert {P.ACCURACY, P.MACRO_F1, P.NUM_EXAMPLES} <= set(metrics)
    body = ledger_body(partner)
    assert "answers" not in body  # none of its max-evaluations (0) was needed
    last = body["releases"][-1]
    assert (last["kind"], last["noise_multiplier"], last["sample_rate"], last["steps"]) == \
        ("evaluation", z, 1.0, 1)
    history = history_from_json(str(reply.content.config_records[P.PARTNER][
        P.PRIVACY_HISTORY]))
    assert history == [(r["noise_multiplier"], r["sample_rate"], r["steps"])
                       for r in body["releases"]]
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert epsilon_of(history, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_of(history, 1e-5) > epsilon_of(history[:-1], 1e-5)


def test_noisy_evaluations_compose_as_gaussian_mechanisms() -> None:
    """k Gaussian answers of noise multiplier z: RDP k·α / (2 z²) at every order α, converted
    as Opacus does (Balle et al. 2020) — written out here, against the ledger's ε."""
    z, k, delta = 10.0, 7, 1e-5
    alphas = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = k * alphas / (2 * z * z)
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    assert epsilon_of([(z, 1.0, 1)] * k, delta) == pytest.approx(float(np.nanmin(eps)),
                                                                 rel=1e-9)


def test_one_example_moves_the_counts_by_at_most_the_tasks_sensitivity() -> None:
    """Adding one example to the held-out rows moves (num-examples, tp / fp / fn) by √2 when
    it is predicted right and by √3 when wrong: the sensitivity the noise is scaled to."""
    labels = ("a", "b", "c")
    y_true, y_pred = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1])

    def vector(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        counts = class_counts(t, p, labels)
        return np.array([len(t)] + [counts[k] for k in sorted(counts)], dtype=float)

    base = vector(y_true, y_pred)
    moves = [np.linalg.norm(vector(np.append(y_true, t), np.append(y_pred, p)) - base)
             for t in range(3) for p in range(3)]
    assert max(moves) == pytest.approx(get_task("text-classification").count_sensitivity)
    assert min(moves) == pytest.approx(math.sqrt(2))
    assert get_task("token-classification").count_sensitivity is None  # no evaluation = dp


def test_noisy_counts_have_the_stated_noise() -> None:
    counts = {P.NUM_EXAMPLES: 1000.0, "tp/a": 400.0, "fp/a": 100.0, "fn/a": 100.0,
              "tp/b": 400.0, "fp/b": 100.0, "fn/b": 100.0, P.EVAL_LOSS: 0.3,
              "group/x/n": 500.0}
    rng = np.random.default_rng(0)
    draws = [noisy_counts(counts, math.sqrt(3), 5.0, rng) for _ in range(4000)]
    assert set(draws[0]) == {P.NUM_EXAMPLES, "tp/a", "fp/a", "fn/a", "tp/b", "fp/b", "fn/b",
                             P.ACCURACY, P.MACRO_F1}
    tp = np.array([d["tp/a"] for d in draws])
    assert tp.std() == pytest.approx(5.0 * math.sqrt(3), rel=0.05)  # 4000 draws: s.e. 1.1 %
    assert tp.mean() == pytest.approx(400.0, abs=0.5)
    assert np.mean([d[P.ACCURACY] for d in draws]) == pytest.approx(0.8, abs=0.002)


def test_an_unlearnable_round_is_the_partners_to_allow(tiny_bert: str, tmp_path: Path) -> None:
    """A partner with its own data refuses a DP round the planner predicts cannot learn,
    before anything is spent, whatever the run's dp-plan-check; its own policy can allow it."""
    data = tmp_path / "own.csv"
    data.write_text("text,label\n" + "".join(f"note {i} about {LABELS[i % len(LABELS)]},"
                                              f"{LABELS[i % len(LABELS)]}\n" for i in range(40)))
    node = {"data-path": str(data), "text-column": "text", "label-column": "label"}
    run = dict(noise_multiplier=1000.0, batch_size=64, labels=",".join(LABELS))
    strict = Partner(tiny_bert, tmp_path / "strict",
                     {**node, "allow-unlearnable-rounds": False}, **run)
    assert strict.config.dp_plan_check is False
    reason = refusal(strict.train(1))
    assert "expect no learning" in reason and "allow-unlearnable-rounds" in reason
    assert not list(strict.root.glob("org-a@*.json"))  # nothing spent, nothing recorded
    allowed = Partner(tiny_bert, tmp_path / "allowed", node, **run)  # the harness allows it
    assert not refusal(allowed.train(1))
    own = PartnerSettings("p", data_path="x.csv")
    assert own.plan_check(RunConfig(dp_plan_check=False))
    assert not PartnerSettings("p").plan_check(RunConfig(dp_plan_check=False))  # simulated


@pytest.mark.heavy  # ≈ 70 s: two real simulations (issue 33's CLI check)
def test_simulate_cannot_buy_evaluations_past_the_budget(tiny_bert: str, tmp_path: Path) -> None:
    """Black-box, `consortium simulate`: the crafted run (σ = 1000, dp-plan-check = false, a
    batch of every row, two rounds) against partners whose ledgers already hold 99 exact
    answers each. Round 1's model is evaluated (the 100th); the final model's evaluation is
    refused, and the refusals leave the ledgers' answers as they were."""
    ledgers = tmp_path / "ledgers"
    sets = {"base-model": tiny_bert, "max-length": 16, "batch-size": 64, "local-epochs": 1,
            "examples-per-partner": 30, "noise-multiplier": 1000.0, "dp-plan-check": False,
            "ledger-dir": str(ledgers), "min-partners": 2}
    config = RunConfig.from_mapping({k: v for k, v in sets.items()})
    paths = []
    for pid in range(2):
        partner = PartnerSettings.from_node_config({"partition-id": pid, "num-partitions": 2})
        paths.append((partner.ledger_path(config), partner.data_source(config)))
        for earlier in range(99):
            claim_exact_answer(*paths[-1], "earlier", earlier, "evaluation", 100)
    out = tmp_path / "run"
    args = [CLI, "simulate", "--partners", "2", "--rounds", "2", "--out", str(out)]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(lines[0]["eval_per_partner"]) == ["partner-0", "partner-1"]
    for line in lines[1:]:
        assert not line["eval_per_partner"]
        assert all("max-evaluations is 100" in f["reason"] for f in line["eval_failures"])
        assert len(line["eval_failures"]) == 2
    for path, _ in paths:
        answers = read_sealed_json(path)["answers"]
        assert len(answers) == 100 and answers[-1]["round"] == 1
        assert len(read_sealed_json(path)["releases"]) == 2  # it trained every round
