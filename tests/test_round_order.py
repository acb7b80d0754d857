"""One Message per partner per round (simulations.local_grid drives the real round loop and the
real ClientApp handlers): each TRAIN Message brings the model after the round before, which the
partner evaluates first; only the final model has its own EVALUATE Message. Line r of
metrics.jsonl is round r's training and the evaluation of the model after round r, and a stop
between checkpoint r and line r resumes to every round once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Error, Message, MessageType
from flwr.common.constant import ErrorCode

import server.coordinator as coordinator
from client.policy import PartnerSettings
from client.received import prepare
from common import protocol as P
from common.config import RunConfig
from common.errors import RunStopped
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS
from server.evaluation import summarize_round
from simulations.local_grid import LocalGrid

PARTNERS, ROUNDS = 3, 3


def _config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, examples_per_partner=30, max_length=16, batch_size=8,
                  finetune="lora", dp=False, dp_plan_check=False, local_epochs=1,
                  num_rounds=ROUNDS, round_timeout=1.0, learning_rate=0.05,
                  out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    return RunConfig(**{**values, **changes})


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_one_message_per_partner_per_round_and_line_r_evaluates_the_model_after_round_r(
        tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    released: dict[int, dict[str, np.ndarray]] = {}  # the model after each round, as saved
    real_save = coordinator.save_checkpoint

    def save(directory, ckpt):
        released[ckpt.round] = {k: v.copy() for k, v in ckpt.arrays.items()}
        real_save(directory, ckpt)

    monkeypatch.setattr(coordinator, "save_checkpoint", save)
    config = _config(tiny_bert, tmp_path)
    grid = LocalGrid(config, PARTNERS, node_config={"evaluation": "full"})  # + the exact loss
    out = coordinator.run_federation(grid, config)
    assert grid.sent == [(MessageType.EVALUATE, 1, p) for p in range(PARTNERS)] + [  # pre-flight
        (MessageType.TRAIN, r, p) for r in range(1, ROUNDS + 1) for p in range(PARTNERS)] + [
        (MessageType.EVALUATE, ROUNDS, p) for p in range(PARTNERS)]
    lines = _lines(out)
    assert [line["round"] for line in lines] == list(range(1, ROUNDS + 1))
    model_bytes = sum(a.nbytes for a in trainable_state(build_model(config, LABELS)).values())
    for line in lines:  # one model per partner-round, and the final EVALUATE's on the last
        final = PARTNERS * model_bytes if line["round"] == ROUNDS else 0
        assert line["download_bytes"] == PARTNERS * model_bytes + final
        assert line["eval_failures"] == []
    fingerprint = coordinator.frozen_fingerprint(build_model(config, LABELS))
    for line in lines:  # the evaluation each partner would make of the model after round r
        expected = {}
        for pid in range(PARTNERS):
            partner = PartnerSettings.from_node_config({"partition-id": pid,
                                                        "num-partitions": PARTNERS,
                                                        "evaluation": "full"})
            prep = prepare(config, partner, released[line["round"]], fingerprint,
                           torch.device("cpu"))
            metrics = prep.task.evaluate(prep.model, prep.tokenizer, prep.test, config.max_length)
            expected[partner.name] = metrics
        summary = summarize_round(expected, "accuracy")
        for key in ("eval_per_partner", "eval_per_class"):
            assert line[key] == json.loads(json.dumps(coordinator.json_safe(summary[key])))
        assert line["eval_mean"] == pytest.approx(summary["eval_mean"])
    losses = [line["eval_loss"] for line in lines]
    assert len(set(losses)) == ROUNDS  # three models, three evaluations


@dataclass
class StoppingGrid(LocalGrid):
    """The coordinator stops right after the first partner answered a Message of this kind
    and round (the partner has evaluated the model it carries)."""

    stop_at: tuple[str, int] = (MessageType.TRAIN, 0)

    def _answer(self, msg: Message) -> Message | None:
        reply = super()._answer(msg)
        if self.sent[-1][:2] == self.stop_at:
            raise RuntimeError("coordinator stopped")
        return reply


@pytest.mark.parametrize("stop_at", [(MessageType.TRAIN, ROUNDS), (MessageType.EVALUATE, ROUNDS)])
def test_a_stop_between_checkpoint_and_line_resumes_to_every_round_once(
        tiny_bert: str, tmp_path: Path, stop_at: tuple[str, int]) -> None:
    """Stopped after checkpoint N − 1 (in round N's TRAIN Messages) or after checkpoint N (in
    the final EVALUATE): the resumed run trains no checkpointed round again, writes every line
    once, in order, and partner-0, which had evaluated the pending round's model, refuses to
    evaluate it again (its refusal is in that line)."""
    config = _config(tiny_bert, tmp_path)
    with pytest.raises(RuntimeError, match="coordinator stopped"):
        coordinator.run_federation(StoppingGrid(config, PARTNERS, stop_at=stop_at), config)
    pending = stop_at[1] - 1 if stop_at[0] == MessageType.TRAIN else stop_at[1]
    assert [line["round"] for line in _lines(Path(config.out_dir))] == list(range(1, pending))
    resumed = config.replace(resume=True)
    grid = LocalGrid(resumed, PARTNERS)
    out = coordinator.run_federation(grid, resumed)
    trained = sorted({rnd for kind, rnd, _ in grid.sent if kind == MessageType.TRAIN})
    assert grid.sent[:PARTNERS] == [(MessageType.EVALUATE, pending + 1, p)  # its pre-flight
                                    for p in range(PARTNERS)] or pending == ROUNDS
    assert trained == list(range(pending + 1, ROUNDS + 1))  # no checkpointed round again
    lines = _lines(out)
    assert [line["round"] for line in lines] == list(range(1, ROUNDS + 1))
    line = lines[pending - 1]
    assert sorted(line["eval_per_partner"]) == ["partner-1", "partner-2"]
    [refused] = line["eval_failures"]
    assert refused["partner"] == "partner-0" and "already evaluated" in refused["reason"]
    assert all(not other["eval_failures"] for other in lines if other is not line)


def test_report_html_is_there_after_round_1_and_a_stopped_run_keeps_it(
        tiny_bert: str, tmp_path: Path) -> None:
    """The live report: written after round 1's checkpoint (the coordinator's own set scores
    that round's model; the partners' evaluation of it comes with round 2), kept when the run
    then stops in round 2, and rewritten with every round after."""
    config = _config(tiny_bert, tmp_path, server_eval_data=str(_eval_csv(tmp_path)))
    with pytest.raises(RuntimeError, match="coordinator stopped"):
        coordinator.run_federation(
            StoppingGrid(config, PARTNERS, stop_at=(MessageType.TRAIN, 2)), config)
    out = Path(config.out_dir)
    assert not (out / "metrics.jsonl").exists()  # line 1 waits for round 2's evaluations
    page = (out / "report.html").read_text()
    assert "Consortium run report" in page and "own set (eval.csv, 30 examples" in page
    assert (out / "report_epsilon.png").stat().st_size > 0
    first = (out / "report.html").stat().st_mtime_ns
    resumed = config.replace(resume=True)
    coordinator.run_federation(LocalGrid(resumed, PARTNERS), resumed)
    assert (out / "report.html").stat().st_mtime_ns > first


def _eval_csv(tmp_path: Path) -> Path:
    from common.data.synthetic import synthetic_partner_data

    data = synthetic_partner_data(40, 30, seed=3)
    path = tmp_path / "eval.csv"
    path.write_text("text,label\n" + "".join(f"{t},{data.label_names[y]}\n"
                                             for t, y in zip(data.texts, data.labels)))
    return path


@dataclass
class LeavingGrid(LocalGrid):
    """partner-2's node is not connected when round 2 starts (it restarts), then comes back."""

    def get_node_ids(self):
        rounds = {rnd for kind, rnd, _ in self.sent if kind == MessageType.TRAIN}
        nodes = list(super().get_node_ids())
        return nodes[:-1] if rounds == {1} else nodes


def test_a_partner_not_connected_at_a_rounds_start_is_a_recorded_dropout(
        tiny_bert: str, tmp_path: Path) -> None:
    config = _config(tiny_bert, tmp_path)
    out = coordinator.run_federation(LeavingGrid(config, PARTNERS), config)
    lines = _lines(out)
    assert sorted(lines[1]["partners_replied"]) == ["partner-0", "partner-1"]
    assert {"partner": "partner-2", "reason": "not connected when the round started"} \
        in lines[1]["failures"]
    assert not lines[0]["failures"] and not lines[2]["failures"]


@dataclass
class StoppingPartnerGrid(LocalGrid):
    """In round 2, partner-2's operator stops it mid-Message (the runner's ``partner-stopped``
    reply) and partner-1's node vanishes (the SuperLink's NODE_UNAVAILABLE)."""

    def _answer(self, msg: Message) -> Message | None:
        reply = super()._answer(msg)
        pid = msg.metadata.dst_node_id - 1
        if msg.metadata.message_type == MessageType.TRAIN and int(
                msg.content.config_records[P.CONFIG][P.ROUND]) == 2 and pid in (1, 2):
            code, reason = ((ErrorCode.CLIENT_APP_RAISED_EXCEPTION, P.ERROR_STOPPED) if pid == 2
                            else (ErrorCode.NODE_UNAVAILABLE, "Node Unavailable"))
            return Message(Error(code=code, reason=reason), reply_to=msg)
        return reply


def test_a_clean_partner_stop_is_named_and_the_fix_is_to_restart_it_then_resume(
        tiny_bert: str, tmp_path: Path) -> None:
    config = _config(tiny_bert, tmp_path, min_partners=2)
    with pytest.raises(RunStopped) as stopped:
        coordinator.run_federation(StoppingPartnerGrid(config, PARTNERS), config)
    said = str(stopped.value)
    assert "partner-2: stopped by its operator (a clean stop, not a crash)" in said
    assert "partner-1: its node is not connected: no heartbeat" in said
    assert ("the last checkpoint is kept: start partner-2 again with the same `consortium "
            "partner start` command, then resume") in said
    assert "heartbeat within" not in said  # Flower's wording for a lost node is not used
