"""Aggregation maths as pure numpy: example-weighted FedAvg, folded in one update at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from common import protocol as P
from common.wire.compression import from_wire
from common.errors import UpdateError
from common.model.factory import check_update_matches
from common.wire.updates import update_norm
from common.wire.weights import capped_weight, check_claim, check_weight
from server.central_dp import CentralDP, clip_exactly, coordinator_rng


class WeightedMean:
    """Running example-weighted mean; holds one model-sized sum, whatever the partner count."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.total_weight = 0.0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        check_weight(weight)
        if not self._sum:
            self._sum = {k: np.zeros(a.shape, np.float64) for k, a in arrays.items()}
            self._dtypes = {k: a.dtype for k, a in arrays.items()}
        for key, value in arrays.items():
            self._sum[key] += weight * value.astype(np.float64)
        self.total_weight += weight

    def result(self) -> dict[str, np.ndarray]:
        if self.total_weight == 0:
            raise UpdateError("no update to average")
        return {k: (s / self.total_weight).astype(self._dtypes[k]) for k, s in self._sum.items()}


def fedavg(updates: list[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Mean of the updates weighted by their example counts."""
    mean = WeightedMean()
    for arrays, weight in updates:
        mean.add(arrays, weight)
    return mean.result()


def validate_update(update: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
                    clip_norm: float) -> None:
    """Reject an update that does not fit the shared model, is not finite, or exceeds the clip."""
    check_update_matches(update, {k: (a.shape, a.dtype) for k, a in current.items()})
    for name, array in update.items():
        if not np.all(np.isfinite(array)):
            raise UpdateError(f"parameter {name!r} holds NaN or Inf")
    if clip_norm > 0:
        norm = update_norm(current, update)
        if norm > clip_norm * (1 + 1e-4):
            raise UpdateError(f"update norm {norm:.4f} exceeds the agreed update-clip-norm "
                              f"{clip_norm:g}")


@dataclass
class RoundFold:
    """One round's aggregation at the coordinator: each reply is validated, then folded in or
    rejected with its reason; one bad partner never stops the round. Each update's weight is
    its claimed example count, checked against its DP sampling rate and capped at ``max_weight``
    (common.wire.weights), in every mode."""

    current: Mapping[str, np.ndarray]  # the shared weights sent this round
    clip_norm: float
    robust: str = ""  # a robust rule (median, trimmed-mean:B, krum:F); empty = streaming FedAvg
    # how partners encode updates (common.wire.compression); decoded first
    compression: str = "none"
    central: CentralDP | None = None  # partner-level DP: exact re-clip, noise at result()
    rng: np.random.Generator | None = None  # the central noise's source (coordinator_rng())
    noise_std: float | None = None  # the central σ result() added, for the metrics line
    max_weight: float = math.inf  # max-partner-weight: the most one update counts for
    dp: bool = False  # partners report their sampling rate; num-examples is checked against it
    batch_size: int | None = None  # the run's fixed batch size (None: partners choose it)
    mean: WeightedMean = field(default_factory=WeightedMean)
    held: list[tuple[Mapping[str, np.ndarray], float]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    losses: list[tuple[float, float]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.central is not None and self.robust:
            raise UpdateError(f"central DP is calibrated for the weighted mean, not {self.robust}")

    def offer(self, name: str, update: Mapping[str, np.ndarray],
              metrics: Mapping[str, float]) -> bool:
        try:
            update = from_wire(update, self.current, self.compression)
            validate_update(update, self.current, self.clip_norm)
            weight = self.weight_of(metrics)
            if self.robust:  # robust rules need every update; nothing to fold
                self.held.append((update, weight))
            else:
                if self.central is not None:
                    update = clip_exactly(self.current, update, self.central.clip_norm)
                self.mean.add(update, weight)
        except (UpdateError, KeyError, TypeError, ValueError) as exc:
            self.failures.append({"partner": name, "reason": f"update rejected: {exc}"})
            return False
        self.accepted.append(name)
        self.losses.append((float(metrics.get(P.TRAIN_LOSS, math.nan)), weight))
        return True

    def weight_of(self, metrics: Mapping[str, float]) -> float:
        """The update's weight: its claimed examples, checked, then capped."""
        # under DP the partner's q must agree with its claim; capped_weight checks the rest
        examples = (check_claim(metrics, self.batch_size) if self.dp
                    else float(metrics[P.NUM_EXAMPLES]))
        return capped_weight(examples, self.max_weight)

    def result(self) -> dict[str, np.ndarray]:
        if self.robust:
            from server.robust import robust_aggregate

            return robust_aggregate(self.held, self.robust)
        if self.central is not None:  # σ from the updates actually averaged (server.central_dp)
            dtypes = {k: np.asarray(a).dtype for k, a in self.current.items()}
            noised, self.noise_std = self.central.release(
                self.mean.result(), [n for _, n in self.losses], dtypes,
                self.rng if self.rng is not None else coordinator_rng())
            return noised
        return self.mean.result()

    def refuse(self, name: str, reason: str) -> None:
        self.failures.append({"partner": name, "reason": f"refused: {reason}"})

    def train_loss(self) -> float:
        total = sum(n for _, n in self.losses)
        return sum(loss * n for loss, n in self.losses) / total if total else math.nan
