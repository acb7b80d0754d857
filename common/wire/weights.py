"""How much one partner's update counts in the mean: its claimed example count, checked and capped.

A partner's weight is the number of training examples it says it has (``num-examples``). Nothing
stops a partner from claiming 10^12; uncapped, the example-weighted mean would then be that
partner's update. Two defences, used by every aggregation mode (server.aggregation,
server.robust, secure aggregation at both ends):

- ``check_claimed_examples``: under DP the partner also reports the sampling rate q of its round,
  and Opacus sets q = 1 / ceil(n / B) from the same n. With a fixed batch size B that pins n to
  ((1/q − 1)·B, B/q]; with a batch size chosen from n (``batch-size = auto``) only n ≥ 1/q is
  sure. A claim outside is an inconsistent (lying or broken) partner: its update is rejected.
  A partner that lies about n and q consistently passes; the cap below bounds what it gains.
  A per-person partner (``per-person`` = 1) samples persons, so q pins its ``persons``, and its
  rows (``num-examples``, the weight) must be at least that many: ``check_claim``.
- ``capped_weight``: every weight is min(n, ``max-partner-weight``), a run-config value that
  each partner also reads itself (under secure aggregation it is the normaliser of the masked
  weight, so nobody can send partners different ones). One partner then counts at most as
  ``max-partner-weight`` examples, however many it claims.

No flwr here.
"""

from __future__ import annotations

import math
from typing import Mapping

from common import protocol as P
from common.errors import UpdateError


def check_weight(weight: float) -> None:
    if not weight > 0 or not math.isfinite(weight):
        raise UpdateError(f"weight {weight!r} must be a positive number of examples")


def capped_weight(examples: float, cap: float) -> float:
    """min(examples, cap): the weight a partner's update gets (cap = ``max-partner-weight``;
    math.inf = no cap)."""
    check_weight(examples)
    if not cap > 0:
        raise UpdateError(f"max-partner-weight {cap!r} must be a positive number of examples")
    return min(float(examples), float(cap))


def check_claimed_examples(examples: float, sample_rate: float, batch_size: int | None) -> None:
    """Reject ``num-examples`` that the partner's own DP sampling rate q contradicts.

    ``batch_size``: the run's fixed batch size B, or None when partners choose it from n; q = 0
    (no DP) checks nothing. Opacus' q = 1 / K with K = ceil(n / B) batches, so n ≥ K always and
    (K − 1)·B < n ≤ K·B for a fixed B.
    """
    check_weight(examples)
    if sample_rate == 0:
        return
    if not 0 < sample_rate <= 1 or not math.isfinite(sample_rate):
        raise UpdateError(f"sample-rate {sample_rate!r} is not in (0, 1]")
    batches = 1.0 / sample_rate
    if abs(batches - round(batches)) > 1e-6 * batches:
        raise UpdateError(f"sample-rate {sample_rate!r} is not 1 / (a whole number of batches), "
                          "as Opacus' Poisson sampling sets it")
    k = round(batches)
    low, high = float(k), math.inf
    if batch_size:
        low, high = max(low, (k - 1) * batch_size + 1), float(k * batch_size)
    if not low <= examples <= high:
        allowed = f"[{low:g}, {high:g}]" if batch_size else f"at least {low:g}"
        raise UpdateError(f"num-examples {examples:g} contradicts the partner's sample-rate "
                          f"1/{k} (batch-size {batch_size or 'chosen by the partner'}): it "
                          f"must be {allowed}; the claim is rejected with its update")


def check_claim(metrics: Mapping[str, float], batch_size: int | None) -> float:
    """The claimed examples of a DP reply, checked against its q (per example), or its persons
    against q and its examples against its persons (per person). Returns the examples."""
    examples = float(metrics[P.NUM_EXAMPLES])
    check_weight(examples)
    if not metrics.get(P.PER_PERSON):
        check_claimed_examples(examples, float(metrics[P.SAMPLE_RATE]), batch_size)
        return examples
    persons = float(metrics.get(P.PERSONS, 0.0))
    if not (persons >= 1 and persons == int(persons) and examples >= persons):
        raise UpdateError(f"persons {persons:g} with num-examples {examples:g}: a per-person "
                          "reply needs a whole number of persons, each with at least one row")
    try:
        check_claimed_examples(persons, float(metrics[P.SAMPLE_RATE]), batch_size)
    except UpdateError as exc:
        raise UpdateError(f"per person: {str(exc).replace('num-examples', 'persons')}") from None
    return examples


def fixed_batch_size(batch_size: object) -> int | None:
    """The run's batch size when every partner uses it as given; None when partners choose it
    (``batch-size = auto`` or any non-integer setting)."""
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
        return batch_size
    return None
