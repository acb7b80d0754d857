"""The coordinator SIGKILLed mid-run and resumed: same rounds, same model, every training counted.

Simulated partners replay their DP noise exactly (seeded per partner and round), so the resumed
run must reach the bitwise-same model as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import latest_checkpoint
from simulations.simulate import local_superlink_ports

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("consortium"))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def kill_tree(pid: int) -> None:
    tree, todo, found = _children(), [pid], []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def superlink_pids() -> list[int]:
    """This test's local SuperLink: the one on this worker's port (see conftest.py)."""
    port = dict(local_superlink_ports())["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in text and "--simulation" in text and f"--port {port} " in text:
            pids.append(int(cmdline.parent.name))
    return pids


def simulate_args(tiny_bert: str, out: Path, *extra: str) -> list[str]:
    return [CLI, "simulate", "--partners", "2", "--rounds", "3", "--out", str(out),
            "--set", f'base-model="{tiny_bert}"', "--set", "examples-per-partner=60",
            "--set", "max-length=16", "--set", "batch-size=8",
            "--set", "dp-plan-check=false", "--set", "local-epochs=1",
            *extra]


def releases(out: Path, partner: str) -> int:
    ledger = json.loads(next((out / "ledgers").glob(f"{partner}@*.json")).read_text())
    return len(ledger["body"]["releases"])


def test_coordinator_killed_mid_round_resumes_to_the_same_model(tiny_bert: str,
                                                               tmp_path: Path) -> None:
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    done = subprocess.run(simulate_args(tiny_bert, plain), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run = subprocess.Popen(simulate_args(tiny_bert, killed), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        # wait until round 1 is checkpointed and a partner has trained round 2
        while time.time() < deadline and not (
                (killed / "checkpoints" / "round-00001.json").exists()
                and (killed / "ledgers").is_dir()
                and any(releases(killed, f"partner-{p}") >= 2 for p in (0, 1))):
            time.sleep(0.2)
        assert time.time() < deadline, "the run never reached round 2"
        for pid in superlink_pids():
            kill_tree(pid)  # the coordinator (SuperLink + ServerApp + Ray) dies mid-round
        assert run.wait(timeout=120) != 0
    finally:
        kill_tree(run.pid)
    at_kill = {p: releases(killed, p) for p in ("partner-0", "partner-1")}
    last_round = latest_checkpoint(killed / "checkpoints").round
    assert last_round < 3 and max(at_kill.values()) > last_round  # a trained round was lost

    resumed = subprocess.run(simulate_args(tiny_bert, killed, "--resume"), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    a = latest_checkpoint(plain / "checkpoints")
    b = latest_checkpoint(killed / "checkpoints")
    assert a.round == b.round == 3
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)  # bitwise
    reports = [json.loads((out / "privacy_report.json").read_text())["partners"]
               for out in (plain, killed)]
    for partner in ("partner-0", "partner-1"):
        assert releases(plain, partner) == 3
        # every training is counted once, including the round whose result was lost: what was
        # spent before the kill, plus one release per round re-run after the last checkpoint
        assert releases(killed, partner) == at_kill[partner] + 3 - last_round
        # and the privacy report's ε pays for them all (steps per round are fixed)
        plain_record, killed_record = reports[0][partner], reports[1][partner]
        assert killed_record["steps"] == plain_record["steps"] // 3 * releases(killed, partner)
        if releases(killed, partner) > 3:  # this partner had trained the lost round
            assert killed_record["epsilon"] > plain_record["epsilon"]
