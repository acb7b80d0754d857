"""Noise multipliers calibrated before, kept on disk so a fresh process does not repeat the search.

Opacus' ``get_noise_multiplier`` bisects σ with about 15 evaluations of its RDP accountant, each
0.2-0.5 s of pure Python at the fractional orders: 2-7 s of CPU per partner. Flower starts a
fresh process per Message in deployment, and a simulated partner may land on another Ray actor
each round, so an in-process cache alone pays this again and again.

An entry maps public quantities, (ε, δ, q, steps, tolerance, the Opacus version), to σ. It holds
nothing about any example. The file is an optimisation only and is never trusted:
``common.privacy.ledger.calibrate_noise`` recomputes ε for a kept σ with Opacus' accountant and uses
it only if it meets the same bound a fresh search guarantees. The folder is
``CONSORTIUM_CACHE_DIR``, else ``$XDG_CACHE_HOME/consortium``, else ``~/.cache/consortium``. A
folder that cannot be written is logged once and the search runs every time.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version
from pathlib import Path

from common.infra.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

FILE = "noise-calibrations.json"
MAX_ENTRIES = 4096  # the oldest entries go first beyond this
_warned: set[str] = set()


def cache_dir() -> Path:
    explicit = os.environ.get("CONSORTIUM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "consortium"


def key(epsilon: float, delta: float, sample_rate: float, steps: int, tolerance: float) -> str:
    return (f"opacus {version('opacus')} | eps {epsilon!r} | delta {delta!r} | q {sample_rate!r} | "
            f"steps {steps} | tol {tolerance!r}")


def _read(path: Path) -> dict[str, float]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the unreadable noise-calibration cache %s (%s)", path, exc)
        return {}
    if not isinstance(entries, dict):
        logger.warning("ignoring the noise-calibration cache %s: not a JSON object", path)
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, float)}


def lookup(entry: str) -> float | None:
    """The σ kept for ``entry``, or None."""
    return _read(cache_dir() / FILE).get(entry)


def store(entry: str, sigma: float) -> None:
    """Keep ``entry`` → σ (atomically, 0600 in a 0700 folder); a concurrent writer may drop an
    entry, which only costs a search later."""
    path = cache_dir() / FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = _read(path)
        entries.pop(entry, None)
        entries[entry] = sigma
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        atomic_write_bytes(path, json.dumps(kept, indent=0).encode(), mode=0o600)
    except OSError as exc:
        if str(path) not in _warned:
            _warned.add(str(path))
            logger.warning("cannot keep noise calibrations in %s (%s): each fresh process "
                           "searches σ again (2-7 s); set CONSORTIUM_CACHE_DIR to a writable "
                           "folder", path, exc)
