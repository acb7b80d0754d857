"""What an answer computed on a partner's rows costs it, paid in its ledger *before* the answer
is computed (common.evaluation.oracle): an exact answer (evaluation counts, monitoring counts) is
counted against its ``max-evaluations``; a noisy one (``evaluation = dp``) is a release whose ε its
ledger composes with DP-SGD's, within ``max-epsilon``. A refusal records nothing. No flwr here.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import PrivacyError
from common.evaluation.oracle import claim_exact_answer, evaluation_release, noisy_counts
from common.privacy.ledger import spend
from common.tasks import get_task

logger = logging.getLogger(__name__)


def pay_for_evaluation(config: RunConfig, partner: PartnerSettings, run_id: str,
                       model_round: int) -> float | None:
    """Record the evaluation of round ``model_round``'s model in the partner's ledger. Returns
    the noise multiplier z under ``evaluation = dp`` (its release recorded within the budget),
    None for an exact answer (counted against ``max-evaluations``). PrivacyError, nothing
    recorded, when the budget is spent or the counts' sensitivity is unbounded."""
    path, source = partner.ledger_path(config), partner.data_source(config)
    if partner.evaluation != "dp":
        given = claim_exact_answer(path, source, run_id, model_round, "evaluation",
                                   partner.max_evaluations)
        logger.info("%s: exact evaluation %d of at most %d on this data source", partner.name,
                    given, partner.max_evaluations)
        return None
    if get_task(config.task).count_sensitivity is None:
        raise PrivacyError(f"{partner.name} answers evaluations with noise (evaluation = dp), "
                           f"but one example can move task {config.task!r}'s counts without "
                           "bound; nothing was recorded. Use evaluation = counts or off")
    if partner.person_key(config):
        raise PrivacyError(f"{partner.name} answers evaluations with noise (evaluation = dp), "
                           "but with a person column one person's rows move the counts "
                           "without bound; nothing was recorded. Use evaluation = counts or off")
    release = evaluation_release(run_id, model_round, partner.evaluation_noise)
    ledger, _ = spend(path, source, release, partner.delta or config.delta, partner.max_epsilon,
                      legacy=partner.legacy_ledgers(config))
    logger.info("%s: noisy evaluation of round %d (z = %g); ε now %.4f", partner.name,
                model_round, partner.evaluation_noise,
                ledger.epsilon(partner.delta or config.delta))
    return partner.evaluation_noise


def pay_for_monitoring(config: RunConfig, partner: PartnerSettings, run_id: str) -> None:
    """Count a monitoring answer (exact counts) against ``max-evaluations``."""
    claim_exact_answer(partner.ledger_path(config), partner.data_source(config), run_id, 0,
                       "monitoring", partner.max_evaluations)


def noisy_evaluation(config: RunConfig, metrics: Mapping[str, float],
                     noise_multiplier: float) -> dict[str, float]:
    """The DP answer of an evaluation (common.evaluation.oracle.noisy_counts), its noise from the
    OS."""
    sensitivity = get_task(config.task).count_sensitivity
    assert sensitivity is not None  # pay_for_evaluation refused it otherwise
    return noisy_counts(metrics, sensitivity, noise_multiplier, np.random.default_rng())
