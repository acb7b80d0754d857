"""`consortium simulate` stopped mid-round by SIGTERM (and, in the heavy test, then by SIGINT):
every process it started (SuperLink, SuperExec, flwr-simulation, Ray's) is gone within 10 s,
checked by PID; --resume finishes the run and no finished round is trained twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from common.infra.processes import StopOnSignal, Stopped, pids_with

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("consortium"))
MARK = "CONSORTIUM_TEST_MARK"


def _marked(mark: str) -> list[int]:
    """Every process that inherited this test's mark: the CLI and all it started."""
    return pids_with(MARK, mark)


def _describe(pids: list[int]) -> list[str]:
    """What a leftover process is: its state, its parent and its command line."""
    found = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            tagged = b"CONSORTIUM_PROCESS_TAG=" in Path(f"/proc/{pid}/environ").read_bytes()
            found.append(f"{pid} state {stat[0]} ppid {stat[1]} tagged {tagged}: {cmd[:200]}")
        except OSError:
            found.append(f"{pid} (gone)")
    return found


def _start(tiny_bert: str, out: Path, mark: str, rounds: int, *extra: str) -> subprocess.Popen:
    args = [CLI, "simulate", "--partners", "2", "--rounds", str(rounds), "--out", str(out),
            "--set", f'base-model="{tiny_bert}"', "--set", "examples-per-partner=60",
            "--set", "max-length=16", "--set", "batch-size=8", "--set", "local-epochs=1",
            "--set", "dp-plan-check=false", *extra]
    return subprocess.Popen(args, env={**os.environ, **PORTS, MARK: mark},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ports of its own: another simulation on this machine must not make this test fail
PORTS = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
         "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port())}


def _stop_after_round(proc: subprocess.Popen, out: Path, sig: int, mark: str) -> str:
    """Send ``sig`` 1 s after ``proc`` (just started) checkpoints its first round."""
    done = [int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("round-*.json")]
    checkpoint = out / "checkpoints" / f"round-{max(done, default=0) + 1:05d}.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), (proc.communicate()[0] or "")[-3000:]
    time.sleep(1.0)  # into the next round
    started = _marked(mark)
    assert len(started) > 3  # the CLI, flwr run, SuperLink, SuperExec, Ray ...
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    deadline = time.time() + 10
    while _marked(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert not _marked(mark), f"still running: {_describe(_marked(mark))}"
    assert proc.returncode == 128 + sig, output[-3000:]  # the shell's convention: 130, 143
    return output


def _stop_then_finish(tiny_bert: str, out: Path, signals: list[int]) -> None:
    """Stop a run with each signal in turn (the first run fresh, the next ones resumed), each
    after one more finished round, so mid-round (a stop may land after the next round's
    checkpoint too, hence 2 rounds per stop); then --resume finishes it."""
    mark, rounds = uuid.uuid4().hex, 2 * len(signals) + 1
    for i, sig in enumerate(signals):
        extra = ("--resume",) if i else ()
        output = _stop_after_round(_start(tiny_bert, out, mark, rounds, *extra), out, sig, mark)
        last = output.strip().splitlines()[-1]
        name = signal.Signals(sig).name
        assert last.startswith(f"consortium: stopped by {name}") and "--resume" in last
    finish = _start(tiny_bert, out, mark, rounds, "--resume")
    output, _ = finish.communicate(timeout=420)
    assert finish.returncode == 0, output[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(1, rounds + 1))
    # the default recipe (pooled-head) exports a model that loads in one line
    from sentence_transformers import SentenceTransformer

    logits = SentenceTransformer(str(out / "model"), device="cpu").encode(["good food"])
    labels = json.loads((out / "model" / "labels.json").read_text())["labels"]
    assert logits.shape == (1, len(labels))
    for ledger in (out / "ledgers").glob("partner-*@*.json"):
        counted = [r["round"] for r in json.loads(ledger.read_text())["body"]["releases"]]
        assert counted.count(1) == 1  # a finished round is never trained again
        # a round interrupted mid-way may have started once before the stop: its release was
        # recorded before training, so it stays counted (over-counting, never under-counting)
        assert all(counted.count(r) in (1, 2) for r in range(2, rounds + 1))


def test_sigterm_stops_everything_and_resume_finishes(tiny_bert: str, tmp_path: Path) -> None:
    """SIGTERM, as `timeout` or a job scheduler sends it. SIGINT takes the same handler
    (test_stop_on_signal_raises_once_and_restores_handlers); the heavy test below sends both
    to real runs."""
    _stop_then_finish(tiny_bert, tmp_path / "run", [signal.SIGTERM])


@pytest.mark.heavy  # ≈ 2.5 min alone: three runs of Ray
def test_sigterm_then_sigint_stop_everything_and_resume_finishes(tiny_bert: str,
                                                                 tmp_path: Path) -> None:
    _stop_then_finish(tiny_bert, tmp_path / "run", [signal.SIGTERM, signal.SIGINT])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_on_signal_raises_once_and_restores_handlers(sig: int) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(Stopped, match=signal.Signals(sig).name):
        with StopOnSignal():
            os.kill(os.getpid(), sig)
            time.sleep(1)
    assert signal.getsignal(sig) == before
