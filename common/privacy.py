"""Sample-level DP accounting for one partner: σ calibration and a persistent privacy ledger.

The ledger is the partner's own record of every DP-SGD release from its data, as Opacus RDP
accountant history ``(σ, q, steps)`` per round. ε is always recomputed from that history with
Opacus' accountant, so it is cumulative across rounds, runs and process restarts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from common.errors import BudgetExceededError, CheckpointError, PrivacyError
from common.storage import read_sealed_json, write_sealed_json

LEDGER_VERSION = 1


@dataclass(frozen=True)
class Release:
    """One round of DP-SGD at a partner: what the accountant needs, plus where it came from."""

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε of a sequence of (σ, q, steps) compositions, by Opacus' RDP accountant."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta))


def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The σ that spends ``epsilon`` over ``steps`` DP-SGD steps at rate ``sample_rate``."""
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant="rdp",
                                      epsilon_tolerance=0.005))


def poisson_schedule(num_examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(q, steps per round) exactly as Opacus sets them for this data size.

    DPDataLoader uses q = 1 / len(data loader), and its sampler runs int(1 / q) steps per epoch,
    which is one fewer than the batch count for some sizes (e.g. 93 batches -> 92 steps).
    """
    sample_rate = 1.0 / math.ceil(num_examples / batch_size)
    return sample_rate, int(1 / sample_rate) * local_epochs


class PrivacyLedger:
    """The on-disk record of every release from one data set, written atomically."""

    def __init__(self, path: str | Path, data_fingerprint: str,
                 releases: Sequence[Release] = ()) -> None:
        self.path = Path(path)
        self.data_fingerprint = data_fingerprint
        self.releases: list[Release] = list(releases)

    @classmethod
    def open(cls, path: str | Path, data_fingerprint: str) -> PrivacyLedger:
        """Load the ledger, or start an empty one if the file does not exist yet.

        A damaged ledger is an error, never a reset to zero: that would erase spent budget.
        """
        path = Path(path)
        if not path.exists():
            return cls(path, data_fingerprint)
        body = read_sealed_json(path)
        if body.get("version") != LEDGER_VERSION:
            raise CheckpointError(f"{path}: ledger version {body.get('version')!r} is not "
                                  f"{LEDGER_VERSION}")
        if body["data_fingerprint"] != data_fingerprint:
            raise PrivacyError(f"{path} records releases of other data "
                               f"({body['data_fingerprint'][:12]}…, this data is "
                               f"{data_fingerprint[:12]}…); give each data set its own ledger")
        return cls(path, data_fingerprint, [Release(**r) for r in body["releases"]])

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, delta)

    def check_budget(self, release: Release, delta: float, max_epsilon: float) -> float:
        """ε after ``release``; BudgetExceededError if that passes ``max_epsilon``."""
        after = epsilon_of(self.history + [(release.noise_multiplier, release.sample_rate,
                                            release.steps)], delta)
        if after > max_epsilon:
            raise BudgetExceededError(
                f"round {release.round} would bring ε to {after:.3f} > this partner's budget "
                f"{max_epsilon:g} (spent so far: {self.epsilon(delta):.3f}); the round is refused "
                "and nothing was trained")
        return after

    def record(self, release: Release) -> None:
        """Append a release and persist it before anything trained on it leaves the partner.

        Every training counts, including a round re-sent after a coordinator restart.
        """
        self.releases.append(release)
        write_sealed_json(self.path, self.to_body(), mode=0o600)

    def to_body(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "data_fingerprint": self.data_fingerprint,
                "releases": [asdict(r) for r in self.releases]}
