"""docs/deployment.md's local trial, verbatim: its bash blocks, copied as they are into one bash
session in an empty folder. A coordinator and two partners on loopback, a 2-round run,
`consortium runs`, then a partner stopped mid-run, started again, and the run resumed to its end.
It asserts the stop's words, the resumed run's rounds, and that nothing the trial started is
left running (`consortium runs` included: a bare `flwr ls` leaves a local SuperLink behind).

The trial's paths are the docs' own (/tmp/fed, /tmp/keys, ...): the test is skipped when any of
them exists, and removes them after."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from common.infra.processes import pids_with

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
PATHS = [Path(p) for p in ("/tmp/fed", "/tmp/keys", "/tmp/ledger-a", "/tmp/ledger-b",
                           "/tmp/run", "/tmp/run2")]


def trial_blocks() -> list[str]:
    """The bash blocks of the section "A local trial on one machine"."""
    text = DOC.read_text()
    section = text.split("## A local trial on one machine\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL)


def test_the_blocks_are_the_trial() -> None:
    blocks = trial_blocks()
    assert len(blocks) == 3 and "consortium runs --coordinator /tmp/fed" in blocks[0]
    assert "--resume" in blocks[2] and "kill $B" in blocks[1]


@pytest.mark.heavy  # ≈ 4 min here: three runs' worth of deployment on loopback
def test_the_local_trial_runs_verbatim(tmp_path: Path) -> None:
    if any(p.exists() for p in PATHS):
        pytest.skip(f"the trial's own paths exist: {[str(p) for p in PATHS if p.exists()]}")
    tag = f"CONSORTIUM_TRIAL_{uuid.uuid4().hex}"
    env = {**os.environ, tag: "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        proc = subprocess.run(["bash", "-c", "\n".join(trial_blocks())], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1500)
        said = proc.stdout + proc.stderr
        assert "org-b: stopped by its operator (a clean stop, not a crash)" in said, said[-4000:]
        assert "start org-b again with the same `consortium partner start` command" in said
        assert "stopped by SIGTERM" in said
        first = [json.loads(x) for x in Path("/tmp/run/metrics.jsonl").read_text().splitlines()]
        assert [line["round"] for line in first] == [1, 2]
        second = [json.loads(x)
                  for x in Path("/tmp/run2/metrics.jsonl").read_text().splitlines()]
        assert [line["round"] for line in second] == [1, 2, 3, 4, 5], said[-4000:]
        assert (Path("/tmp/run2") / "model" / "config.json").exists()
        assert not pids_with(tag, "1"), "the trial left processes running"
    finally:
        for pid in pids_with(tag, "1"):  # only what this trial started, by its tag
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for path in PATHS:
            shutil.rmtree(path, ignore_errors=True)
