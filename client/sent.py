"""A partner's own copy of what left it (node config ``keep-sent``): each round's update, written
to LEDGER-DIR/sent/ before the reply goes, so its privacy officer can inspect exactly what was
sent and an auditor can check an aggregate against it. Off by default: the copies are as large as
the updates. No flwr here.

- a plain round: the arrays of the reply, as sent (``to_wire``: weights or compressed deltas);
- secure aggregation: the flat update Δ and its weight w that the masked vector carries
  (quantized, masked), i.e. what the coordinator learns in the sum, w·Δ.

A round sent again (a resumed run re-sends a round whose update was sent before) keeps every
copy: ``run-ID-round-N.npz``, then ``run-ID-round-N-2.npz``, ``-3`` …; none is overwritten.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from common.model.release import weights_bytes

SENT_DIR = "sent"


def sent_path(ledger_root: Path, run_id: str, server_round: int, copy: int = 1) -> Path:
    """Where copy ``copy`` (1 = the first) of a round's update is kept."""
    again = f"-{copy}" if copy > 1 else ""
    return ledger_root / SENT_DIR / f"run-{run_id}-round-{server_round:05d}{again}.npz"


def keep_sent(ledger_root: Path, run_id: str, server_round: int,
              arrays: Mapping[str, np.ndarray]) -> Path:
    """Write one round's copy under the first free name (sent_path), never over an earlier
    copy: written whole to a temporary file, then linked to its name, which fails if the name
    is taken (so a reader sees all of a copy or none, and two writers never share one).
    Readable by the partner only."""
    first = sent_path(ledger_root, run_id, server_round)
    first.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=first.parent, prefix=f".{first.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(weights_bytes(arrays))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        copy = 1
        while True:
            path = sent_path(ledger_root, run_id, server_round, copy)
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                copy += 1
    finally:
        Path(tmp).unlink(missing_ok=True)


def sent_copies(ledger_root: Path, run_id: str, server_round: int) -> list[Path]:
    """Every kept copy of a round's update, in the order they were sent."""
    copies, copy = [], 1
    while (path := sent_path(ledger_root, run_id, server_round, copy)).exists():
        copies.append(path)
        copy += 1
    return copies


def read_sent(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as kept:
        return {name: kept[name] for name in kept.files}
