"""The SuperNode's Runtime API, as Flower's own processes call it: claim a task as
`flower-superexec` does (``AcquireTask``), then, with the task's token, pull its Message,
Context, Run and FAB and push the reply as `flwr-clientapp` does
(``flwr/supernode/runtime/run_clientapp.py``: ``pull_task_input``, ``push_message``,
``push_task_output``), keeping the claim alive with task heartbeats meanwhile.

Three things differ from Flower's processes, because this one outlives a task and starts at
once: a failed call is retried a few times and then raised (Flower's retry invoker sends its own
process SIGINT on HTTP 401), a refused heartbeat is logged (Flower's raises SIGINT), and a
Message's objects that the SuperNode is still pulling are asked for again sooner."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from flwr.app import Context, Message
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (AcquireTaskRequest, PullAppMessagesRequest,
                                    PullTaskInputRequest, SendTaskHeartbeatRequest)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                        RuntimeVersionHttpInterceptor,
                                        SuperExecAuthHttpInterceptor)
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

logger = logging.getLogger(__name__)
ACQUIRE = "/flwr.proto.Runtime/AcquireTask"  # the call a SuperExec auth secret protects


def _retries() -> RetryInvoker:
    """A few quick retries of a call the local SuperNode did not answer, then the error."""
    return RetryInvoker(lambda: exponential(base_delay=0.1, max_delay=1.0), httpx.TransportError,
                        max_tries=6, max_time=10.0)


def claims_client(address: str, secret: bytes | None) -> RuntimeHttpClient:
    """The connection tasks are claimed over, signed with the SuperExec auth secret the
    SuperNode was started with (so no other local process can claim this partner's tasks)."""
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                         protected_methods={ACQUIRE}))
    return RuntimeHttpClient.from_server_address(address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors)


def claim(client: RuntimeHttpClient) -> str | None:
    """The token of the oldest pending ClientApp task, or None when there is none."""
    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    return res.token if res.HasField("task") and res.token else None


@dataclass
class Inputs:
    """What a claimed task brings: the Message to answer, the Context, the Run and the FAB."""

    message: Message
    context: Context
    run: Run
    fab: Fab
    identity: dict[str, int]  # task, run and node ids, as Flower's TaskIdentity holds them


class Task:
    """One claimed task: its inputs pulled, heartbeats sent until ``finish``."""

    def __init__(self, address: str, token: str) -> None:
        self.client = RuntimeHttpClient.from_server_address(
            address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=_retries())
        self._lost = False
        self._heartbeat = HeartbeatSender(self._beat)
        self._heartbeat.start()

    def pull(self) -> Inputs:
        """``run_clientapp.pull_task_input``, but the Message's objects are asked for again
        after 0.05 s, not 1 s: the SuperNode offers the task before it has pulled them from
        the SuperLink, and a warm runner asks at once (a fresh `flwr-clientapp` takes longer
        than that to start)."""
        res = self.client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        pulled = self.client.PullMessages(PullAppMessagesRequest())
        if not pulled.messages_list:
            raise RuntimeError("the SuperNode gave this task no Message")
        node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
        message = pull_and_inflate_object_from_tree(
            tree, make_pull_object_fn_protobuf(self.client.PullObject, node, context.run_id),
            make_confirm_message_received_fn_protobuf(self.client.ConfirmMessageReceived, node,
                                                      context.run_id),
            return_type=Message, max_tries_per_object=None, initial_backoff=0.05,
            backoff_cap=1.0)
        message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
        return Inputs(message, context, run_from_proto(res.run), fab_from_proto(res.fab),
                      {"task_id": res.task_id, "run_id": res.run.run_id,
                       "node_id": res.context.node_id})

    def reply(self, reply: Message, context: Context, failed: str = "") -> None:
        """Push ``reply`` and the task's end: completed, or ``failed`` with these details."""
        push_message(self.client, reply, context)
        push_task_output(self.client, context,
                         SubStatus.FAILED if failed else SubStatus.COMPLETED, failed)

    def finish(self) -> None:
        if self._heartbeat.is_running:
            self._heartbeat.stop()
        self.client.close()

    def _beat(self) -> bool:
        try:
            ok = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
        except httpx.TransportError:
            return False  # retried by the sender, with back-off
        except httpx.HTTPError as exc:
            logger.warning("the SuperNode refused a task heartbeat (%s)", exc)
            ok = False
        if not ok and not self._lost:  # the claim expired: the SuperNode has answered for us
            logger.warning("the SuperNode no longer knows this task; its reply will be refused")
            self._lost = True
        return True
