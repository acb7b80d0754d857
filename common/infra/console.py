"""What a person sees of a run's log stream by default: one line per round from the coordinator,
each partner's progress, and every error, without colour codes, Ray's actor prefixes or the
libraries' notices. The whole stream, unfiltered, goes to a log file beside the run's outputs;
``--verbose`` shows it on the console instead."""

from __future__ import annotations

import re

LOG_FILE = "flwr.log"  # in the run's out-dir: Flower's, Ray's and the apps' whole log stream
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\([\w.-]+ pid=\d+(?:, ip=[\d.]+)?\)\s*")
RAY_REPEAT = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
OURS = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR|CRITICAL) "
                  r"(server|client|common|simulations)[\w.]*: (.*)$")
STOP_MARK = "run stopped: "  # server.app's one line for an expected stop (simulate reads it)
STOPPED = re.compile(r"^\d\d:\d\d:\d\d ERROR server\.app: " + STOP_MARK + r"(.*)$")
ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback |^\w+(Error|Exception)\b|Exit Code: \d+")


def clean(raw: str) -> str:
    """The line without colour codes, Ray's ``(Actor pid=N)`` prefix and repeat notes."""
    return RAY_REPEAT.sub("", RAY_PREFIX.sub("", ANSI.sub("", raw.rstrip("\r\n"))))


class ConsoleFilter:
    """Feed it the stream line by line; it returns the line to show, or None."""

    def __init__(self) -> None:
        self._in_traceback = False
        self._stopped = False  # after an expected stop's line: Flower's echo of it is noise

    def __call__(self, raw: str) -> str | None:
        line = clean(raw)
        if self._in_traceback:  # a traceback shows whole: its indented frames, then the error
            self._in_traceback = line.startswith(" ") or not line.strip()
            return None if self._stopped else line
        if line.startswith("Traceback "):
            self._in_traceback = True
            return None if self._stopped else line
        if STOPPED.match(line):
            self._stopped = True
            return line
        if self._stopped and not OURS.match(line):
            return None
        ours = OURS.match(line)
        if ours:
            level, package, message = ours.groups()
            if level != "INFO" or package in ("server", "simulations"):
                return line
            return line if package == "client" and " round " in message else None
        return line if ERROR.search(line) else None


def stop_reason(log: str) -> str | None:
    """The last expected stop the ServerApp logged (server.app), or None."""
    found = [m.group(1) for m in map(STOPPED.match, map(clean, log.splitlines())) if m]
    return found[-1] if found else None


def node_console(verbose: bool):
    """What a long-running node (`coordinator start`, `partner start`) shows: the filter above,
    or with ``verbose`` every line, without colour codes when the output is not a terminal."""
    import sys

    if not verbose:
        return ConsoleFilter()
    if sys.stderr.isatty():
        return lambda raw: raw.rstrip("\r\n")
    return clean
