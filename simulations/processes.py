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
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Callable

RUN_TAG = "CONSORTIUM_PROCESS_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_pids(tag: str) -> list[int]:
    """PIDs of this user's processes whose environment holds ``RUN_TAG=tag`` (not this one)."""
    needle = f"{RUN_TAG}={tag}".encode()
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


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def stop_tagged(tag: str, grace: float = 5.0) -> list[int]:
    """SIGTERM every tagged process, then SIGKILL what is left after ``grace`` seconds.
    Returns the PIDs that were running."""
    found = tagged_pids(tag)
    _signal_all(found, signal.SIGTERM)
    deadline = time.time() + grace
    while tagged_pids(tag) and time.time() < deadline:
        time.sleep(0.2)
    _signal_all(tagged_pids(tag), signal.SIGKILL)
    deadline = time.time() + grace
    while tagged_pids(tag) and time.time() < deadline:
        time.sleep(0.1)
    return found


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
        raise Stopped(signum)

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

