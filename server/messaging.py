"""Messages to partners and their replies over Flower's Grid: sending with retries, streaming
replies until the round timeout, the partners' evaluations that the replies carry, and the run's
state that both train phases update."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore.inflatable.inflatable_utils import ObjectPushError

from common import protocol as P
from common.wire.records import to_array_record

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    round: int
    arrays: dict[str, np.ndarray]
    partners: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # node id -> partner name, as replied
    # partner-level histories of the release init-from continues (server.central_dp)
    inherited: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)  # partners' own max-epsilon, as told

    def take_budget(self, reply: Message) -> None:
        """A partner's own budget, where its reply tells it (a positive finite number)."""
        value = reply.content.config_records[P.PARTNER].get(P.BUDGET)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            self.budgets[partner_name(reply)] = float(value)


def absent(messages: list[Message], names: dict[int, str]) -> list[dict[str, Any]]:
    """Partners that replied in an earlier round but were not connected when this one started:
    a recorded dropout, never a silent one."""
    asked = {m.metadata.dst_node_id for m in messages}
    return [{"partner": name, "reason": "not connected when the round started"}
            for node, name in sorted(names.items()) if node not in asked]


def make_messages(grid: Grid, kind: str, rnd: int, arrays: dict[str, np.ndarray],
                  fingerprint: str, min_nodes: int, evaluate: int = 0,
                  extra: Mapping[str, int | str] | None = None) -> list[Message]:
    """One message per connected partner, after waiting until at least ``min_nodes`` are.
    ``evaluate``: the round whose aggregate ``arrays`` are, for a TRAIN message that asks the
    partner to evaluate them first (0: none). ``extra``: more ConfigRecord keys (protocol's)."""
    _, node_ids = sample_nodes(grid, min_nodes, min_nodes)  # waits, then lists all connected
    config: dict[str, int | str] = {P.ROUND: rnd, P.MODEL_FINGERPRINT: fingerprint}
    if evaluate:
        config[P.EVALUATE_ROUND] = evaluate
    config.update(extra or {})
    content = RecordDict({P.ARRAYS: to_array_record(arrays), P.CONFIG: ConfigRecord(config)})
    return [Message(content=content, message_type=kind, dst_node_id=n, group_id=str(rnd))
            for n in node_ids]


def push_messages(grid: Grid, messages: list[Message], tries: int = 5,
                  wait: float = 2.0) -> set[str]:
    """Push, re-pushing the same Messages when an object push was refused. Flower's HTTP client
    retries a request whose first attempt may already have landed (a SuperLink frozen for a
    while answers both), and the SuperLink refuses the duplicate object ("push session may have
    expired"). Re-pushing is idempotent: the SuperLink keys Messages by content id and asks only
    for the objects it still lacks, so no partner gets an instruction twice."""
    for attempt in range(1, tries + 1):
        try:
            return {i for i in grid.push_messages(messages) if i}
        except ObjectPushError as exc:
            if attempt == tries:
                raise
            logger.warning("push %d/%d refused (%s); pushing the same messages again",
                           attempt, tries, exc)
            time.sleep(wait * attempt)
    raise AssertionError("unreachable")


def stream_replies(grid: Grid, messages: list[Message], timeout: float,
                   names: dict[int, str], failures: list[dict[str, Any]],
                   poll: float = 0.5) -> Iterator[Message]:
    """Yield good replies as they arrive (``send_and_receive`` returns them all at once), so
    each update can be folded into the running sum and dropped: memory O(model), not O(K ×
    model). Error replies and partners silent past ``timeout`` are appended to ``failures``."""
    sent = {m.metadata.dst_node_id for m in messages}
    pending = push_messages(grid, messages)
    # whom a reply answers, by the message it replies to: an error the SuperLink writes itself
    # (e.g. "Node Unavailable" for a partner that died) does not come from the partner's node
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    deadline = time.time() + timeout
    while pending and time.time() < deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            sent.discard(node)
            if reply.has_error():
                failures.append({"partner": names.get(node, f"node-{node}"),
                                 "reason": error_reason(reply)})
                continue
            names[node] = partner_name(reply)
            yield reply
        if pending:
            time.sleep(poll)
    failures.extend({"partner": names.get(node, f"node-{node}"),
                     "reason": f"no reply within round-timeout {timeout:g} s"} for node in sent)


STOPPED = "stopped by its operator (a clean stop, not a crash)"


def error_reason(reply: Message) -> str:
    """An error reply in words: a partner's fixed reason code, a clean stop named as such, and
    Flower's lost heartbeat said for what it is."""
    lines = (reply.error.reason or "").strip().splitlines()
    if lines and lines[-1] == P.ERROR_STOPPED:
        return STOPPED
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return ("its node is not connected: no heartbeat (stopped, killed, or its machine or "
                "connection failed)")
    return lines[-1] if lines else f"code {reply.error.code}"


def partner_name(reply: Message) -> str:
    rec = reply.content.config_records.get(P.PARTNER)
    return str(rec[P.PARTNER_NAME]) if rec else f"node-{reply.metadata.src_node_id}"


def gpu_line(metrics_by_partner: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CUDA partners' round memory for metrics.jsonl: peak allocated, and what the process still
    reserves after the round (it should not grow round over round); empty for CPU partners."""
    gpu = {name: {"peak": float(m[P.GPU_PEAK_BYTES]),
                  "reserved": float(m.get(P.GPU_RESERVED_BYTES, math.nan))}
           for name, m in metrics_by_partner.items() if P.GPU_PEAK_BYTES in m}
    return {"partner_gpu_bytes": gpu} if gpu else {}


@dataclass
class Evaluations:
    """The partners' evaluations of the model after ``round``, gathered from their replies: in
    the next round's TRAIN replies, or the final EVALUATE replies. ``round`` 0: none asked."""

    round: int
    per_partner: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    download_bytes: int = 0  # of EVALUATE messages; a TRAIN message's model is the round's

    def take(self, reply: Message) -> None:
        """A TRAIN reply's evaluation, or its refusal reason; nothing else is read."""
        if not self.round:
            return
        partner = reply.content.config_records[P.PARTNER]
        if P.EVAL_REFUSAL in partner:
            self._refused(partner_name(reply), str(partner[P.EVAL_REFUSAL]))
        elif P.EVALUATION in reply.content.metric_records:
            self.per_partner[partner_name(reply)] = dict(
                reply.content.metric_records[P.EVALUATION])  # type: ignore[arg-type]

    def take_final(self, reply: Message) -> None:
        """An EVALUATE reply: metrics, or a refusal (evaluation off, not a round it trained)."""
        refusal = reply.content.config_records[P.PARTNER].get(P.REFUSAL)
        if refusal:
            self._refused(partner_name(reply), str(refusal))
        else:
            self.per_partner[partner_name(reply)] = dict(
                reply.content.metric_records[P.METRICS])  # type: ignore[arg-type]

    def missing(self, failures: list[dict[str, Any]], carrier: str = "") -> None:
        """Partners that failed, stayed silent or refused before evaluating: their phase's
        failure, once each, for those that neither evaluated nor refused to. ``carrier``
        names the reply the evaluation was lost with (e.g. "round 3 train reply")."""
        if not self.round:
            return
        seen = set(self.per_partner) | {f["partner"] for f in self.failures}
        for failure in failures:
            if failure["partner"] not in seen:
                seen.add(failure["partner"])
                reason = f"{carrier}: {failure['reason']}" if carrier else failure["reason"]
                self.failures.append({**failure, "reason": reason})

    def _refused(self, name: str, reason: str) -> None:
        self.failures.append({"partner": name, "reason": f"refused: {reason}"})
