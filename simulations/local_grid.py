"""An in-process stand-in for Flower's Grid: the coordinator's real round loop
(``server.coordinator.run_federation``) drives the partners' real ClientApp handlers
(``client.app.train`` / ``evaluate``) in this process, one after another, with no SuperLink.

For tests and benchmarks that need many rounds on a tiny model in seconds, and for attack studies:
``tamper`` rewrites one partner's reply before the coordinator sees it, as a malicious partner
would. Flower's own engines stay the way to run a federation; this only skips the transport.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from common.wire.records import from_array_record, to_array_record
from common import protocol as P
from common.config import RunConfig

Tamper = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]
COORDINATOR_NODE = 0


@dataclass
class LocalGrid:
    """``num_partners`` simulated partners (partition-id 0..N-1), answered synchronously."""

    config: RunConfig
    num_partners: int
    tampers: Mapping[int, Tamper] = field(default_factory=dict)  # partition-id -> attack
    silent: Callable[[int, int], bool] = lambda partition_id, rnd: False  # drop this reply
    node_config: Mapping[str, Any] = field(default_factory=dict)  # every partner's, e.g. policy
    # partition-id -> that partner's own node-config keys, over node_config (e.g. its policy)
    partner_configs: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    sent: list[tuple[str, int, int]] = field(default_factory=list)  # (type, round, partition-id)
    # as Flower's engines do: a ClientApp exception becomes an error reply (else it propagates)
    errors_as_replies: bool = False
    run_id: int = 1  # Flower's run id: runs sharing ledgers (e.g. two releases) need their own
    _replies: dict[str, Message] = field(default_factory=dict)
    _states: dict[int, RecordDict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        TaskIdentity.run_id = self.run_id
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = COORDINATOR_NODE

    def get_node_ids(self) -> Iterable[int]:
        return [pid + 1 for pid in range(self.num_partners)]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            reply = self._answer(msg)
            if reply is not None:
                self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _answer(self, msg: Message) -> Message | None:
        pid = msg.metadata.dst_node_id - 1
        rnd = int(msg.content.config_records[P.CONFIG][P.ROUND])
        self.sent.append((msg.metadata.message_type, rnd, pid))
        if msg.metadata.message_type == MessageType.TRAIN and self.silent(pid, rnd):
            return None
        context = Context(run_id=self.run_id, node_id=pid + 1, run_config=self._run_config(),
                          node_config={**self.node_config,
                                       **self.partner_configs.get(pid, {}), "partition-id": pid,
                                       "num-partitions": self.num_partners},
                          state=self._states.setdefault(pid, RecordDict()))
        TaskIdentity.node_id = pid + 1
        try:
            handler = (client_app.train if msg.metadata.message_type == MessageType.TRAIN
                       else client_app.evaluate)
            reply = handler(msg, context)
        except Exception as exc:  # noqa: BLE001 - Flower's own wording (vce_api.py)
            if not self.errors_as_replies:
                raise
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                 reason=f"{type(exc)}:<'{exc}'>"), reply_to=msg)
        finally:
            TaskIdentity.node_id = COORDINATOR_NODE
        tamper = self.tampers.get(pid)
        if tamper is not None and msg.metadata.message_type == MessageType.TRAIN \
                and P.ARRAYS in reply.content.array_records:
            shared = from_array_record(msg.content.array_records[P.ARRAYS])
            honest = from_array_record(reply.content.array_records[P.ARRAYS])
            reply.content.array_records[P.ARRAYS] = to_array_record(tamper(shared, honest))
        return reply

    def _run_config(self) -> dict[str, Any]:
        return dict(self.config.to_mapping())


def sign_flip(scale: float = 1.0, to_norm: float = 0.0) -> Tamper:
    """The partner sends ``old − scale·(new − old)``; with ``to_norm`` > 0 the flipped update is
    rescaled to exactly that L2 norm (e.g. the agreed clip: the strongest update that passes
    validation)."""
    def tamper(shared: dict[str, np.ndarray],
               honest: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        delta = {k: honest[k].astype(np.float64) - shared[k] for k in shared}
        norm = float(np.sqrt(sum(np.sum(d ** 2) for d in delta.values())))
        factor = -(to_norm / norm if to_norm > 0 and norm > 0 else scale)
        return {k: (shared[k] + factor * delta[k]).astype(shared[k].dtype) for k in shared}
    return tamper
