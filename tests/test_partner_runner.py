"""The partner's runner (client.runner) against Flower's own SuperNode Runtime API, served in this
process (the FastAPI app `flower-supernode` serves), with tasks offered as the SuperNode offers a
Message it pulled: no SuperLink, so each test takes seconds (tests/test_deployment.py runs the
runner in real TLS federations).

- the FAB's code hash, computed in memory, is the one `consortium partner approve` prints;
- a FAB that differs from the approved code by an extra module, a shadow ``opacus/`` or a stray
  ``.pyc`` is refused before any file of it is written or imported, with a refusal reply and
  an audit line; the approved one is answered by a warm worker on the partner's own copy;
- a worker killed mid-Message: an error reply with a fixed code, an audit line, a fresh
  worker for the next Message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import uvicorn
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import get_metadata_from_config
from flwr.common.constant import ErrorCode
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import (get_all_nested_objects,
                                                         get_object_tree, iterate_object_tree)
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.main import create_app
from flwr.supernode.nodestate import NodeStateFactory

from client.runner.gate import Gate
from client.runner.main import Runner
from client.runner.tasks import claim, claims_client
from client.runner.workers import Workers
from common import protocol as P
from common.code_hash import app_code, code_hash, fab_code
from common.infra.processes import StopOnSignal, Stopped
from tests.test_code_pinning import SHIM, TAG, checkout, install, pyc

NODE = 7
SECRET = b"a test's SuperExec secret"


class SuperNodeApi:
    """Flower's SuperNode Runtime API on a free port, and its NodeState to offer tasks in."""

    def __init__(self) -> None:
        factory = NodeStateFactory(ObjectStoreFactory())
        self.state, self.store = factory.state(), factory.objectstore_factory.store()
        self.state.set_node_id(NODE)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(factory, SECRET), host="127.0.0.1", port=int(self.address.split(":")[1]),
            log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def offer(self, fab: bytes, node_config: dict[str, Any], server_round: int = 1,
              run_id: int = 1) -> Message:
        """A TRAIN Message of run ``run_id`` with ``fab``, offered as a pending task."""
        pyproject = zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode()
        fab_id, version = get_metadata_from_config(tomllib.loads(pyproject))
        run = Run.create_empty(run_id)
        run.fab_id, run.fab_version = fab_id, version
        run.fab_hash = hashlib.sha256(fab).hexdigest()
        self.state.store_run(run)
        self.state.store_fab(Fab(run.fab_hash, fab, {}))
        self.state.set_run_series_context(run.series_id, Context(
            run_id, NODE, node_config, RecordDict(), {}))
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
        msg = Message(RecordDict({P.CONFIG: ConfigRecord({P.ROUND: server_round})}),
                      dst_node_id=NODE, message_type=MessageType.TRAIN, group_id=str(server_round))
        self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id,
                               fab_hash=run.fab_hash)
        msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
        self.state.store_message(msg)
        self.store.preregister(run_id, get_object_tree(msg))
        for object_id, obj in get_all_nested_objects(msg).items():
            self.store.put(object_id, obj.deflate())
        return msg

    def reply(self) -> Message:
        """The reply the runner pushed, inflated from the object store as the SuperNode sends
        it on to the SuperLink."""
        (pushed,) = self.state.get_messages_legacy(is_reply=True)
        tree = self.store.get_object_tree(pushed.metadata.message_id)
        contents = {t.object_id: self.store.get(t.object_id) for t in iterate_object_tree(tree)}
        reply = inflate_object_from_contents(tree.object_id, contents)
        reply.metadata.__dict__["_message_id"] = tree.object_id
        self.state.delete_messages(message_ids=[pushed.metadata.message_id])
        return reply

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def api() -> Iterator[SuperNodeApi]:
    served = SuperNodeApi()
    yield served
    served.close()


def answer_next(api: SuperNodeApi, runner: Runner) -> Message:
    """The runner claims the pending task (signed with the SuperNode's secret) and answers."""
    token = claim(claims_client(api.address, SECRET))
    assert token
    runner.answer(token)
    return api.reply()


def test_the_fab_hash_in_memory_is_the_approved_checkouts(tmp_path: Path) -> None:
    """`partner approve` of a checkout, the FAB of it hashed in memory (nothing written) and the
    App Flower installs from it: one hash. A FAB that names a file outside the App is refused."""
    app_dir = checkout(tmp_path / "app")
    fab = build_fab_from_disk(app_dir)
    assert fab_code(fab).sha256 == code_hash(app_dir) == app_code(
        install(app_dir, tmp_path / "home")).sha256
    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("pyproject.toml", "")
        archive.writestr("../outside.py", "x = 1")
    with pytest.raises(ValueError, match="outside the App"):
        fab_code(hostile.getvalue())


def hostile_fabs(app_dir: Path, marker: Path) -> dict[str, bytes]:
    """The approved App with one addition each, whose import would write ``marker``: an extra
    module (``tomllib.py``: the code check reads TOML), a shadow ``opacus/`` and a stray
    ``.pyc`` (a zip, as a hand-made FAB carries it: `flwr build` leaves caches out)."""
    shim = SHIM.format(marker=str(marker))
    fabs = {}
    for name, path in (("extra module", "tomllib.py"), ("shadow opacus", "opacus/__init__.py")):
        (app_dir / path).parent.mkdir(exist_ok=True)
        (app_dir / path).write_text(shim)
        fabs[name] = build_fab_from_disk(app_dir)
        (app_dir / path).unlink()
    approved = build_fab_from_disk(app_dir)
    with zipfile.ZipFile(io.BytesIO(approved)) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"common/privacy/__pycache__/ledger.{TAG}.pyc",
                         pyc(shim, app_dir / "common" / "privacy" / "ledger.py"))
    fabs["stray .pyc"] = out.getvalue()
    return fabs


def test_the_runner_refuses_a_fab_before_any_of_it_runs_and_answers_the_approved_one_warm(
        api: SuperNodeApi, tmp_path: Path) -> None:
    app_dir = checkout(tmp_path / "app")
    approved, marker = code_hash(app_dir), tmp_path / "marker"
    ledgers, home = tmp_path / "ledgers", tmp_path / "flwr-home"
    node = {"partner-name": "org-a", "ledger-dir": str(ledgers), "allowed-code": approved}
    gate = Gate("org-a", (approved,), own_root=app_dir, flwr_home=home)
    runner = Runner(api.address, gate, Workers({**os.environ, "FLWR_HOME": str(home)}))
    try:
        for number, (kind, fab) in enumerate(hostile_fabs(app_dir, marker).items(), start=1):
            api.offer(fab, node, server_round=number, run_id=number)
            reply = answer_next(api, runner)
            refusal = reply.content.config_records[P.PARTNER][P.REFUSAL]
            assert "allowed-code" in refusal or "compiled code" in refusal, (kind, refusal)
            assert runner.workers.current is None and not home.exists(), kind  # nothing ran
        assert not marker.exists()
        audit = [json.loads(x) for x in (ledgers / "audit.jsonl").read_text().splitlines()]
        assert [(a["round"], a["bytes_sent"]) for a in audit] == [(1, 0), (2, 0), (3, 0)]
        assert "compiled code" in audit[2]["refused"]  # the .pyc: not vouched for by its source

        pids = []
        for number in (4, 5):  # the approved FAB: the partner's own copy, in one warm worker
            api.offer(build_fab_from_disk(app_dir), node, server_round=number, run_id=4)
            reply = answer_next(api, runner)
            assert reply.has_error() and reply.error.reason in P.ERROR_REASONS  # the App's own
            pids.append(runner.workers.current.pid)
        assert pids[0] == pids[1] and runner.workers.current.root == app_dir
        assert not home.exists() and not marker.exists()  # nothing installed: its own copy ran
    finally:
        runner.workers.stop()


def test_a_worker_killed_mid_message_gets_an_error_reply_and_the_next_a_fresh_worker(
        api: SuperNodeApi, tmp_path: Path) -> None:
    app_dir = checkout(tmp_path / "app")
    ledgers = tmp_path / "ledgers"
    node = {"partner-name": "org-a", "ledger-dir": str(ledgers)}
    runner = Runner(api.address, Gate("org-a", (), own_root=app_dir), Workers(os.environ))
    try:
        api.offer(build_fab_from_disk(app_dir), node, server_round=2)
        token = claim(claims_client(api.address, SECRET))
        answering = threading.Thread(target=runner.answer, args=(token,))
        answering.start()
        deadline = time.time() + 60
        while runner.workers.current is None and time.time() < deadline:
            time.sleep(0.01)
        first = runner.workers.current.pid
        time.sleep(0.5)  # it is importing the App's modules: mid-Message
        os.kill(first, signal.SIGKILL)
        answering.join(timeout=60)
        reply = api.reply()
        assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_CRASHED
        assert reply.error.reason == P.ERROR_INTERNAL  # a fixed code, never a text
        [line] = [json.loads(x) for x in (ledgers / "audit.jsonl").read_text().splitlines()]
        assert line["round"] == 2 and "SIGKILL" in line["failed"] and line["bytes_sent"] == 0

        api.offer(build_fab_from_disk(app_dir), node, server_round=3)
        reply = answer_next(api, runner)
        assert reply.has_error() and reply.error.reason in P.ERROR_REASONS  # the App answered
        assert runner.workers.current.pid != first and runner.workers.current.alive()
    finally:
        runner.workers.stop()


def test_a_partner_stopped_mid_message_tells_the_coordinator_it_stopped(
        api: SuperNodeApi, tmp_path: Path) -> None:
    """SIGTERM while the worker answers: the Message gets the ``partner-stopped`` reply (the
    coordinator names a clean stop, not a lost node), and the stop goes on (Stopped)."""
    app_dir = checkout(tmp_path / "app")
    node = {"partner-name": "org-a", "ledger-dir": str(tmp_path / "ledgers")}
    runner = Runner(api.address, Gate("org-a", (), own_root=app_dir), Workers(os.environ))

    def stop_once_the_worker_runs() -> None:
        deadline = time.time() + 60
        while runner.workers.current is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # it is importing the App's modules: mid-Message
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        api.offer(build_fab_from_disk(app_dir), node, server_round=2)
        token = claim(claims_client(api.address, SECRET))
        threading.Thread(target=stop_once_the_worker_runs, daemon=True).start()
        with StopOnSignal(), pytest.raises(Stopped):
            runner.answer(token)
        reply = api.reply()
        assert reply.has_error() and reply.error.reason == P.ERROR_STOPPED
    finally:
        runner.workers.stop()


def test_a_message_that_reaches_a_stopping_partner_is_answered_partner_stopped(
        api: SuperNodeApi, tmp_path: Path) -> None:
    """Stopped between Messages: what the SuperNode pulls during the drain (a round sent just
    before the stop) gets ``partner-stopped``, not a lost node's silence; no worker starts."""
    app_dir = checkout(tmp_path / "app")
    runner = Runner(api.address, Gate("org-a", (), own_root=app_dir), Workers(os.environ))

    class Running:  # the SuperNode, still up while the runner drains
        def poll(self) -> None:
            return None

    api.offer(build_fab_from_disk(app_dir), {"partner-name": "org-a"}, server_round=3)
    started = time.monotonic()
    runner.drain(claims_client(api.address, SECRET), Running(), seconds=0.5)
    reply = api.reply()
    assert reply.has_error() and reply.error.reason == P.ERROR_STOPPED
    assert runner.workers.current is None and time.monotonic() - started < 5


def test_a_stop_while_the_reply_is_pushed_lets_the_reply_finish(
        api: SuperNodeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM as the App's reply is being pushed: the reply goes out whole (a stop cut into it
    left the SuperLink a Message without its objects), then the stop goes on; no second,
    ``partner-stopped`` reply follows it."""
    import client.runner.main as runner_main

    app_dir = checkout(tmp_path / "app")
    node = {"partner-name": "org-a", "ledger-dir": str(tmp_path / "ledgers")}
    runner = Runner(api.address, Gate("org-a", (), own_root=app_dir), Workers(os.environ))
    push = runner_main.Task.reply

    def stopped_while_pushing(task, *args) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler has run by now
        push(task, *args)

    monkeypatch.setattr(runner_main.Task, "reply", stopped_while_pushing)
    try:
        api.offer(build_fab_from_disk(app_dir), node, server_round=2)
        token = claim(claims_client(api.address, SECRET))
        with StopOnSignal(), pytest.raises(Stopped):
            runner.answer(token)
        reply = api.reply()  # exactly one
        assert not (reply.has_error() and reply.error.reason == P.ERROR_STOPPED)
    finally:
        runner.workers.stop()
