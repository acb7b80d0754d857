"""The partner's Message handlers: Messages in, typed calls to client.partner, Messages out.
client.app imports this module only once the partner's code check (client.pinning) has passed.

One TRAIN Message per round: the partner evaluates the weights it brings (the aggregate of the
round before, when the coordinator asks) on one build of the model, then trains from them, and
answers both in one reply. EVALUATE serves the final model, or in a monitoring run a
release (client.monitor_request).

An exception becomes an error reply whose reason is a fixed code (``P.ERROR_REASONS``): its text
can quote a row or a path, so it stays in the partner's log. A Message that made the ledger
grow (a round trained, a noisy evaluation) is answered with the ledger's history whatever
happens after the spending: a refusal carries it, and an error becomes a refusal with the code
and the history (an error reply carries no content), so the privacy report never under-counts."""

from __future__ import annotations

import logging
import math

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from client import secagg
from client.policy import PartnerSettings
from client.partner import (AUDIT_LOG, append_audit, drops_out, evaluate_received,
                            evaluate_round, open_ledger, train_round)
from client.sent import keep_sent
from client.received import ReceivedModel
from common.wire.records import (from_array_record, history_from_json, history_to_json,
                            to_array_record)
from common import protocol as P
from common.config import RunConfig
from common.errors import (CheckpointError, ConfigError, ConsortiumError, DataError, ModelError,
                           PrivacyError, ResourceError, SimulatedDropout, UpdateError)
from common.infra.logs import configure_logging
from common.wire.secagg_params import check_setup

logger = logging.getLogger(__name__)

_STATE = "consortium"  # ConfigRecord in context.state that remembers this partner's spending
# what an error reply says instead of the exception's text; anything else: P.ERROR_INTERNAL
_REASONS = ((DataError, P.ERROR_DATA), (ConfigError, P.ERROR_CONFIG), (ModelError, P.ERROR_MODEL),
            (CheckpointError, P.ERROR_LEDGER), (UpdateError, P.ERROR_UPDATE))


def answer(msg: Message, context: Context) -> Message:
    """The reply to a TRAIN or EVALUATE Message; an error reply with a fixed reason code when
    handling it raised (the details go to this partner's log, never to the coordinator)."""
    configure_logging()
    handler = train if msg.metadata.message_type == MessageType.TRAIN else evaluate
    before = _ledger_history(context)
    try:
        reply = handler(msg, context)
    except SimulatedDropout:  # a simulated partner leaving: Flower's own error reply
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure leaves as a code only
        code = next((c for kind, c in _REASONS if isinstance(exc, kind)), P.ERROR_INTERNAL)
        logger.exception("%s: %s message failed; the coordinator is told %r only",
                         context.node_config.get("partner-name", "this partner"),
                         msg.metadata.message_type, code)
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=code),
                        reply_to=msg)
    return _with_history(msg, reply, context, before)


def _ledger_history(context: Context) -> list[tuple[float, float, int]] | None:
    """The partner's ledger history as it is now ([] before its first release); None when
    there is none to read (no ledger directory, a config that does not parse, a damaged
    ledger: the handler then says why, and nothing can be spent)."""
    try:
        config = RunConfig.from_mapping(context.run_config)
        return open_ledger(config, PartnerSettings.from_node_config(context.node_config),
                           None).history
    except (ConsortiumError, OSError, ValueError, KeyError):
        return None


def _with_history(msg: Message, reply: Message, context: Context,
                  before: list[tuple[float, float, int]] | None) -> Message:
    """``reply``, carrying the ledger's history when handling ``msg`` recorded a release and
    the reply does not say so yet: a refusal gets it added, an error reply becomes a refusal
    with the same reason code and the history."""
    after = _ledger_history(context) if before is not None else None
    if after is None or len(after) <= len(before or ()):
        return reply
    history = history_to_json(after)
    if reply.has_error():
        name = PartnerSettings.from_node_config(context.node_config).name  # it parsed before
        logger.warning("%s spent ε before failing: the error reply carries its ledger history",
                       name)
        return Message(RecordDict({P.PARTNER: ConfigRecord({
            P.PARTNER_NAME: name, P.REFUSAL: reply.error.reason,
            P.PRIVACY_HISTORY: history})}), reply_to=msg)
    partner = reply.content.config_records.get(P.PARTNER)
    if partner is not None and P.PRIVACY_HISTORY not in partner:
        partner[P.PRIVACY_HISTORY] = history
    return reply


def train(msg: Message, context: Context) -> Message:
    config = RunConfig.from_mapping(context.run_config)
    partner = PartnerSettings.from_node_config(context.node_config)
    content = msg.content
    server_round = int(content.config_records[P.CONFIG][P.ROUND])
    stage = secagg.stage_of(msg)  # '' = plain round; setup trains like a plain round
    if stage and stage != P.SECAGG_SETUP:
        return secagg.handle(msg, context, partner,
                             drops_out(config, partner, server_round))
    received = ReceivedModel(from_array_record(content.array_records[P.ARRAYS]),
                             str(content.config_records[P.CONFIG].get(P.MODEL_FINGERPRINT, "")))
    evaluation = _evaluate_first(msg, context, config, partner, received)
    state = context.state.config_records.get(_STATE, ConfigRecord())
    known = history_from_json(str(state[P.PRIVACY_HISTORY])) if P.PRIVACY_HISTORY in state else None
    shared = received.shared
    try:
        if stage:  # every setup parameter the run config fixes, before any ε is spent
            check_setup(content.config_records[P.SECAGG], config)
            secagg.identity_of(partner, config)  # its signing key and peers, readable
        reply = train_round(config, partner, shared, received.fingerprint, server_round,
                            str(context.run_id), known, received)
    except (PrivacyError, ResourceError) as exc:  # a refusal the coordinator is told about
        refused = _refusal(msg, context, config, partner, server_round, exc)
        _attach(refused.content, evaluation)
        return refused
    context.state.config_records[_STATE] = ConfigRecord(
        {P.PRIVACY_HISTORY: history_to_json(reply.history)})
    out = RecordDict({
        P.ARRAYS: to_array_record(reply.arrays),
        P.METRICS: MetricRecord(reply.metrics),
        P.PARTNER: ConfigRecord({P.PARTNER_NAME: partner.name, **budget(partner),
                                 P.PRIVACY_HISTORY: history_to_json(reply.history)}),
    })
    _attach(out, evaluation)  # counts, not secret-shared: beside the masked vector under SecAgg
    if partner.keep_sent and not stage:  # under SecAgg it is kept when masked (client.secagg)
        keep_sent(partner.ledger_root(config), str(context.run_id), server_round, reply.arrays)
    if stage:  # secure aggregation: the update stays here; public keys go instead
        out = secagg.start(msg, context, out, shared, reply.arrays)
    return Message(out, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    config = RunConfig.from_mapping(context.run_config)
    partner = PartnerSettings.from_node_config(context.node_config)
    server_round = int(msg.content.config_records[P.CONFIG][P.ROUND])
    if msg.content.config_records[P.CONFIG].get(P.MONITOR_RELEASE):
        return _monitor(msg, context, config, partner)
    if msg.content.config_records[P.CONFIG].get(P.PREFLIGHT):
        return _preflight(msg, context, config, partner, server_round)
    try:
        metrics = evaluate_round(
            config, partner,
            shared=from_array_record(msg.content.array_records[P.ARRAYS]),
            fingerprint=str(msg.content.config_records[P.CONFIG].get(P.MODEL_FINGERPRINT, "")),
            server_round=server_round, run_id=str(context.run_id))
    except PrivacyError as exc:
        return _refusal(msg, context, config, partner, server_round, exc, "evaluation")
    return Message(
        RecordDict({P.METRICS: MetricRecord(metrics),
                    P.PARTNER: ConfigRecord({P.PARTNER_NAME: partner.name})}),
        reply_to=msg,
    )


def _preflight(msg: Message, context: Context, config: RunConfig, partner: PartnerSettings,
               first_round: int) -> Message:
    """Accept or refuse the whole plan before round ``first_round``; nothing is spent."""
    from client.preflight import preflight

    received = ReceivedModel(from_array_record(msg.content.array_records[P.ARRAYS]),
                             str(msg.content.config_records[P.CONFIG].get(P.MODEL_FINGERPRINT,
                                                                          "")))
    try:
        preflight(config, partner, received, first_round)
    except DataError as exc:  # its text can quote a row: the log keeps it, the reply does not
        logger.error("%s: pre-flight: %s", partner.name, exc)
        return _refusal(msg, context, config, partner, first_round, DataError(
            f"{partner.name}'s data cannot be read for this run ({P.ERROR_DATA}; the row is "
            "named in its log)"), "pre-flight")
    except (PrivacyError, ResourceError, ModelError, ConfigError) as exc:
        return _refusal(msg, context, config, partner, first_round, exc, "pre-flight")
    logger.info("%s accepts the run's plan from round %d (pre-flight; nothing spent)",
                partner.name, first_round)
    return Message(RecordDict({P.PARTNER: ConfigRecord({P.PARTNER_NAME: partner.name,
                                                        P.ACCEPTED: 1, **budget(partner)})}),
                   reply_to=msg)


def budget(partner: PartnerSettings) -> dict[str, float]:
    """The partner's own ε budget for the report's chart; none when its policy sets none."""
    return {P.BUDGET: partner.max_epsilon} if math.isfinite(partner.max_epsilon) else {}


def _monitor(msg: Message, context: Context, config: RunConfig,
             partner: PartnerSettings) -> Message:
    """A monitoring run's request: the release's counts on the monitoring data, or a refusal."""
    from client.monitor_request import answer_monitoring

    asked = msg.content.config_records[P.CONFIG]
    try:
        metrics = answer_monitoring(
            config, partner, from_array_record(msg.content.array_records[P.ARRAYS]),
            str(asked.get(P.MODEL_FINGERPRINT, "")), str(asked[P.MONITOR_RELEASE]),
            str(context.run_id))
    except PrivacyError as exc:
        return _refusal(msg, context, config, partner, 0, exc, "monitoring")
    return Message(RecordDict({P.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
                               P.PARTNER: ConfigRecord({P.PARTNER_NAME: partner.name})}),
                   reply_to=msg)


def _evaluate_first(msg: Message, context: Context, config: RunConfig,
                    partner: PartnerSettings, received: ReceivedModel) -> dict[str, float] | str:
    """The evaluation a TRAIN message asks for (P.EVALUATE_ROUND) of the weights it brings,
    under the same policy as ``evaluate``: its metrics, the refusal reason (audited), or ''
    when it asks for none."""
    asked = int(msg.content.config_records[P.CONFIG].get(P.EVALUATE_ROUND, 0))
    if not asked:
        return ""
    try:
        return evaluate_received(config, partner, received, asked,
                                 int(msg.content.config_records[P.CONFIG][P.ROUND]),
                                 str(context.run_id))
    except PrivacyError as exc:
        _audit_refusal(context, config, partner, asked, exc, "evaluation")
        return partner.without_paths(str(exc), config)


def _attach(content: RecordDict, evaluation: dict[str, float] | str) -> None:
    """Put a TRAIN reply's evaluation, or the reason it has none, beside the round's reply."""
    if isinstance(evaluation, dict):
        content[P.EVALUATION] = MetricRecord(evaluation)  # type: ignore[arg-type]
    elif evaluation:
        content.config_records[P.PARTNER][P.EVAL_REFUSAL] = evaluation


def _refusal(msg: Message, context: Context, config: RunConfig, partner: PartnerSettings,
             server_round: int, exc: Exception, what: str = "round") -> Message:
    """Log a refusal in the partner's audit log and tell the coordinator why (without the
    partner's own paths, which stay in the log)."""
    _audit_refusal(context, config, partner, server_round, exc, what)
    return Message(RecordDict({P.PARTNER: ConfigRecord(
        {P.PARTNER_NAME: partner.name, P.REFUSAL: partner.without_paths(str(exc), config)})}),
        reply_to=msg)


def _audit_refusal(context: Context, config: RunConfig, partner: PartnerSettings,
                   server_round: int, exc: Exception, what: str) -> None:
    logger.error("%s refuses %s %d: %s", partner.name, what, server_round, exc)
    append_audit(partner.ledger_root(config) / AUDIT_LOG, {
        "partner": partner.name, "run_id": str(context.run_id), "round": server_round,
        "refused": str(exc), "message": what, "bytes_sent": 0})
