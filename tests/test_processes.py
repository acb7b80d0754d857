"""common.infra.processes.stop_tagged: everything a tagged command started stops, also a child whose
environment no longer shows the tag (Ray's agents, renamed with setproctitle) and that outlives
its parent's death."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from common.infra.processes import RUN_TAG, new_tag, stop_tagged, with_descendants


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def test_an_untagged_child_that_ignores_sigterm_is_stopped_with_its_tagged_parent(tmp_path):
    tag, pidfile = new_tag(), tmp_path / "child.pid"
    # the parent carries the tag; its child has a wiped environment and ignores SIGTERM
    script = (f"env -i sh -c 'trap \"\" TERM; echo $$ > {pidfile}; "
              "while true; do sleep 0.1; done' & wait")
    parent = subprocess.Popen(["sh", "-c", script], env={**os.environ, RUN_TAG: tag})
    deadline = time.time() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert RUN_TAG.encode() not in Path(f"/proc/{child}/environ").read_bytes()
    assert child in with_descendants([parent.pid])
    stop_tagged(tag, grace=1.0)
    parent.wait(timeout=10)
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
