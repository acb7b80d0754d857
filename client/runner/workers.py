"""The runner's side of a warm worker (client/runner/worker.py): start it on a checked App,
hand it one Message at a time, notice when it dies, stop it.

One worker is kept at a time: a Message for another App stops the old one first (a partner
runs one App at a time; two would hold two models in memory)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from flwr.app import Context, Message
from flwr.common.serde import (context_from_proto, context_to_proto, message_from_proto,
                               message_to_proto)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

logger = logging.getLogger(__name__)
SCRIPT = Path(__file__).with_name("worker.py")
STOP_WAIT = 3.0  # seconds a worker gets to leave when asked, before SIGKILL


class WorkerDied(Exception):
    """The worker process ended while it held a Message (killed, out of memory, crashed)."""


class AppRaised(Exception):
    """The App raised instead of replying (its traceback is in the partner's log)."""

    def __init__(self, kind: str, loaded: bool) -> None:
        super().__init__(kind)
        self.loaded = loaded  # False: the App could not even be loaded


class Worker:
    """One warm worker process on the App under ``root``, for the FAB ``fab`` of run ``run``
    (Flower's loader checks the App's id and version against them)."""

    def __init__(self, root: Path, fab_id: str, fab_version: str, fab_hash: str,
                 env: Mapping[str, str]) -> None:
        self.root = root
        ours, theirs = multiprocessing.Pipe(duplex=True)
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(SCRIPT), str(theirs.fileno()), str(root), fab_id,
             fab_version, fab_hash], pass_fds=[theirs.fileno()], env=dict(env))
        theirs.close()
        self._conn = ours
        self.answered = 0
        logger.info("worker %d started on the App at %s", self.process.pid, root)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def answer(self, message: Message, context: Context, identity: Mapping[str, int],
               ) -> tuple[Message, Context]:
        """The App's reply to ``message`` and the Context it leaves; WorkerDied when the process
        ends first, AppRaised when the App raised."""
        try:
            self._conn.send_bytes(json.dumps({**identity, "message_id":
                                              message.metadata.message_id}).encode())
            self._conn.send_bytes(message_to_proto(message).SerializeToString())
            self._conn.send_bytes(context_to_proto(context).SerializeToString())
            header = json.loads(self._conn.recv_bytes())
            if not header["ok"]:
                raise AppRaised(header["error"], header["loaded"])
            reply = message_from_proto(ProtoMessage.FromString(self._conn.recv_bytes()))
            left = context_from_proto(ProtoContext.FromString(self._conn.recv_bytes()))
        except (EOFError, OSError) as exc:
            self.stop()
            raise WorkerDied(_how_it_ended(self.process.returncode)) from exc
        self.answered += 1
        return reply, left

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Ask it to leave; SIGKILL after ``wait`` seconds (idempotent)."""
        if self.alive():
            try:
                self._conn.send_bytes(json.dumps({"stop": True}).encode())
            except OSError:
                pass
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self._conn.close()

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"


class Workers:
    """At most one warm worker, on the App a Message needs; a dead one is replaced."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.current: Worker | None = None

    def for_app(self, root: Path, fab_id: str, fab_version: str, fab_hash: str) -> Worker:
        """The warm worker on ``root``, started now if there is none (or another's)."""
        worker = self.current
        if worker is not None and worker.alive() and worker.root == root:
            return worker
        if worker is not None:
            worker.stop()
        self.current = Worker(root, fab_id, fab_version, fab_hash, self.env)
        return self.current

    def has(self, root: Path) -> bool:
        return self.current is not None and self.current.alive() and self.current.root == root

    def stop(self, wait: float = STOP_WAIT) -> None:
        if self.current is not None:
            self.current.stop(wait)
            self.current = None
