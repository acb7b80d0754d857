"""Partner-level (central) DP: Gaussian noise added by the coordinator to the round's mean update,
sized to the aggregation actually performed.

The guarantee. Each partner clips its update Δ_i = new − old to L2 norm ≤ C (``update-clip-norm``;
the coordinator rejects a longer one and clips every accepted one again, exactly, in float64).
The round's release is the example-weighted mean

    m = Σ_i w_i Δ_i / W,   W = Σ_i w_i,   over the partners whose updates are averaged,

plus N(0, σ² I). Zeroing out one partner's update (the partner's data then has no influence on
the round; the weights w_i and who took part are sent in clear and treated as public) moves
Σ w_i Δ_i by at most w_i C, so m by at most

    s = max_i w_i · C / W                          (the sensitivity of this aggregation),

and σ = z · s makes the round one Gaussian mechanism with noise multiplier z (``central-noise-
multiplier``) in Opacus' RDP accountant. Replacing one partner's update by another moves m by up to
2s: under replace-one adjacency the same noise gives the ε of noise multiplier z / 2.
It protects partners from everyone who sees the shared model (other partners, its users), not
from the coordinator, which sees each update before adding the noise.

How this differs from Flower. ``DifferentialPrivacyServerSideFixedClipping`` (and ``…ClientSide…``)
in ``flwr.serverapp.strategy.dp_fixed_clipping`` add noise of std ``compute_stdv(z, C,
num_sampled_clients)`` = z · C / n, with n the number of clients *sampled*, fixed at construction:
that is the sensitivity of an *unweighted* mean over *all n* sampled clients. With example-weighted
FedAvg a large client moves the mean by w_max C / W > C / n, and when only k < n replies arrive
the mean over k moves by up to C / k; Flower then still adds z C / n (it only warns; its strict
accounting path instead refuses unequal weights or a reply count ≠ n). Both cases under-noise.
Here σ is recomputed every round from the weights of the updates actually averaged. A partner
that over-states its example count only raises σ. The price of weighting: σ / (C z) = w_max / W,
so one dominant partner (w_max ≈ W) gets little help from the others' noise-averaging.

Fewer replies than expected: **recalibrated**. σ above is computed after the round's replies are in,
from exactly the updates being averaged, so a round with k < n replies gets σ = z C w_max / W_k
(larger), and every round is the same Gaussian mechanism with noise multiplier z: its ε does not
depend on k. A round with fewer than ``min-partners`` usable updates is refused
(``CentralDP.release`` raises ``PrivacyError``; the coordinator stops before it would release).

Sampling rate. Every connected partner is asked every round, so each round is accounted with
sampling rate q = 1 (no amplification: a partner missing a round is not a secret random sample).

The noise is drawn from a ``np.random.Generator`` seeded from ``os.urandom`` at the coordinator:
never from the run seed, which the partners know (they could subtract replayable noise).

Across releases. A run that continues a release (``init-from``) starts from weights that already
hold every earlier round, so each partner's partner-level history starts from the one that
release recorded (``inherited_partner_level``): ε is cumulative over the release and its
ancestors. A partner whose update entered an ancestor without central DP has no partner-level
bound in any descendant (noise added later cannot bound what the weights already hold).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from common.config import RunConfig
from common.errors import PrivacyError, UpdateError
from common.privacy.ledger import epsilon_of

ALL_PARTNERS_ASKED = 1.0  # sampling rate of a round that asks every connected partner
# release.json / privacy report / checkpoint key: the partner-level histories of the partners of
# earlier releases that took no part in this run (they still hold for the weights it continues)
INHERITED = "partner_level_inherited"


def central_noise_std(noise_multiplier: float, clip_norm: float,
                      weights: Sequence[float]) -> float:
    """σ = z · C · max_i w_i / Σ_i w_i over the weights of the updates actually averaged."""
    if not weights:
        raise PrivacyError("central DP: no update to add noise to")
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise PrivacyError(f"central DP: weights {list(weights)} must be positive and finite")
    return float(noise_multiplier * clip_norm * max(weights) / math.fsum(weights))


def clip_exactly(current: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                 clip_norm: float) -> dict[str, np.ndarray]:
    """``current + Δ · min(1, C / ‖Δ‖)`` in float64, so the bound holds without float32 rounding
    (validation lets norms through up to C · (1 + 1e-4))."""
    delta = {k: np.asarray(update[k], np.float64) - np.asarray(current[k], np.float64)
             for k in current}
    norm = math.sqrt(math.fsum(float(np.sum(d * d)) for d in delta.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(current[k], np.float64) + d * scale for k, d in delta.items()}


def add_gaussian_noise(arrays: Mapping[str, np.ndarray], std: float, rng: np.random.Generator,
                       dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """``arrays`` + N(0, std²) on every coordinate (drawn in float64), cast to ``dtypes``."""
    if not (std >= 0 and math.isfinite(std)):
        raise PrivacyError(f"central DP: noise std {std!r} is not a finite non-negative number")
    return {k: (np.asarray(a, np.float64) + rng.normal(0.0, std, size=np.shape(a)))
            .astype(dtypes[k]) for k, a in arrays.items()}


def coordinator_rng() -> np.random.Generator:
    """A generator seeded from the operating system's entropy, 256 bits."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "big")))


def partner_level_epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """ε of a partner's central releases [(z, q, 1) per round its update was averaged in],
    by Opacus' RDP accountant (common.privacy.ledger.epsilon_of)."""
    return epsilon_of([(float(z), float(q), int(n)) for z, q, n in history], delta)


@dataclass(frozen=True)
class CentralDP:
    """The coordinator's partner-level DP settings for a run; ``release`` noises one round."""

    noise_multiplier: float  # z
    clip_norm: float  # C, the partner-level sensitivity bound (update-clip-norm)
    min_partners: int
    delta: float
    sample_rate: float = ALL_PARTNERS_ASKED

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyError(f"central DP needs a noise multiplier > 0, got "
                               f"{self.noise_multiplier!r}")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise PrivacyError(f"central DP needs an update clip norm C > 0, got "
                               f"{self.clip_norm!r}: without a bound there is no sensitivity")
        if not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"central DP sampling rate {self.sample_rate!r} is not in (0, 1]")

    @classmethod
    def from_config(cls, config: RunConfig) -> CentralDP | None:
        if not getattr(config, "central_dp", False):
            return None
        return cls(config.central_noise_multiplier, config.update_clip_norm,
                   config.min_partners, config.delta)

    @property
    def round_release(self) -> tuple[float, float, int]:
        """One round, as the accountant sees it: (z, q, 1 step)."""
        return (self.noise_multiplier, self.sample_rate, 1)

    def noise_std(self, weights: Sequence[float]) -> float:
        """σ for averaging updates of these weights; refuses below ``min_partners``."""
        if len(weights) < self.min_partners:
            raise PrivacyError(f"central DP: {len(weights)} update(s) to average, min-partners "
                               f"is {self.min_partners}; the round is refused, nothing released")
        return central_noise_std(self.noise_multiplier, self.clip_norm, weights)

    def release(self, mean: Mapping[str, np.ndarray], weights: Sequence[float],
                dtypes: Mapping[str, np.dtype], rng: np.random.Generator,
                ) -> tuple[dict[str, np.ndarray], float]:
        """(mean + noise of σ = z C max w / Σ w, σ); ``mean`` must average exactly ``weights``."""
        if set(mean) != set(dtypes):
            raise UpdateError("central DP: the mean's parameters differ from the shared model's")
        std = self.noise_std(weights)
        return add_gaussian_noise(mean, std, rng, dtypes), std

    def epsilon(self, rounds: int) -> float:
        """Partner-level ε after ``rounds`` releases that included the partner."""
        return partner_level_epsilon([self.round_release] * rounds, self.delta)


def inherited_partner_level(record: Mapping[str, Any]) -> dict[str, list[list[float]] | None]:
    """Per partner of the release ``record`` (its release.json), the partner-level history a run
    continuing it starts from: the history it recorded (its ancestors' included); None (no bound)
    for a partner whose update entered it, or an ancestor, without central DP. A release written
    before histories were kept: one release at its run's z per round the partner trained (an
    over-count: a rejected update was not averaged)."""
    config = record.get("run_config") or {}
    z = float(config.get("central-noise-multiplier") or 0.0)
    out: dict[str, list[list[float]] | None] = {
        name: None if h is None else [[float(x[0]), float(x[1]), int(x[2])] for x in h]
        for name, h in (record.get(INHERITED) or {}).items()}
    for name, partner in (record.get("partners") or {}).items():
        trained = int(partner.get("rounds_trained") or 0)
        if partner.get("partner_level_unbounded") or (trained and not config.get("central-dp")):
            out[name] = None
        elif "partner_level_history" in partner:
            out[name] = [[float(h[0]), float(h[1]), int(h[2])]
                         for h in partner["partner_level_history"]]
        else:
            out[name] = [[z, ALL_PARTNERS_ASKED, 1]] * trained if trained else []
    return out


def parent_partner_level(config: RunConfig) -> dict[str, list[list[float]] | None]:
    """inherited_partner_level of the release ``init-from`` names; {} for a first release."""
    if not config.init_from:
        return {}
    from common.model.release import read_release

    return inherited_partner_level(read_release(config.init_from).record)


def absent_partner_level(inherited: Mapping[str, Any],
                         partners: Mapping[str, Any]) -> dict[str, Any]:
    """What a release must carry on for the partners of its ancestors that took no part in
    its own run (their partner-level history is unchanged, and still holds for its weights)."""
    return {name: h for name, h in sorted(inherited.items()) if name not in partners}


def _start_record(record: dict, before: list[list[float]] | None,
                  central: CentralDP | None) -> None:
    """A partner's partner-level fields the first time this run records it: what the release
    it continues held for it (``before``; None = unbounded, [] = nothing)."""
    record["partner_level_history"] = [list(h) for h in before or []]
    record["partner_level_epsilon"] = (partner_level_epsilon(before, central.delta)
                                       if before and central is not None else None)
    if before is None:
        record["partner_level_unbounded"] = True


def record_round(partners: dict[str, dict], averaged: Sequence[str], weights: Sequence[float],
                 central: CentralDP | None, noise_std: float | None,
                 inherited: Mapping[str, list[list[float]] | None] | None = None,
                 ) -> dict[str, Any]:
    """After a round's release: add it to the partner-level history of each partner whose update
    was averaged (``partners`` are the coordinator's per-partner records, checkpointed), and
    return the metrics-line entry. Without central DP each partner-level ε is ∞ (null).
    ``inherited``: the histories of the release this run continues (inherited_partner_level),
    where each partner's history starts."""
    for name in partners:
        if "partner_level_history" not in partners[name]:
            _start_record(partners[name], (inherited or {}).get(name, []), central)
    if central is None:
        return {}
    for name in averaged:
        record = partners[name]
        record["partner_level_history"] = [*record["partner_level_history"],
                                           list(central.round_release)]
        record["partner_level_epsilon"] = None if record.get("partner_level_unbounded") else \
            partner_level_epsilon(record["partner_level_history"], central.delta)
    return {"central_dp": {
        "noise_std": noise_std, "noise_multiplier": central.noise_multiplier,
        "clip_norm": central.clip_norm, "partners_averaged": len(averaged),
        "max_weight": max(weights), "total_weight": math.fsum(weights),
        "sample_rate": central.sample_rate,
        "max_partner_level_epsilon": max_partner_level_epsilon(partners),
        "partner_level_epsilon": {n: partners[n]["partner_level_epsilon"]
                                  for n in sorted(partners)}}}


def max_partner_level_epsilon(partners: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The largest partner-level ε of the run's partners; None (∞) when one has no bound."""
    if any(r.get("partner_level_unbounded") for r in partners.values()):
        return None
    return max((r["partner_level_epsilon"] for r in partners.values()
                if r.get("partner_level_epsilon") is not None), default=None)
