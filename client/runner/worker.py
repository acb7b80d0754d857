"""A warm worker: one process that loads one App and answers Messages with it, one at a time,
for as long as the runner keeps it (torch, the model's modules and whatever the App keeps in
memory stay loaded between Messages).

Run by path, never imported: ``python -P client/runner/worker.py FD ROOT FAB_ID VERSION HASH``.
It imports the standard library and Flower, then loads the App under ROOT as `flwr-clientapp`
does (``flwr.clientapp.utils.get_load_client_app_fn``: ROOT first on the import path, the
ClientApp named in its pyproject.toml), so nothing of the partner's own installation is
imported here unless ROOT is that installation. The runner (client.runner.workers) has checked
ROOT's code before starting this process.

Over the connection FD (multiprocessing's framing, bytes only, no pickle), per Message:
runner -> worker: a JSON header (task identity, message id), the Message and the Context as
Flower's protobufs; worker -> runner: a JSON header (``ok``, or the exception's type), then the
reply and the Context. A JSON header ``{"stop": true}`` ends the process.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from multiprocessing.connection import Connection

logger = logging.getLogger("client.runner.worker")


def serve(conn: Connection, root: str, fab_id: str, fab_version: str, fab_hash: str) -> None:
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.serde import (context_from_proto, context_to_proto, message_from_proto,
                                   message_to_proto)
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.supercore.task_identity import TaskIdentity

    app = None
    while True:
        try:
            header = json.loads(conn.recv_bytes())
        except EOFError:  # the runner is gone
            return
        if header.get("stop"):
            return
        message = message_from_proto(ProtoMessage.FromString(conn.recv_bytes()))
        message.metadata.__dict__["_message_id"] = header["message_id"]
        context = context_from_proto(ProtoContext.FromString(conn.recv_bytes()))
        TaskIdentity.task_id = header["task_id"]
        TaskIdentity.run_id = header["run_id"]
        TaskIdentity.node_id = header["node_id"]
        try:
            if app is None:
                app = get_load_client_app_fn("", root, True)(fab_id, fab_version, fab_hash)
            reply = app(message=message, context=context)
        except Exception as exc:  # noqa: BLE001 - the runner replies with a fixed code
            logger.exception("the App under %s raised while answering a Message", root)
            conn.send_bytes(json.dumps({"ok": False, "error": type(exc).__name__,
                                        "loaded": app is not None}).encode())
            continue
        conn.send_bytes(json.dumps({"ok": True}).encode())
        conn.send_bytes(message_to_proto(reply).SerializeToString())
        conn.send_bytes(context_to_proto(context).SerializeToString())


def main(argv: list[str]) -> int:
    fd, root, fab_id, fab_version, fab_hash = argv
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the runner stops us
    serve(Connection(int(fd)), root, fab_id, fab_version, fab_hash)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
