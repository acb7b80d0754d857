"""Sample-level DP accounting for one partner: σ calibration and a persistent privacy ledger.

The ledger is the partner's own record of every DP-SGD release from its data, as Opacus RDP
accountant history ``(σ, q, steps)`` per round. ε is always recomputed from that history with
Opacus' accountant, so it is cumulative across rounds, runs and process restarts.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from common.errors import BudgetExceededError, CheckpointError, PrivacyError
from common.infra.storage import read_sealed_json, write_sealed_json

logger = logging.getLogger(__name__)

LEDGER_VERSION = 2  # 1: one ledger per training split (see _legacy_releases)


@dataclass(frozen=True)
class Release:
    """One round of DP-SGD at a partner: what the accountant needs, plus where it came from."""

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    examples: int = 0  # training-split size this round (a count; the data may grow)
    data_sha256: str = ""  # the training split's fingerprint, so an auditor sees what changed
    # what ε protects: an example (row), or a person (common.training.person_dp)
    unit: str = "example"
    persons: int = 0  # per-person DP: the persons sampled from (q is their rate)
    # or "evaluation": Gaussian noise on held-out counts (common.evaluation.oracle)
    kind: str = "dp-sgd"


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε of a sequence of (σ, q, steps) compositions, by Opacus' RDP accountant."""
    return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in history), float(delta))


# Opacus' RDP at its fractional orders costs 0.2-0.5 s per (σ, q) and a calibration ~15 of them;
# both are pure functions of their arguments, so a process computes each only once
@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Exactly ``RDPAccountant.get_privacy_spent``: the sum over the history of Opacus'
    ``compute_rdp(q, σ, steps)`` (= its one-step RDP × steps, the same floating-point product),
    then Opacus' RDP → (ε, δ) conversion, at the accountant's default orders."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    from opacus.accountants import RDPAccountant  # opacus costs ~1 s: imported when used
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum([_step_rdp(sigma, q) * steps for sigma, q, steps in history])
    return float(get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])


@functools.lru_cache(maxsize=1024)
def _step_rdp(sigma: float, sample_rate: float) -> np.ndarray:
    """Opacus' RDP of one sampled-Gaussian step at the accountant's default orders."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = np.asarray(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1,
                                 orders=RDPAccountant.DEFAULT_ALPHAS))
    rdp.flags.writeable = False
    return rdp


CALIBRATION_TOLERANCE = 0.005  # Opacus' bisection stops within this much ε below the target


@functools.lru_cache(maxsize=1024)
def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The σ that spends ``epsilon`` over ``steps`` DP-SGD steps at rate ``sample_rate``:
    Opacus' ``get_noise_multiplier``, or the σ it gave before (``common.privacy.sigma_cache``) once
    Opacus' accountant confirms it spends between ``epsilon`` − tolerance and ``epsilon``."""
    from common.privacy import sigma_cache

    entry = sigma_cache.key(epsilon, delta, sample_rate, steps, CALIBRATION_TOLERANCE)
    kept = sigma_cache.lookup(entry)
    if kept is not None and kept > 0:
        spent = epsilon_of([(kept, sample_rate, steps)], delta)
        if epsilon - CALIBRATION_TOLERANCE <= spent <= epsilon:
            return kept
        logger.warning("the kept σ %r for %s spends ε = %.4f, outside [%.4f, %g]: calibrating "
                       "again", kept, entry, spent, epsilon - CALIBRATION_TOLERANCE, epsilon)
    from opacus.accountants.utils import get_noise_multiplier

    sigma = float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                       sample_rate=sample_rate, steps=steps, accountant="rdp",
                                       epsilon_tolerance=CALIBRATION_TOLERANCE))
    sigma_cache.store(entry, sigma)
    return sigma


def poisson_schedule(num_examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(q, steps per round) exactly as Opacus sets them for this data size.

    DPDataLoader uses q = 1 / len(data loader), and its sampler runs int(1 / q) steps per epoch,
    which is one fewer than the batch count for some sizes (e.g. 93 batches -> 92 steps).
    """
    sample_rate = 1.0 / math.ceil(num_examples / batch_size)
    return sample_rate, int(1 / sample_rate) * local_epochs


class PrivacyLedger:
    """The on-disk record of every release from one partner's data source, written atomically.

    A ledger belongs to a partner and a *data source* (the partner's ``data-id``, or its data
    file), never to one split or version of the data: every run, seed, held-out fraction, label
    order and appended row composes into the same ledger, so the coordinator cannot open a fresh
    one by changing run config. A new ledger starts only when the partner names a new data-id.
    """

    def __init__(self, path: str | Path, source: str, releases: Sequence[Release] = (),
                 answers: Sequence[dict[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.source = source
        self.releases: list[Release] = list(releases)
        # exact (non-DP) answers computed on this data source's rows: common.evaluation.oracle
        self.answers: list[dict[str, Any]] = list(answers)

    @classmethod
    def open(cls, path: str | Path, source: str) -> PrivacyLedger:
        """Load the ledger, or start an empty one if the file does not exist yet.

        A damaged ledger is an error, never a reset to zero: that would erase spent budget.
        """
        path = Path(path)
        if not path.exists():
            return cls(path, source)
        body = read_sealed_json(path)
        if body.get("version") != LEDGER_VERSION:
            raise CheckpointError(f"{path}: ledger version {body.get('version')!r} is not "
                                  f"{LEDGER_VERSION}")
        if body["source"] != source:
            raise PrivacyError(f"{path} records releases of another data source "
                               f"({body['source']!r}, this one is {source!r}); give each data "
                               "source its own ledger")
        return cls(path, source, [Release(**r) for r in body["releases"]],
                   body.get("answers", []))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, delta)

    @property
    def unit(self) -> str:
        """What this ledger's ε protects (a ledger never mixes units: check_budget)."""
        return self.releases[-1].unit if self.releases else "example"

    def check_budget(self, release: Release, delta: float, max_epsilon: float,
                     rest_of_run: Sequence[tuple[float, float, int]] = ()) -> float:
        """ε after ``release``; BudgetExceededError if that, or the rest of the run's plan
        after it (``rest_of_run``), passes ``max_epsilon``. Returns ε after ``release``."""
        units = {r.unit for r in self.releases} - {release.unit}
        if units:
            raise PrivacyError(
                f"{self.path} holds {units.pop()}-level releases; a {release.unit}-level round "
                "cannot be added to them (ε per person and per example do not compose by "
                "adding). Give per-person DP its own ledger: a new data-id. Nothing was trained")
        step = (release.noise_multiplier, release.sample_rate, release.steps)
        after = epsilon_of(self.history + [step], delta)
        plan = [step, *rest_of_run]
        if after > max_epsilon:
            raise BudgetExceededError(
                f"round {release.round} would bring ε to {after:.3f} > this partner's budget "
                f"{max_epsilon:g} (spent so far: {self.epsilon(delta):.3f}); the round is refused "
                f"and nothing was trained. {fits_note(self.history, plan, delta, max_epsilon)}")
        planned = epsilon_of(self.history + plan, delta) if rest_of_run else after
        if planned > max_epsilon:
            raise BudgetExceededError(
                f"the run's plan from round {release.round} on ({len(plan)} more "
                f"round(s)) would bring ε to {planned:.3f} > this partner's budget "
                f"{max_epsilon:g} (spent so far over all runs on this data: "
                f"{self.epsilon(delta):.3f}); refused now rather than part-way, and nothing was "
                f"trained. {fits_note(self.history, plan, delta, max_epsilon)}, or raise "
                "max-epsilon")
        return after

    def record(self, release: Release) -> None:
        """Append a release and persist it before anything trained on it leaves the partner.

        Every training counts, including a round re-sent after a coordinator restart.
        """
        self.releases.append(release)
        write_sealed_json(self.path, self.to_body(), mode=0o600)

    def to_body(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "source": self.source,
                "releases": [asdict(r) for r in self.releases],
                **({"answers": self.answers} if self.answers else {})}


@contextmanager
def ledger_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on a ledger for the whole read - check - record sequence, so two
    processes spending from one ledger cannot both pass the budget check on the same state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def what_fits(history: Sequence[tuple[float, float, int]],
              plan: Sequence[tuple[float, float, int]], delta: float,
              max_epsilon: float) -> tuple[int, float]:
    """What of a refused plan still fits a partner's budget after ``history``: how many of the
    plan's rounds, as planned, and the largest ε a run of the same rounds could target (its
    rounds' σ raised together until the composition stays within ``max_epsilon``; ε of that run
    alone, as the run's ``epsilon`` means it). (0, 0.0) when nothing is left."""
    rounds = 0
    while rounds < len(plan) and epsilon_of([*history, *plan[:rounds + 1]], delta) <= max_epsilon:
        rounds += 1
    if epsilon_of(history, delta) >= max_epsilon or not plan:
        return rounds, 0.0

    def run(sigma: float) -> list[tuple[float, float, int]]:
        return [(sigma, q, steps) for _, q, steps in plan]

    low = max(s for s, _, _ in plan)  # the plan's own σ does not fit
    high = low * 2
    while epsilon_of([*history, *run(high)], delta) > max_epsilon:  # σ large enough to fit
        low, high = high, high * 2
        if high > 1e4:
            return rounds, 0.0
    for _ in range(12):  # σ within 0.02 % of the smallest that fits: ε slightly under, never over
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon_of([*history, *run(middle)], delta) <= max_epsilon \
            else (middle, high)
    return rounds, math.floor(epsilon_of(run(high), delta) * 1000) / 1000


def fits_note(history: Sequence[tuple[float, float, int]], plan: Sequence[tuple[float, float, int]],
              delta: float, max_epsilon: float) -> str:
    """A refusal's advice: the rounds and the run ε that still fit (``what_fits``)."""
    rounds, epsilon = what_fits(history, plan, delta, max_epsilon)
    if epsilon <= 0:
        return "Nothing is left of this partner's budget for this data"
    return (f"What still fits: {rounds} of these {len(plan)} round(s) as planned, or all of them "
            f"at epsilon <= {epsilon:.3f} for the run")


def spend(path: str | Path, source: str, release: Release, delta: float, max_epsilon: float,
          rest_of_run: Sequence[tuple[float, float, int]] = (),
          legacy: Sequence[Path] = ()) -> tuple[PrivacyLedger, list[tuple[float, float, int]]]:
    """Under the ledger's lock: re-read it, check the budget, record ``release``.

    The release is recorded *before* training: a crash or refusal after this point over-counts,
    never under-counts. Returns the ledger and its history before this release (what Opacus'
    accountant starts from). ``legacy``: version-1 ledger files of this partner (one per
    training split, before ledgers were kept per data source), folded in on first use.
    """
    with ledger_lock(path):
        ledger = PrivacyLedger.open(path, source)
        if not ledger.releases and legacy:
            ledger.releases.extend(_legacy_releases(legacy))
        prior = ledger.history
        ledger.check_budget(release, delta, max_epsilon, rest_of_run)
        ledger.record(release)
    return ledger, prior


def _legacy_releases(paths: Sequence[Path]) -> list[Release]:
    """Releases of version-1 ledgers: composing them in can only over-count."""
    releases = []
    for path in sorted(paths):
        body = read_sealed_json(path)
        if body.get("version") == 1:
            releases.extend(Release(**r) for r in body["releases"])
    return releases
