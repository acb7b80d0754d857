"""The partner's side of secure aggregation (SecAgg+, Bell et al. 2020), on the Message API.

Built from Flower's SecAgg+ building blocks (``flwr.common.secure_aggregation``: Shamir shares,
ECDH + HKDF shared keys, Fernet encryption of the shares, stochastic quantization) and the
``cryptography`` package; the stages follow Flower's legacy ``secaggplus_mod``:

1. setup: the partner trains (client.partner.train_round, DP untouched), keeps its update here,
   and answers with two fresh public keys (pk1: mask agreement, pk2: share encryption), signed
   with its enrolled key (common.wire.secagg_identity; ``identity_of`` says which). The evaluation
   of the model it received (client/app.py) stays in that reply, in the clear: counts, not
   secret-shared, as without secure aggregation.
2. share-keys: it checks that every listed partner is one of its peers (``secagg-peers``), once,
   and signed its keys, then Shamir-splits its private-mask seed and its sk1 (t of n) and sends
   each peer its two shares, encrypted under their pk2 agreement.
3. collect-masked-vectors: it quantizes [w, w·Δ] (w = min(its examples, W) ÷ W, W the run
   config's ``max-partner-weight``, read here, never taken from the coordinator), adds its
   private mask and ± a pairwise mask per peer whose shares it received (U2), mod 2^32: to the
   coordinator, noise.
4. consistency-check: told who is summed (U3), it checks U3 (itself in it, within U2, at least
   t and ``min-partners``) and signs its whole view of the round: t, the signed keys, U2, U3.
5. unmask: only once t partners of U3 signed that very view (Bonawitz et al. 2017), it gives its
   share of the private-mask seed of each partner in U3 and of sk1 of each in U2 − U3, never
   both for one peer. A coordinator that tells partners different stories gets too few
   signatures of any one of them.

The protocol state and maths live in client/secagg_protocol.py; this module is the Flower glue
(context.state in, Messages out; client/app.py dispatches here).

Every parameter that shapes the masked input is checked against the run config at each stage
(common.wire.secagg_params); on a mismatch, a partner or signature it cannot verify, or fewer
partners than the run's or this partner's ``min-partners``, the partner refuses with a refusal
reply, logged (stages 2 – 5 also in its audit log). client/handlers.py checks the setup
parameters and the signing key before training, so a bad setup costs no ε; ``start`` checks
them again on the trained update.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.policy import PartnerSettings
from client.secagg_protocol import PartnerSecAgg
from common import protocol as P
from common.config import RunConfig
from common.errors import PrivacyError, SimulatedDropout
from common.wire.secagg_identity import Identity, load_identity, simulated_identity
from common.wire.secagg_params import check_nodes, check_setup, check_survivors

logger = logging.getLogger(__name__)
_STATE = "consortium-secagg"  # ConfigRecord in context.state: the protocol state
_UPDATE = "consortium-secagg-update"  # ArrayRecord in context.state: the update, until masked
_DELTA = "delta"


def stage_of(msg: Message) -> str:
    """The secure-aggregation stage a TRAIN message asks for; '' for a plain round."""
    record = msg.content.config_records.get(P.SECAGG)
    return str(record[P.SECAGG_STAGE]) if record else ""


def identity_of(partner: PartnerSettings, config: RunConfig) -> Identity:
    """The key this partner signs with and the peers it accepts: its node config's
    ``secagg-key`` (the enrolled node key) and ``secagg-peers`` (default: the key's directory);
    a simulated partner (no data file of its own) derives both from the run's seed. A partner
    with its own data and no key refuses: there would be nothing to stop a forged partner."""
    if partner.secagg_key:
        key = Path(partner.secagg_key)
        return load_identity(key, Path(partner.secagg_peers) if partner.secagg_peers
                             else key.parent)
    if partner.has_own_data:
        raise PrivacyError(f"{partner.name} reads its own data but has no signing key for "
                           "secure aggregation: set node config secagg-key (`consortium partner "
                           "start --key` does) and secagg-peers (the partners' NAME.pub files)")
    return simulated_identity(config.seed, partner.partition_id, partner.num_partitions)


def flat_update(shared: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> np.ndarray:
    """new − shared over all tensors, in sorted-name order (the coordinator's order too)."""
    return np.concatenate([(np.asarray(new[k], np.float64) - shared[k]).ravel()
                           for k in sorted(shared)]) if shared else np.zeros(0)


def start(msg: Message, context: Context, content: RecordDict,
          shared: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> RecordDict:
    """Setup stage, after training: keep the update here and reply with signed public keys
    instead. The per-update norm and clip flag are withheld too: they describe one partner's
    update."""
    config = RunConfig.from_mapping(context.run_config)
    partner = PartnerSettings.from_node_config(context.node_config)
    params, metrics = msg.content.config_records[P.SECAGG], content.metric_records[P.METRICS]
    for key in (P.UPDATE_NORM, P.UPDATE_CLIPPED):
        metrics.pop(key, None)
    del content.array_records[P.ARRAYS]
    try:
        check_setup(params, config)
        identity = identity_of(partner, config)
    except PrivacyError as exc:  # refused; the privacy history still goes back: ε is spent
        logger.error("%s refuses secure aggregation: %s",
                     content.config_records[P.PARTNER][P.PARTNER_NAME], exc)
        content.config_records[P.PARTNER][P.REFUSAL] = str(exc)
        return content
    state = PartnerSecAgg()
    pk1, pk2, signer, signature = state.setup(msg.metadata.dst_node_id, params, identity)
    state.weight, state.max_weight = float(metrics[P.NUM_EXAMPLES]), config.max_partner_weight
    context.state.config_records[_STATE] = state.to_record()
    context.state.array_records[_UPDATE] = ArrayRecord({_DELTA: Array(flat_update(shared, new))})
    content.config_records[P.SECAGG] = ConfigRecord({P.SECAGG_PUBLIC_KEYS: [pk1, pk2],
                                                     P.SECAGG_SIGNERS: [signer],
                                                     P.SECAGG_SIGNATURES: [signature]})
    return content


def handle(msg: Message, context: Context, partner: Any, drops_out: bool) -> Message:
    """Stages 2 – 5. ``partner``: the partner's PartnerSettings (its name and ``min-partners``).
    ``drops_out``: a simulated partner leaves after sharing keys, before its masked update
    (client.partner.drops_out), to exercise the dropout recovery. A parameter the run config
    contradicts is refused: logged, audited, and answered with a refusal."""
    stage = stage_of(msg)
    if stage == P.SECAGG_MASK and drops_out:
        raise SimulatedDropout(f"{partner.name} dropped out after sharing keys, before sending "
                               "its masked update (simulated, dropout-rate)")
    config = RunConfig.from_mapping(context.run_config)
    state = PartnerSecAgg.from_record(context.state.config_records.get(_STATE))
    try:
        content = _stage(msg, context, state, config, partner)
    except PrivacyError as exc:
        logger.error("%s refuses secure aggregation stage %r: %s", partner.name, stage, exc)
        _audit_refusal(partner, config, context, msg, f"secure aggregation {stage}: {exc}")
        return Message(RecordDict({P.PARTNER: ConfigRecord(
            {P.PARTNER_NAME: partner.name, P.REFUSAL: str(exc)})}), reply_to=msg)
    context.state.config_records[_STATE] = state.to_record()
    content[P.PARTNER] = ConfigRecord({P.PARTNER_NAME: partner.name})
    server_round = int(msg.content.config_records[P.CONFIG][P.ROUND])
    if stage == P.SECAGG_MASK and getattr(partner, "keep_sent", False):
        from client.sent import keep_sent  # what the masked vector carries: w and Δ

        keep_sent(partner.ledger_root(config), str(context.run_id), server_round, {
            "delta": context.state.array_records[_UPDATE][_DELTA].numpy(),
            "weight": np.array([state.ratio()])})
    logger.info("%s round %d: secure aggregation %s answered", partner.name, server_round,
                stage)
    return Message(content, reply_to=msg)


def _stage(msg: Message, context: Context, state: PartnerSecAgg, config: RunConfig,
           partner: Any) -> RecordDict:
    """One stage's reply content; PrivacyError when the coordinator's request is refused."""
    stage, params = stage_of(msg), msg.content.config_records[P.SECAGG]
    min_partners = getattr(partner, "min_partners", 0)
    out: dict[str, Any] = {}
    content = RecordDict()
    if stage == P.SECAGG_SHARE_KEYS:
        nodes = [int(n) for n in params[P.SECAGG_NODES]]  # type: ignore[union-attr]
        check_nodes(state.nid, nodes, state.threshold, config, min_partners)
        pks, signers, signatures = (list(params[k]) for k in (  # type: ignore[arg-type]
            P.SECAGG_PUBLIC_KEYS, P.SECAGG_SIGNERS, P.SECAGG_SIGNATURES))
        if not len(pks) == 2 * len(signers) == 2 * len(signatures) == 2 * len(nodes):
            raise PrivacyError("secure aggregation: the node list and its keys do not match")
        keys = {n: (pks[2 * i], pks[2 * i + 1], signers[i], signatures[i])
                for i, n in enumerate(nodes)}
        out[P.SECAGG_NODES], out[P.SECAGG_CIPHERTEXTS] = state.share_keys(
            keys, identity_of(partner, config))
    elif stage == P.SECAGG_MASK:
        delta = context.state.array_records[_UPDATE][_DELTA].numpy()
        masked = state.mask([int(n) for n in params[P.SECAGG_SOURCES]],  # type: ignore
                            list(params[P.SECAGG_CIPHERTEXTS]),  # type: ignore[arg-type]
                            delta, state.ratio())
        content[P.ARRAYS] = ArrayRecord({P.SECAGG_MASKED: Array(masked)})
    elif stage == P.SECAGG_CHECK:
        summed = [int(n) for n in params[P.SECAGG_SUMMED]]  # type: ignore[union-attr]
        check_survivors(summed, config, min_partners)
        out[P.SECAGG_SIGNATURES] = [state.check(summed, identity_of(partner, config))]
    elif stage == P.SECAGG_UNMASK:
        out[P.SECAGG_NODES], out[P.SECAGG_SHARES] = state.unmask(
            [int(n) for n in params[P.SECAGG_NODES]],  # type: ignore[union-attr]
            list(params[P.SECAGG_SIGNATURES]))  # type: ignore[arg-type]
        del context.state.array_records[_UPDATE]  # the round is over here
    else:
        raise PrivacyError(f"secure aggregation: unknown stage {stage!r}")
    content[P.SECAGG] = ConfigRecord(out)  # type: ignore[arg-type]
    return content


def _audit_refusal(partner: Any, config: RunConfig, context: Context, msg: Message,
                   reason: str) -> None:
    from client.partner import AUDIT_LOG, append_audit  # torch-heavy; only when refusing

    append_audit(partner.ledger_root(config) / AUDIT_LOG, {
        "partner": partner.name, "run_id": str(context.run_id),
        "round": int(msg.content.config_records[P.CONFIG][P.ROUND]), "refused": reason,
        "bytes_sent": 0})
