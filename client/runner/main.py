"""The partner's runner process: it starts Flower's SuperNode in process-isolation mode, then
claims the SuperNode's tasks one by one, checks each task's FAB (client.runner.gate) before any
of it is installed or imported, and answers the Message with a warm worker
(client.runner.workers), or with a refusal.

    python -m client.runner --address 127.0.0.1:PORT --name NAME [--allowed-code H1,H2] \\
        -- flower-supernode ARGS...

SIGINT / SIGTERM stop the SuperNode (SIGTERM, a few seconds to tell the SuperLink it leaves),
the worker and this process; the SuperNode exiting on its own (refused by the SuperLink, out of
retries) ends the runner with its exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from client import pinning
from client.runner.gate import Gate, Verdict
from client.runner.tasks import Inputs, Task, claim, claims_client
from client.runner.workers import AppRaised, WorkerDied, Workers, rss_bytes
from common import protocol as P
from common.code_hash import app_root
from common.infra.processes import StopOnSignal, Stopped, stops_deferred

logger = logging.getLogger(__name__)
POLL = 0.1  # seconds between claims while no task is pending (Flower's SuperExec: 1 s)
# one line per Message answered (benchmarks.deploy reads them back with ``answered``)
ANSWERED_FORMAT = ("%s: %s Message %d of run %d answered in %.2f s (inputs %.2f, check %.2f, "
                   "App %.2f, reply %.2f); worker %s; RSS MB runner %.0f, worker %.0f")
_ANSWERED = re.compile(
    r"(?P<partner>\S+): (?P<type>\w+) Message (?P<round>\d+) of run (?P<run>\d+) answered in "
    r"(?P<total>[\d.]+) s \(inputs (?P<inputs>[\d.]+), check (?P<check>[\d.]+), App "
    r"(?P<app>[\d.]+), reply (?P<reply>[\d.]+)\); worker (?P<worker>\S+); RSS MB runner "
    r"(?P<runner_mb>[\d.]+), worker (?P<worker_mb>[\d.]+)")
SUPERNODE_GRACE = 4.0  # seconds the SuperNode gets to leave before SIGKILL
# seconds a stopped runner still answers (``partner-stopped``) the Messages its SuperNode pulls:
# an idle SuperNode asks the SuperLink every 3 s, so a round's Message sent just before the
# stop is named as a clean stop, not a lost node
DRAIN = 3.5


class Runner:
    """Claims, checks and answers the tasks of the SuperNode at ``address``."""

    def __init__(self, address: str, gate: Gate, workers: Workers) -> None:
        self.address, self.gate, self.workers = address, gate, workers

    def serve(self, supernode: subprocess.Popen, secret: bytes) -> int:
        """Answer tasks until the SuperNode exits; its exit code."""
        claims = claims_client(self.address, secret)
        try:
            while (code := supernode.poll()) is None:
                token = self.next_task(claims)
                if token is not None:
                    self.answer(token)
        except Stopped:
            self.drain(claims, supernode)
            raise
        logger.info("%s: the SuperNode exited with code %d", self.gate.name, code)
        return code

    def next_task(self, claims: Any) -> str | None:
        """A claimed task's token; None (after a short wait) when none is pending."""
        try:
            token = claim(claims)
        except httpx.HTTPError:  # the SuperNode is starting, or busy: ask again
            token = None
        if token is None:
            time.sleep(POLL)
        return token

    def drain(self, claims: Any, supernode: subprocess.Popen, seconds: float = DRAIN) -> None:
        """Stopped: for ``seconds`` (and 1 s after the last answer, for the SuperNode to push
        it) every Message the SuperNode pulls gets the ``partner-stopped`` reply."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and supernode.poll() is None:
            token = self.next_task(claims)
            if token is None:
                continue
            task = Task(self.address, token)
            try:
                self.stopped(task, task.pull())
            except Exception as exc:  # noqa: BLE001 - stopping: the SuperNode answers it
                logger.warning("%s: a Message that came while stopping was not answered (%s)",
                               self.gate.name, exc)
            finally:
                task.finish()
            deadline = max(deadline, time.monotonic() + 1.0)

    def answer(self, token: str) -> None:
        """Pull the task's inputs, answer its Message, push the reply. Raises only Stopped (the
        Message then has its ``partner-stopped`` reply, unless its own reply went out whole)."""
        task, inputs, replied = Task(self.address, token), None, False
        try:
            started = time.perf_counter()
            inputs = task.pull()
            pulled = time.perf_counter()
            reply, context, failed, times = self.reply(inputs)
            replying = time.perf_counter()
            with stops_deferred():  # a stop now waits until the reply is pushed whole
                task.reply(reply, context, failed)
                replied = True
            worker = self.workers.current
            logger.info(  # worded so that the console's round filter leaves it in the log
                ANSWERED_FORMAT,
                self.gate.name, inputs.message.metadata.message_type,
                pinning.describe(inputs.message)[1], inputs.context.run_id,
                time.perf_counter() - started, pulled - started, times[0], times[1],
                time.perf_counter() - replying, worker.pid if worker else "-",
                rss_bytes(os.getpid()) / 2**20, worker.rss_bytes() / 2**20 if worker else 0)
        except Stopped:  # its operator stopped it: the coordinator learns that, not a crash
            if inputs is not None and not replied:
                self.stopped(task, inputs)
            raise
        except Exception:  # noqa: BLE001 - one task's failure must not stop the partner
            logger.exception("%s could not answer a task; the SuperNode answers it with an "
                             "error once its claim expires", self.gate.name)
        finally:
            task.finish()

    def stopped(self, task: Task, inputs: Inputs) -> None:
        """The Message being answered when SIGINT / SIGTERM came gets the ``partner-stopped``
        reply, so the coordinator names a clean stop (not a lost heartbeat). Whatever the App
        recorded in the ledger before stays recorded: a stop over-counts, never under-counts."""
        what, number = pinning.describe(inputs.message)
        logger.warning("%s: stopped while answering %s %d of run %d; the coordinator is told",
                       self.gate.name, what, number, inputs.context.run_id)
        try:
            task.reply(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                     reason=P.ERROR_STOPPED), reply_to=inputs.message),
                       inputs.context, "the partner was stopped by its operator")
        except Exception as exc:  # noqa: BLE001 - the SuperNode may be leaving too
            logger.warning("%s: the stop could not be reported (%s)", self.gate.name, exc)

    def reply(self, inputs: Inputs) -> tuple[Message, Context, str, tuple[float, float]]:
        """(reply, Context after it, '' or why the task failed, seconds (check, App))."""
        msg, context = inputs.message, inputs.context
        started = time.perf_counter()
        found = self.verdict(inputs)
        checked = time.perf_counter()
        if found.root is None:
            return pinning.refuse(msg, context, found.refusal), context, "", (
                checked - started, 0.0)
        worker = self.workers.for_app(found.root, inputs.run.fab_id, inputs.run.fab_version,
                                      inputs.fab.hash_str)
        try:
            (reply, left), failed = worker.answer(msg, context, inputs.identity), ""
        except (WorkerDied, AppRaised) as exc:
            reply, left, failed = self.error(msg, context, worker.pid, exc), context, str(exc)
        return reply, left, failed, (checked - started, time.perf_counter() - checked)

    def verdict(self, inputs: Inputs) -> Verdict:
        """The gate's verdict on the task's FAB; an approved App whose files changed since it
        was checked is refused when a worker would start on it."""
        found = self.gate.check(inputs.fab)
        if found.root is None or self.workers.has(found.root) or self.gate.still_valid(found):
            return found
        logger.error("%s: the App at %s changed after it was checked", self.gate.name,
                     found.root)
        return Verdict(found.code, refusal=f"the App checked for this run changed at "
                                           f"{self.gate.name} since; its log says where")

    def error(self, msg: Message, context: Context, pid: int, exc: Exception) -> Message:
        """The error reply (a fixed reason code) for a Message whose worker died or whose App
        raised; a death is logged and audited with the signal."""
        if isinstance(exc, AppRaised):
            code = (ErrorCode.CLIENT_APP_RAISED_EXCEPTION if exc.loaded
                    else ErrorCode.LOAD_CLIENT_APP_EXCEPTION)
            return Message(Error(code=code, reason=P.ERROR_INTERNAL), reply_to=msg)
        what, number = pinning.describe(msg)
        logger.error("%s: worker %d died while answering %s %d of run %d (%s); the coordinator "
                     "gets an error reply, the next Message a fresh worker", self.gate.name, pid,
                     what, number, context.run_id, exc)
        pinning.audit(context, {"round": number, "failed": f"worker died: {exc}",
                                "message": what, "bytes_sent": 0})
        return Message(Error(code=ErrorCode.CLIENT_APP_CRASHED, reason=P.ERROR_INTERNAL),
                       reply_to=msg)


def answered(log: str) -> list[dict[str, Any]]:
    """The runner's per-Message lines in ``log``, as numbers (seconds, MB) and names."""
    found = []
    for match in map(_ANSWERED.search, log.splitlines()):
        if match:
            line = {k: float(v) for k, v in match.groupdict().items()
                    if k not in ("partner", "type", "worker", "run")}
            found.append({**line, "partner": match["partner"], "type": match["type"],
                          "worker": match["worker"], "run": match["run"],
                          "round": int(match["round"])})
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m client.runner", description=__doc__)
    parser.add_argument("--address", required=True, help="the SuperNode's Runtime API")
    parser.add_argument("--name", required=True, help="the partner's name")
    parser.add_argument("--allowed-code", default="", help="approved code hashes; empty: any")
    parser.add_argument("supernode", nargs=argparse.REMAINDER,
                        help="-- then the flower-supernode command line")
    args = parser.parse_args(argv)
    args.supernode = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    if not args.supernode:
        parser.error("give the flower-supernode command after --")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging()
    allowed = pinning.allowed_code({"allowed-code": args.allowed_code})
    gate = Gate(args.name, allowed, app_root())
    own = gate.own_code()
    logger.info("%s: every FAB is checked before any of it is installed or imported; code: %s; "
                "own copy of the App %s", args.name,
                f"{len(allowed)} approved hash(es)" if allowed else "any (no allowed-code)",
                f"at {gate.own_root} ({own[:16]}…)" if own else "not used")
    workers = Workers(os.environ)
    with tempfile.TemporaryDirectory(prefix="consortium-runner-") as private:  # 0700
        secret = secrets.token_bytes(32)
        secret_file = Path(private) / "superexec-secret"
        secret_file.write_bytes(secret)
        secret_file.chmod(0o600)
        supernode = subprocess.Popen([*args.supernode, "--superexec-auth-secret-file",
                                      str(secret_file)])
        try:
            with StopOnSignal():
                return Runner(args.address, gate, workers).serve(supernode, secret)
        except Stopped as stop:
            return 128 + stop.signum
        finally:
            _stop(supernode, workers)


def _stop(supernode: subprocess.Popen, workers: Workers) -> None:
    """The SuperNode gets SIGTERM and SUPERNODE_GRACE seconds to leave (it tells the
    SuperLink), the worker is stopped meanwhile; then SIGKILL."""
    if supernode.poll() is None:
        supernode.send_signal(signal.SIGTERM)
    workers.stop(wait=1.0)
    if supernode.poll() is None:
        try:
            supernode.wait(timeout=SUPERNODE_GRACE)
        except subprocess.TimeoutExpired:
            supernode.kill()
            supernode.wait()


def _configure_logging() -> None:
    """Our packages' lines on stderr, as common.infra.logs writes them (without importing the
    libraries common.infra.logs quiets: the runner never imports torch or transformers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    for name in ("client", "common"):
        package = logging.getLogger(name)
        package.handlers, package.propagate = [handler], False
        package.setLevel(logging.INFO)
