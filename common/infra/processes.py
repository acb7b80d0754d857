"""Stop exactly the processes one command started, by PID, Ray's included.

`flwr run` detaches a local SuperLink, which starts the SuperExec, `flwr-simulation` and Ray
(GCS, raylet, workers; Ray's agents ignore SIGTERM). None of them is a child this process could
wait on, but all inherit its environment: the command tags what it starts with a variable of
its own (``RUN_TAG``) and stops every process of this user that carries that tag, never one
of another run or another user's federation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Mapping

from common.errors import StoppedBySignal

RUN_TAG = "CONSORTIUM_PROCESS_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_pids(tag: str) -> list[int]:
    """PIDs of this user's processes whose environment holds ``RUN_TAG=tag`` (not this one)."""
    return pids_with(RUN_TAG, tag)


def pids_with(variable: str, value: str) -> list[int]:
    """PIDs of this user's processes whose environment holds ``variable=value`` (not this
    one): a variable a command set is inherited by everything it starts, detached or not."""
    needle = f"{variable}={value}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(pid)
        except OSError:  # gone, or another user's: not ours to stop
            continue
    return pids


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process they started, by parent PID: Ray renames its agents with
    setproctitle, which can overwrite the start of a process's environment, tag included, so a
    child of a tagged process is stopped as such."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(proc.name))
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(proc.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != os.getpid():
                found.add(child)
                todo.append(child)
    return sorted(found)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def stop_tagged(tag: str, grace: float = 5.0, quiet: float = 0.5) -> list[int]:
    """SIGTERM every tagged process, then, after ``grace`` seconds, freeze (SIGSTOP) and SIGKILL
    whatever carries the tag, sweep after sweep, until no sweep has found one for ``quiet``
    seconds: a process that a dying parent started after a sweep (a Ray worker, a fresh
    ClientApp), or one caught mid-exec, is caught by a later one. Returns the PIDs that were
    running at the first sweep."""
    found = tagged_pids(tag)
    known = _identities(with_descendants(found))  # a child outlives its parent's death
    _signal_all(found, signal.SIGTERM)
    deadline = time.time() + grace
    while tagged_pids(tag) and time.time() < deadline:
        known |= _identities(with_descendants(tagged_pids(tag)))
        time.sleep(0.2)
    deadline, quiet_since = time.time() + 4 * grace, time.time()
    while time.time() < deadline and time.time() - quiet_since < quiet:
        known |= _identities(with_descendants(tagged_pids(tag)))
        known = {k for k in known if _identity(k[0]) == k}  # alive, and not a reused PID
        if left := [pid for pid, _ in known]:
            _signal_all(left, signal.SIGSTOP)  # none of them can start another while we sweep
            _signal_all(left, signal.SIGKILL)
            quiet_since = time.time()
        time.sleep(0.05)
    return found


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (state, ppid, …, start time at [19]); [] when
    the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _identity(pid: int) -> tuple[int, str] | None:
    """(PID, start time): a PID that is reused after its process died is another process."""
    fields = _stat(pid)
    return None if len(fields) < 20 or fields[0] in "ZX" else (pid, fields[19])  # Z: dead


def _identities(pids: list[int]) -> set[tuple[int, str]]:
    return {i for i in map(_identity, pids) if i is not None}


class Stopped(Exception):
    """The command got SIGINT or SIGTERM; what it started has been (or is being) stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignal:
    """Within ``with StopOnSignal():`` SIGINT and SIGTERM raise Stopped (once), so the caller's
    ``finally`` stops what it started; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self._previous: dict[int, Callable | int | None] = {}

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        for sig in self._previous:  # a second signal while stopping must not interrupt it
            signal.signal(sig, signal.SIG_IGN)
        if _DEFERRED["on"]:  # inside stops_deferred(): raised when it ends
            _DEFERRED["signum"] = signum
            return
        raise Stopped(signum)

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

_DEFERRED: dict[str, Any] = {"on": False, "signum": None}


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Within it, StopOnSignal's Stopped waits until the block ends (e.g. a reply being pushed
    is pushed whole); then it is raised, once."""
    _DEFERRED.update(on=True, signum=None)
    try:
        yield
    finally:
        signum = _DEFERRED["signum"]
        _DEFERRED.update(on=False, signum=None)
        if signum is not None:
            raise Stopped(signum)


def run_tagged(command: list[str], env: Mapping[str, str], what: str,
               hint: Callable[[], str], cwd: str | os.PathLike | None = None,
               grace: float = 6.0, console: Callable[[str], str | None] | None = None,
               log: Path | None = None) -> int:
    """Run ``command`` with a fresh tag in its environment and return its exit code; whatever
    it left running (a detached SuperLink, Ray) is stopped when it ends.

    With ``console``, the command's output is read line by line: every line is appended to
    ``log`` and ``console(line)`` decides what the terminal shows (None: nothing).

    On SIGINT or SIGTERM the command gets SIGTERM first and ``grace`` seconds to stop what it
    runs itself (a SuperNode tells the SuperLink it leaves, so it may rejoin at once); then
    everything still carrying the tag is stopped by PID, and StoppedBySignal says in one line
    the signal, ``what`` was stopped, and ``hint()`` (how to go on, as of now)."""
    tag = new_tag()
    # Flower starts its own executables (flower-superexec, flwr-clientapp) by name: from this
    # environment's bin, also when the command was run by path without activating it
    env = {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                           env.get("PATH", os.defpath)])}
    proc = None
    try:
        with StopOnSignal():
            if console is None:
                proc = subprocess.Popen(command, env={**env, RUN_TAG: tag}, cwd=cwd)
            else:
                proc = subprocess.Popen(command, env={**env, RUN_TAG: tag}, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace")
                # read in a thread: a child the command leaves behind may hold the pipe open
                # after the command exits; the command's own exit ends the wait
                reader = threading.Thread(target=_show, args=(proc, console, log), daemon=True)
                reader.start()
                code = proc.wait()
                reader.join(timeout=2.0)
                return code
            return proc.wait()
    except Stopped as stop:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        stopped = stop_tagged(tag, grace=2.0)
        raise StoppedBySignal(f"stopped by {stop}: {what} ({len(stopped) + 1} process(es)) "
                              f"stopped; {hint()}", stop.signum) from None
    finally:
        stop_tagged(tag, grace=2.0)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _show(proc: subprocess.Popen, console: Callable[[str], str | None],
          log: Path | None) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    with open(log if log is not None else os.devnull, "a", encoding="utf-8") as sink:
        for raw in proc.stdout:  # type: ignore[union-attr]
            sink.write(raw)
            sink.flush()
            shown = console(raw)
            if shown is not None:
                print(shown, file=sys.stderr, flush=True)
