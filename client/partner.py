"""One partner's round, as typed calls: shared weights in, clipped DP update and metrics out.

The Flower ClientApp (client/app.py) only translates Messages to these calls; nothing here imports
flwr, so the same code serves simulation, deployment and tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import TensorDataset

from client.answers import noisy_evaluation, pay_for_evaluation
from client.policy import PartnerSettings
from client.received import Prepared, ReceivedModel
from client.pinning import AUDIT_LOG
from client.run_log import claim_evaluation, note_trained
from common import protocol as P
from client.round_plan import (batch_and_learning_rate, lr_schedule, memory_batch, round_plan,
                               trainable_view)
from common.wire.compression import to_wire
from common.config import RunConfig
from common.data.text import data_fingerprint
from common.training.feature_cache import CACHE_DIR, feature_cache
from common.model.device import free_cached, gpu_memory, resolve_device
from common.errors import PrivacyError, SimulatedDropout
from common.training.person_dp import Persons, train_dp_persons
from common.model.factory import trainable_state
from common.privacy.ledger_audit import LEDGER_KEY
from common.privacy.ledger import PrivacyLedger, Release, epsilon_of, spend
from common.infra.resources import check_fits
from common.infra.storage import append_jsonl, finite_or_none
from common.tasks import LabelledData
from common.training.loop import (DPSettings, TrainSettings, TrainStats, clipping_for, train_dp,
                             train_plain)
from common.wire.updates import clip_update

logger = logging.getLogger(__name__)
_ANNOUNCED: set[tuple[str, torch.device]] = set()  # (partner, device) pairs already logged


@dataclass(frozen=True)
class TrainReply:
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    history: list[tuple[float, float, int]]  # the partner's whole privacy ledger, as (σ, q, steps)


def partner_device(config: RunConfig, partner: PartnerSettings) -> torch.device:
    """The partner's node-config device, else the run's; logged once per process, since
    ``auto`` may pick either."""
    device = resolve_device(partner.device or config.device,
                            f"{partner.name}'s {'node config' if partner.device else 'run config'}")
    if (partner.name, device) not in _ANNOUNCED:
        _ANNOUNCED.add((partner.name, device))
        logger.info("%s trains on %s", partner.name, device)
    return device


def drops_out(config: RunConfig, partner: PartnerSettings, server_round: int) -> bool:
    """Whether a simulated partner leaves this round (run config ``dropout-rate``); a fixed coin
    per (seed, round, partner), so a rerun drops the same partners."""
    if partner.has_own_data or config.dropout_rate <= 0:
        return False
    coin = np.random.default_rng([config.seed, server_round, partner.partition_id]).random()
    return bool(coin < config.dropout_rate)


def open_ledger(config: RunConfig, partner: PartnerSettings,
                known_history: list[tuple[float, float, int]] | None) -> PrivacyLedger:
    """The partner's ledger for its data source, cross-checked against what this process
    remembers spending in this run."""
    ledger = PrivacyLedger.open(partner.ledger_path(config), partner.data_source(config))
    if known_history and ledger.history[: len(known_history)] != known_history:
        raise PrivacyError(f"{ledger.path} holds fewer releases than this partner already made "
                           "in this run; the ledger was lost or replaced. Restore it; refusing "
                           "to train with an under-counted ε")
    return ledger


def person_index(config: RunConfig, partner: PartnerSettings, train: LabelledData,
                 ) -> Persons | None:
    """The persons of the training split when DP protects persons (``person-column``)."""
    if not (config.dp and partner.person_key(config)):
        return None
    return Persons.of(train.persons)  # type: ignore[attr-defined]


def _train_private(config: RunConfig, partner: PartnerSettings, prep: Prepared,
                   data: TensorDataset, settings: TrainSettings, server_round: int, run_id: str,
                   known_history: list[tuple[float, float, int]] | None,
                   persons: Persons | None = None,
                   ) -> tuple[TrainStats, dict[str, float], list[tuple[float, float, int]]]:
    """DP-SGD for one round, per example or, with ``persons``, per person. The budget, for
    this round and the rest of the run's plan, is checked and the release recorded under the
    ledger's lock *before* training."""
    delta = max(config.delta, partner.delta)
    units, unit = (len(persons), "person") if persons else (len(prep.train), "example")
    if delta >= 1.0 / units:
        raise PrivacyError(f"delta = {delta:g} is not below 1 / {units} training {unit}s at "
                           f"{partner.name}; use a smaller delta")
    open_ledger(config, partner, known_history)
    plan = settings.require_plan()  # q, steps and σ from common.privacy.planner (logged per round)
    q, steps = plan.sample_rate, plan.steps_per_round
    release = Release(run_id, server_round, plan.noise_multiplier, q, steps,
                      examples=len(prep.train), data_sha256=data_fingerprint(prep.train),
                      unit=unit, persons=len(persons) if persons else 0)
    this_round = (release.noise_multiplier, release.sample_rate, release.steps)
    ledger, prior = spend(partner.ledger_path(config), partner.data_source(config), release,
                          partner.delta or config.delta, partner.max_epsilon,
                          [this_round] * (config.num_rounds - server_round)
                          + partner.evaluation_plan(config, server_round),
                          partner.legacy_ledgers(config))
    if persons:  # per-sample gradients summed per person: hooks, whatever `clipping` says
        clipping = "hooks" if config.clipping == "auto" else config.clipping
        stats, opacus_history = train_dp_persons(
            prep.model, data, persons, settings,
            DPSettings(release.noise_multiplier, config.max_grad_norm, clipping),
            config.max_rows_per_person, prior)
    else:
        stats, opacus_history = train_dp(prep.model, data, settings, DPSettings(
            release.noise_multiplier, config.max_grad_norm,
            clipping_for(config.clipping, config.finetune)), prior)
    if stats.steps != release.steps or not math.isclose(stats.sample_rate, release.sample_rate):
        raise PrivacyError(f"Opacus ran {stats.steps} steps at q={stats.sample_rate}, the "
                           f"ledger recorded {release.steps} at q={release.sample_rate}; "
                           "refusing to send the update (the round stays counted)")
    if not math.isclose(epsilon_of(opacus_history, config.delta),
                        epsilon_of(prior + [this_round], config.delta), rel_tol=1e-9):
        raise PrivacyError("the ledger's ε disagrees with Opacus' accountant; not sending")
    history = ledger.history
    metrics = {P.EPSILON: ledger.epsilon(config.delta), P.DELTA: config.delta,
               P.NOISE_MULTIPLIER: release.noise_multiplier, P.SAMPLE_RATE: release.sample_rate,
               P.STEPS: float(sum(s for _, _, s in history)),
               P.PER_PERSON: float(unit == "person"), P.PERSONS: float(release.persons)}
    return stats, metrics, history


def train_round(config: RunConfig, partner: PartnerSettings, shared: Mapping[str, np.ndarray],
                fingerprint: str, server_round: int, run_id: str,
                known_history: list[tuple[float, float, int]] | None = None,
                received: ReceivedModel | None = None) -> TrainReply:
    """Train one round on the partner's data and return the clipped update and the metrics
    its policy lets leave (no un-noised value about the training batches by default).
    ``received``: the same weights, already built (after evaluating them)."""
    partner.check_policy(config, server_round)
    device = partner_device(config, partner)
    try:
        reply = _train_round(config, partner, received or ReceivedModel(shared, fingerprint),
                             server_round, run_id, known_history, device)
    finally:
        free_cached(device)  # the round's model is gone: hand its GPU memory back
    reply.metrics.update(gpu_memory(device))
    for key in [k for k in reply.metrics if not partner.releases(k, config)]:
        del reply.metrics[key]
    note_trained(partner.ledger_root(config), partner.name, run_id, server_round)
    return reply


def _train_round(config: RunConfig, partner: PartnerSettings, received: ReceivedModel,
                 server_round: int, run_id: str,
                 known_history: list[tuple[float, float, int]] | None,
                 device: torch.device) -> TrainReply:
    prep, shared = received.build(config, partner, device), received.shared
    persons = person_index(config, partner, prep.train)  # DP's unit: None = an example
    plan = round_plan(config, partner.name, prep.model,  # in persons or examples; may refuse
                      len(persons) if persons else len(prep.train),  # (nothing spent)
                      "person" if persons else "example", partner.plan_check(config))
    batch, learning_rate = batch_and_learning_rate(config, plan)
    fit_batch, per_sample = memory_batch(config, batch, per_person=persons is not None)
    check_fits(prep.model, fit_batch, config.max_length, per_sample, partner.name, device)
    old = trainable_state(prep.model)
    started = time.perf_counter()
    encoded = prep.task.encode(prep.tokenizer, prep.train, config.max_length)
    trained, data = trainable_view(prep.model, encoded, feature_cache(  # expired ones removed
        partner.ledger_root(config) / CACHE_DIR, partner.feature_cache_days))
    # simulated partners replay exactly; a real partner's noise is seeded from its OS only
    seed = None if partner.has_own_data else (
        config.seed * 100_003 + server_round * 1_009 + partner.partition_id)
    settings = TrainSettings(learning_rate, batch, config.local_epochs, config.max_length,
                             seed=seed, desc=f"{partner.name} round {server_round}", plan=plan,
                             per_example_loss=prep.task.per_example_loss,
                             head_lr_scale=config.head_lr_scale,
                             token_budget=config.batch_tokens, ema_decay=config.ema_decay,
                             schedule=lr_schedule(config, plan, server_round, len(data), batch))
    history: list[tuple[float, float, int]] = []
    if config.dp:
        stats, metrics, history = _train_private(
            config, partner, dataclasses.replace(prep, model=trained), data, settings,
            server_round, run_id, known_history, persons)
    else:
        stats = train_plain(trained, data, settings)
        metrics = {P.EPSILON: math.inf, P.DELTA: 0.0, P.NOISE_MULTIPLIER: 0.0,
                   P.SAMPLE_RATE: 0.0, P.STEPS: float(stats.steps)}
    train_seconds = time.perf_counter() - started
    # under secure aggregation the partner drops later, after sharing keys (client/secagg.py)
    if drops_out(config, partner, server_round) and not config.secure_aggregation:
        raise SimulatedDropout(f"{partner.name} dropped out of round {server_round} after "
                               "training (simulated, dropout-rate "
                               f"{config.dropout_rate:g}); its ε is spent")
    new, norm, clipped = clip_update(old, trainable_state(prep.model), config.update_clip_norm)
    arrays = to_wire(old, new, config.compression, config.update_clip_norm)
    if prep.corrected:  # how many reviewed corrections this round used: a count, no row
        metrics[P.CORRECTIONS] = float(prep.corrected["corrections"])
    metrics.update({P.NUM_EXAMPLES: float(len(prep.train)), P.TRAIN_LOSS: stats.loss,
                    P.CLIPPED_FRACTION: stats.clipped_fraction, P.UPDATE_NORM: norm,
                    P.UPDATE_CLIPPED: float(clipped), P.TRAIN_SECONDS: train_seconds})
    if plan is not None:  # public quantities only: the coordinator's report and card show them
        metrics.update({P.PLAN_EXPECTED_BATCH: plan.expected_batch,
                        P.PLAN_LEARNING_RATE: plan.learning_rate,
                        P.PLAN_NOISE_TO_SIGNAL: plan.run_ratio})
    logger.info("%s round %d: loss %.4f, ε %.3f, update norm %.3f%s", partner.name, server_round,
                stats.loss, metrics[P.EPSILON], norm, " (clipped)" if clipped else "")
    append_audit(partner.ledger_root(config) / AUDIT_LOG, {
        "partner": partner.name, "run_id": run_id, "round": server_round,
        "model_sha256": weights_sha256(shared), "epsilon": finite_or_none(metrics[P.EPSILON]),
        "delta": config.delta, "bytes_sent": sum(a.nbytes for a in arrays.values()),
        LEDGER_KEY: partner.ledger_path(config).name,  # what its ε is checked against next
        "examples": len(prep.train), "unit": "person" if persons else "example",
        **({"deidentified": prep.masked} if partner.masks_text(config) else {}),
        **({"corrections": prep.corrected} if prep.corrected else {})})
    return TrainReply(arrays, metrics, history)


def weights_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Hash of the weights a partner received, for its audit log."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def append_audit(path: Path, entry: dict) -> None:
    """One JSON line per round the partner took part in (or refused), fsynced."""
    append_jsonl(path, {"time": dt.datetime.now(dt.timezone.utc).isoformat(), **entry})


def evaluate_round(config: RunConfig, partner: PartnerSettings,
                   shared: Mapping[str, np.ndarray], fingerprint: str, server_round: int,
                   run_id: str, received: ReceivedModel | None = None) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class counts (``tp/<label>`` ...) of the shared model on this
    partner's held-out split; counts, never examples, so the coordinator can pool P / R / F1.

    At most once per round of this run, only for a round this partner trained, and only as its
    policy allows (``evaluation``: counts, full = counts + exact loss, dp = noisy counts, off)
    and its ledger can pay (client.answers: ``max-evaluations`` exact answers over all runs on
    its data, or ε); PrivacyError else. ``received``: the same weights, to be built once for
    this evaluation and a training after it.
    """
    if partner.evaluation == "off":
        raise PrivacyError(f"{partner.name} does not evaluate for the coordinator "
                           "(node-config evaluation = off)")
    claim_evaluation(partner.ledger_root(config), partner.name, run_id, server_round)
    noise = pay_for_evaluation(config, partner, run_id, server_round)
    device = partner_device(config, partner)
    try:
        prep = (received or ReceivedModel(shared, fingerprint)).build(config, partner, device)
        metrics = prep.task.evaluate(prep.model, prep.tokenizer, prep.test, config.max_length,
                                     min_group_size=partner.smallest_group(config))
    finally:
        free_cached(device)
    if noise is not None:
        return noisy_evaluation(config, metrics, noise)
    if partner.evaluation != "full":
        metrics.pop(P.EVAL_LOSS, None)  # an exact loss says more than counts do
    return metrics


def evaluate_received(config: RunConfig, partner: PartnerSettings, received: ReceivedModel,
                      model_round: int, server_round: int, run_id: str) -> dict[str, float]:
    """evaluate_round on a TRAIN message's weights, which are the aggregate after the round
    before it: PrivacyError when the coordinator names any other round."""
    if model_round != server_round - 1:
        raise PrivacyError(f"evaluation of round {model_round} refused: the weights of a round "
                           f"{server_round} message are the aggregate of round {server_round - 1}")
    return evaluate_round(config, partner, received.shared, received.fingerprint, model_round,
                          run_id, received)
