"""The evaluation oracle's budget: what an answer computed on a partner's private rows costs.

An *exact* answer (held-out evaluation counts with their per-group counts, a monitoring answer)
is not DP: a coordinator that picks the weights can read something of the rows in every one. So
each is one entry (``answers``) in the partner's ledger for that data source, and a partner gives
at most ``max-evaluations`` of them over all runs on it (``DEFAULT_MAX_EVALUATIONS`` unless its
policy says otherwise); the next is refused, and a refusal records nothing.

``evaluation = dp`` answers with noisy counts instead: Gaussian noise of std z·Δ on the held-out
size and every per-class count, Δ the L2 sensitivity of those counts to one example
(``Task.count_sensitivity``; √3 for a text label: n, and tp of the class or fp and fn of two).
That is one Gaussian mechanism with noise multiplier z, which Opacus' RDP accountant composes as
one step at sampling rate 1: it is recorded in the same ledger as a release (σ = z, q = 1,
steps = 1, kind ``evaluation``), so its ε adds to DP-SGD's and counts against ``max-epsilon``.
Adding RDP over-counts here (held-out rows are never trained on), never under-counts.
Accuracy and macro-F1 are computed from the noisy counts (post-processing); no loss and no
per-group counts leave (which groups exist is itself a function of the rows). No flwr here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from common import protocol as P
from common.errors import PrivacyError
from common.evaluation.metrics import split_count_key
from common.privacy.ledger import PrivacyLedger, Release, ledger_lock
from common.infra.storage import write_sealed_json

DEFAULT_MAX_EVALUATIONS = 100  # exact answers per data source, over all runs, unless set
DEFAULT_EVALUATION_NOISE = 10.0  # z of evaluation = dp: ε ≈ 0.38 per answer at δ = 1e-5
ANSWER_KINDS = ("evaluation", "monitoring")
EVALUATION_RELEASE = "evaluation"  # Release.kind of a noisy evaluation


@dataclass(frozen=True)
class ExactAnswer:
    """One exact answer a partner gave on its rows (what its ledger keeps in ``answers``)."""

    run_id: str
    round: int  # the round whose model it scored (0: a monitoring request)
    what: str  # ANSWER_KINDS
    time: str = ""


def exact_answers(ledger: PrivacyLedger) -> list[ExactAnswer]:
    return [ExactAnswer(**a) for a in ledger.answers]


def claim_exact_answer(path: str | Path, source: str, run_id: str, model_round: int, what: str,
                       max_answers: int) -> int:
    """Under the ledger's lock: refuse (PrivacyError, nothing recorded) when the ledger already
    holds ``max_answers`` exact answers; else record this one *before* it is computed (a crash
    after this over-counts, never under-counts). Returns how many the ledger now holds."""
    if what not in ANSWER_KINDS:
        raise ValueError(f"exact answer kind {what!r}: pick one of {list(ANSWER_KINDS)}")
    with ledger_lock(path):
        ledger = PrivacyLedger.open(path, source)
        given = len(ledger.answers)
        if given >= max_answers:
            raise PrivacyError(
                f"{what} refused: {given} exact answers were already given on this data source "
                f"over all runs, its max-evaluations is {max_answers}; nothing was computed or "
                "recorded. The partner can answer with noise (evaluation = dp, counted in ε) "
                "or raise max-evaluations")
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        ledger.answers.append(asdict(ExactAnswer(run_id, model_round, what, now)))
        write_sealed_json(ledger.path, ledger.to_body(), mode=0o600)
    return given + 1


def evaluation_release(run_id: str, model_round: int, noise_multiplier: float,
                       examples: int = 0) -> Release:
    """A noisy evaluation as the ledger records it: one Gaussian mechanism (q = 1, one step)."""
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise PrivacyError(f"evaluation noise {noise_multiplier!r} must be a finite number > 0")
    return Release(run_id, model_round, float(noise_multiplier), 1.0, 1, examples=examples,
                   kind=EVALUATION_RELEASE)


def noisy_counts(metrics: Mapping[str, float], sensitivity: float, noise_multiplier: float,
                 rng: np.random.Generator) -> dict[str, float]:
    """The DP answer of an evaluation: num-examples and every ``tp/fp/fn`` count plus
    N(0, (z·Δ)²), floored at 0, and accuracy and macro-F1 computed from them. Every other key
    (the loss, per-group counts) is dropped."""
    std = noise_multiplier * sensitivity
    keys = [P.NUM_EXAMPLES] + sorted(k for k in metrics if split_count_key(k))
    noisy = {k: max(0.0, float(metrics[k]) + float(rng.normal(0.0, std))) for k in keys}
    per_class: dict[str, dict[str, float]] = {}
    for key, value in noisy.items():
        parsed = split_count_key(key)
        if parsed:
            per_class.setdefault(parsed[1], {})[parsed[0]] = value
    tp = sum(c.get(P.TRUE_POSITIVES, 0.0) for c in per_class.values())
    f1s = [2 * c.get(P.TRUE_POSITIVES, 0.0) / d for c in per_class.values()
           if (d := 2 * c.get(P.TRUE_POSITIVES, 0.0) + c.get(P.FALSE_POSITIVES, 0.0)
               + c.get(P.FALSE_NEGATIVES, 0.0)) > 0]
    n = noisy[P.NUM_EXAMPLES]
    return {**noisy, P.ACCURACY: min(1.0, tp / n) if n > 0 else math.nan,
            P.MACRO_F1: float(np.mean(f1s)) if f1s else math.nan}
