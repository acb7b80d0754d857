"""A partner's own copy of what left it (node config ``keep-sent``): each round's update, written
to LEDGER-DIR/sent/ before the reply goes, so its privacy officer can inspect exactly what was
sent and an auditor can check an aggregate against it. Off by default: the copies are as large as
the updates. No flwr here.

- a plain round: the arrays of the reply, as sent (``to_wire``: weights or compressed deltas);
- secure aggregation: the flat update Δ and its weight w that the masked vector carries
  (quantized, masked), i.e. what the coordinator learns in the sum, w·Δ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from common.release import weights_bytes
from common.storage import atomic_write_bytes

SENT_DIR = "sent"


def sent_path(ledger_root: Path, run_id: str, server_round: int) -> Path:
    return ledger_root / SENT_DIR / f"run-{run_id}-round-{server_round:05d}.npz"


def keep_sent(ledger_root: Path, run_id: str, server_round: int,
              arrays: Mapping[str, np.ndarray]) -> Path:
    """Write one round's copy atomically (a reader sees all of it or none), readable by the
    partner only."""
    path = sent_path(ledger_root, run_id, server_round)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, weights_bytes(arrays), mode=0o600)
    return path


def read_sent(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as kept:
        return {name: kept[name] for name in kept.files}
