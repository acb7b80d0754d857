"""A training round under secure aggregation: server.secagg's protocol driven over Flower's Grid.

Called from server.coordinator.train_phase when ``secure-aggregation = true``; returns the same
round summary. Each stage pushes one Message per partner still in the protocol and streams the
replies (server.messaging.stream_replies: error replies and silence past round-timeout become
failures, i.e. dropouts).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import protocol as P
from common.config import RunConfig
from common.errors import ConsortiumError, UpdateError
from common.wire.secagg_params import setup_parameters, threshold_for
from common.wire.weights import check_claim, fixed_batch_size
from server.messaging import (Evaluations, RunState, gpu_line, make_messages, partner_name,
                              stream_replies)
from server.outputs import record_partner
from server.secagg import SecAggRound, check_mean_update, payload_bytes, split_flat

logger = logging.getLogger(__name__)


def _stage_message(rnd: int, nid: int, values: dict[str, Any]) -> Message:
    content = RecordDict({P.CONFIG: ConfigRecord({P.ROUND: rnd}),
                          P.SECAGG: ConfigRecord(values)})  # type: ignore[arg-type]
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=nid,
                   group_id=str(rnd))


def _collect(grid: Grid, config: RunConfig, state: RunState, messages: list[Message],
             stage: str, failures: list[dict[str, Any]], traffic: dict[str, dict[str, int]],
             take: Callable[[int, Message], None], evals: Evaluations | None = None) -> None:
    """Send one stage's messages; hand each good reply to ``take``; a reply ``take`` rejects
    (malformed) or a refusal counts as that partner dropping out at this stage. Every privacy
    history a reply carries is recorded first, whatever happens to the reply, and so is the
    evaluation a setup reply carries (in the clear: counts, beside the keys)."""
    traffic["download"][stage] = sum(payload_bytes(m.content) for m in messages)
    upload = traffic["upload"]
    for reply in stream_replies(grid, messages, config.round_timeout, state.names, failures):
        name = partner_name(reply)
        upload[name] = upload.get(name, 0) + payload_bytes(reply.content)
        partner = reply.content.config_records[P.PARTNER]
        if P.PRIVACY_HISTORY in partner:  # setup replies: the partner trained, ε is spent
            record_partner(state.partners, name, dict(reply.content.metric_records.get(
                P.METRICS, {})), config, str(partner[P.PRIVACY_HISTORY]))
        if evals is not None:
            evals.take(reply)
        refusal = partner.get(P.REFUSAL)
        if refusal:
            failures.append({"partner": name, "reason": f"refused: {refusal}"})
            continue
        try:
            take(reply.metadata.src_node_id, reply)
        except (UpdateError, KeyError, TypeError, ValueError) as exc:
            failures.append({"partner": name, "reason": f"secure aggregation {stage}: {exc}"})


def secure_train_phase(grid: Grid, config: RunConfig, state: RunState, rnd: int,
                       fingerprint: str, evals: Evaluations) -> dict[str, Any]:
    """The setup Messages are the round's TRAIN Messages: they carry the model after round
    ``evals.round``, and their replies bring its evaluation (into ``evals``)."""
    started = time.time()
    failures: list[dict[str, Any]] = []
    traffic: dict[str, dict[str, int]] = {"upload": {}, "download": {}}
    messages = make_messages(grid, MessageType.TRAIN, rnd, state.arrays, fingerprint,
                             config.min_partners, evals.round)
    fixed = setup_parameters(config)  # each partner checks these against its run config
    proto = SecAggRound(threshold_for(len(messages), config.secagg_threshold),
                        fixed[P.SECAGG_CLIPPING_RANGE], fixed[P.SECAGG_QUANTIZATION_RANGE],
                        sum(a.size for a in state.arrays.values()), config.max_partner_weight)
    setup = ConfigRecord({P.SECAGG_STAGE: P.SECAGG_SETUP, P.SECAGG_THRESHOLD: proto.threshold,
                          **fixed})
    for message in messages:
        message.content.config_records[P.SECAGG] = setup
    metrics: dict[int, dict[str, float]] = {}
    batch_size = fixed_batch_size(config.batch_size)

    def take_keys(nid: int, reply: Message) -> None:
        record = reply.content.config_records[P.SECAGG]
        pk1, pk2 = record[P.SECAGG_PUBLIC_KEYS]  # type: ignore[misc]
        (signer,), (signature,) = record[P.SECAGG_SIGNERS], record[P.SECAGG_SIGNATURES]  # type: ignore[misc]
        values = dict(reply.content.metric_records[P.METRICS])
        examples = float(values[P.NUM_EXAMPLES])  # type: ignore[arg-type]
        if config.dp:  # its DP sampling rate must agree with its claim (common.wire.weights)
            check_claim(values, batch_size)  # type: ignore[arg-type]
        proto.add_keys(nid, pk1, pk2, signer, signature, examples)  # type: ignore[arg-type]
        metrics[nid] = values  # type: ignore[assignment]

    _collect(grid, config, state, messages, P.SECAGG_SETUP, failures, traffic, take_keys, evals)
    evals.missing(failures, f"round {rnd} train reply")
    proto.check_setup()
    nodes = sorted(proto.keys)
    listed = {P.SECAGG_STAGE: P.SECAGG_SHARE_KEYS, P.SECAGG_NODES: nodes,
              P.SECAGG_PUBLIC_KEYS: [k for n in nodes for k in proto.keys[n][:2]],
              P.SECAGG_SIGNERS: [proto.keys[n][2] for n in nodes],
              P.SECAGG_SIGNATURES: [proto.keys[n][3] for n in nodes]}
    _collect(grid, config, state, [_stage_message(rnd, n, listed) for n in nodes],
             P.SECAGG_SHARE_KEYS, failures, traffic,
             lambda nid, r: proto.add_ciphertexts(nid, list(r.content.config_records[P.SECAGG][
                 P.SECAGG_NODES]), list(r.content.config_records[P.SECAGG][P.SECAGG_CIPHERTEXTS])))
    proto.need(proto.sharers, P.SECAGG_SHARE_KEYS)
    _collect(grid, config, state, [_stage_message(rnd, n, {
        P.SECAGG_STAGE: P.SECAGG_MASK, P.SECAGG_SOURCES: proto.forward_for(n)[0],
        P.SECAGG_CIPHERTEXTS: proto.forward_for(n)[1]})
        for n in proto.sharers], P.SECAGG_MASK, failures, traffic,
        lambda nid, r: proto.add_masked(
            nid, r.content.array_records[P.ARRAYS][P.SECAGG_MASKED].numpy()))
    proto.need(proto.masked, P.SECAGG_MASK)
    _collect(grid, config, state, [_stage_message(rnd, n, {
        P.SECAGG_STAGE: P.SECAGG_CHECK, P.SECAGG_SUMMED: proto.masked}) for n in proto.masked],
        P.SECAGG_CHECK, failures, traffic, lambda nid, r: proto.add_signature(
            nid, r.content.config_records[P.SECAGG][P.SECAGG_SIGNATURES][0]))  # type: ignore
    proto.need(proto.signatures, P.SECAGG_CHECK)
    signed = {P.SECAGG_STAGE: P.SECAGG_UNMASK, P.SECAGG_NODES: list(proto.signatures),
              P.SECAGG_SIGNATURES: list(proto.signatures.values())}
    _collect(grid, config, state, [_stage_message(rnd, n, signed) for n in proto.signatures],
             P.SECAGG_UNMASK, failures, traffic,
             lambda nid, r: proto.add_unmask_shares(nid, list(r.content.config_records[P.SECAGG][
                 P.SECAGG_NODES]), list(r.content.config_records[P.SECAGG][P.SECAGG_SHARES])))
    return _finish(config, state, rnd, proto, metrics, failures, traffic, started)


def _finish(config: RunConfig, state: RunState, rnd: int, proto: SecAggRound,
            metrics: dict[int, dict[str, float]],
            failures: list[dict[str, Any]], traffic: dict[str, dict[str, int]],
            started: float) -> dict[str, Any]:
    """Unmask, validate the mean update, apply it; record the partners whose update is in it."""
    names = {n: state.names.get(n, f"node-{n}") for n in proto.keys}
    summed = [names[n] for n in proto.masked]
    if len(summed) < config.min_partners:
        raise ConsortiumError(f"round {rnd}: {len(summed)} masked update(s), min-partners is "
                                f"{config.min_partners}; stopping. Failures: {failures}")
    norm = None
    try:
        mean, error = proto.mean_update()
        norm = check_mean_update(mean, error, config.update_clip_norm)
        delta = split_flat(mean, state.arrays)
        state.arrays = {k: (a + delta[k]).astype(a.dtype) for k, a in state.arrays.items()}
    except UpdateError as exc:  # nobody to single out: the round's sum is dropped, weights kept
        failures.append({"partner": "(aggregate)", "reason": f"aggregate rejected: {exc}"})
    for failure in failures:
        logger.warning("round %d: %s", rnd, failure)
    weights = [proto.weights[n] for n in proto.masked]  # capped, as the partners masked them
    losses = [metrics[n].get(P.TRAIN_LOSS, math.nan) for n in proto.masked]
    return {"partners_replied": summed, "failures": failures,
            "train_loss": sum(w * x for w, x in zip(weights, losses)) / sum(weights),
            "train_phase_seconds": round(time.time() - started, 3),
            "partner_train_seconds": {names[n]: metrics[n].get(P.TRAIN_SECONDS)
                                      for n in proto.masked},
            **gpu_line({names[n]: metrics[n] for n in proto.masked}),
            "upload_bytes": sum(traffic["upload"].values()),
            "download_bytes": sum(traffic["download"].values()),
            "secagg": {"partners": len(proto.keys), "threshold": proto.threshold,
                       "signed_view": len(proto.signatures),
                       "dropped_after_keys": [names[n] for n in proto.dead()],
                       "aggregate_norm": norm, "upload_bytes_per_partner": traffic["upload"],
                       "download_bytes_per_stage": traffic["download"]}}

