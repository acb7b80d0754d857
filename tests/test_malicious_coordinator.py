"""A malicious coordinator under secure aggregation: it sends partners parameters that differ from
the run config, or from one partner to another, or a round with too few partners. The partners'
real Flower glue (client.secagg.start / handle) is driven stage by stage in process, with the
coordinator's bookkeeping (server.secagg.SecAggRound) in between; no Flower processes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import secagg
from client.policy import PartnerSettings
from common.wire.records import to_array_record
from common import protocol as P
from common.config import RunConfig
from common.errors import PrivacyError, UpdateError
from common.wire.secagg_params import check_setup, setup_parameters, threshold_for
from server.aggregation import fedavg
from server.secagg import SecAggRound

SIZE = 64
NODES = [11, 22, 33]
Tamper = Callable[[str, int, dict[str, Any]], dict[str, Any]]  # (stage, node, values) -> values


@pytest.fixture(autouse=True)
def task_identity():  # Message(reply_to=...) reads it, as in a real ClientApp process
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@dataclass
class Round:
    """One secure-aggregation round: honest partners, a coordinator that may ``tamper`` with
    what it sends each partner at each stage."""

    config: RunConfig
    examples: dict[int, float]
    tamper: Tamper = lambda stage, nid, values: values
    min_partners: dict[int, int] = field(default_factory=dict)
    contexts: dict[int, Context] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)
    deltas: dict[int, np.ndarray] = field(default_factory=dict)
    keys: dict[int, Path] = field(default_factory=dict)  # enrolled keys; none = simulated

    def node_config(self, nid: int) -> dict[str, Any]:
        """Simulated partner i of n (its signing key and peers come from the run's seed), or a
        partner with its enrolled key (its peers: the key's directory)."""
        if nid in self.keys:
            return {"partner-name": f"p{nid}", "secagg-key": str(self.keys[nid])}
        return {"partner-name": f"p{nid}", "partition-id": list(self.examples).index(nid),
                "num-partitions": len(self.examples)}

    def partner(self, nid: int) -> PartnerSettings:
        settings = PartnerSettings.from_node_config(self.node_config(nid))
        return replace(settings, ledger_dir=str(Path(self.config.out_dir) / "ledger"),
                       min_partners=self.min_partners.get(nid, 0))

    def send(self, stage: str, nid: int, values: dict[str, Any]) -> RecordDict | None:
        msg = Message(content=RecordDict({
            P.CONFIG: ConfigRecord({P.ROUND: 1}),
            P.SECAGG: ConfigRecord({P.SECAGG_STAGE: stage, **self.tamper(stage, nid, values)})}),
            dst_node_id=nid, message_type=MessageType.TRAIN, group_id="1")
        if stage == P.SECAGG_SETUP:  # what client/app.py does: train, then secagg.start
            self.contexts[nid] = Context(1, nid, self.node_config(nid), RecordDict(),
                                         self.config.to_mapping())
            rng = np.random.default_rng(nid)
            self.deltas[nid] = rng.normal(0, 0.05, SIZE)
            content = RecordDict({
                P.ARRAYS: to_array_record({"w": self.deltas[nid].astype(np.float32)}),
                P.METRICS: MetricRecord({P.NUM_EXAMPLES: self.examples[nid]}),
                P.PARTNER: ConfigRecord({P.PARTNER_NAME: f"p{nid}",
                                         P.PRIVACY_HISTORY: "[[1.0, 0.1, 10]]"})})
            reply = secagg.start(msg, self.contexts[nid], content,
                                 {"w": np.zeros(SIZE, np.float32)},
                                 {"w": self.deltas[nid].astype(np.float32)})
        else:
            reply = secagg.handle(msg, self.contexts[nid], self.partner(nid), False).content
        refusal = reply.config_records[P.PARTNER].get(P.REFUSAL)
        if refusal:
            self.refusals[nid] = str(refusal)
            return None
        return reply

    def run(self) -> SecAggRound:
        """Every stage, as server/secagg_phase.py runs it; partners that refuse drop out."""
        params = setup_parameters(self.config)
        proto = SecAggRound(threshold_for(len(self.examples), self.config.secagg_threshold),
                            params[P.SECAGG_CLIPPING_RANGE], params[P.SECAGG_QUANTIZATION_RANGE],
                            SIZE, self.config.max_partner_weight)
        for nid in self.examples:
            reply = self.send(P.SECAGG_SETUP, nid, {P.SECAGG_THRESHOLD: proto.threshold,
                                                    **params})
            if reply is not None:
                rec = reply.config_records[P.SECAGG]
                (signer,), (signature,) = rec[P.SECAGG_SIGNERS], rec[P.SECAGG_SIGNATURES]
                proto.add_keys(nid, *rec[P.SECAGG_PUBLIC_KEYS], signer, signature,
                               self.examples[nid])
        proto.check_setup()
        nodes = sorted(proto.keys)
        listed = {P.SECAGG_NODES: nodes,
                  P.SECAGG_PUBLIC_KEYS: [k for n in nodes for k in proto.keys[n][:2]],
                  P.SECAGG_SIGNERS: [proto.keys[n][2] for n in nodes],
                  P.SECAGG_SIGNATURES: [proto.keys[n][3] for n in nodes]}
        for nid in nodes:
            reply = self.send(P.SECAGG_SHARE_KEYS, nid, listed)
            if reply is not None:
                rec = reply.config_records[P.SECAGG]
                proto.add_ciphertexts(nid, list(rec[P.SECAGG_NODES]),
                                      list(rec[P.SECAGG_CIPHERTEXTS]))
        proto.need(proto.sharers, P.SECAGG_SHARE_KEYS)
        for nid in list(proto.sharers):
            sources, texts = proto.forward_for(nid)
            reply = self.send(P.SECAGG_MASK, nid, {P.SECAGG_SOURCES: sources,
                                                   P.SECAGG_CIPHERTEXTS: texts})
            if reply is not None:
                proto.add_masked(nid, reply.array_records[P.ARRAYS][P.SECAGG_MASKED].numpy())
        proto.need(proto.masked, P.SECAGG_MASK)
        for nid in list(proto.masked):
            reply = self.send(P.SECAGG_CHECK, nid, {P.SECAGG_SUMMED: list(proto.masked)})
            if reply is not None:
                try:  # a signature of another view is dropped, as server/secagg_phase.py does
                    proto.add_signature(nid, reply.config_records[P.SECAGG][P.SECAGG_SIGNATURES][0])
                except UpdateError:
                    pass
        proto.need(proto.signatures, P.SECAGG_CHECK)
        for nid in list(proto.signatures):
            reply = self.send(P.SECAGG_UNMASK, nid, {
                P.SECAGG_NODES: list(proto.signatures),
                P.SECAGG_SIGNATURES: list(proto.signatures.values())})
            if reply is not None:
                rec = reply.config_records[P.SECAGG]
                proto.add_unmask_shares(nid, list(rec[P.SECAGG_NODES]),
                                        list(rec[P.SECAGG_SHARES]))
        return proto


def config_for(tmp_path: Path, **changes: Any) -> RunConfig:
    return RunConfig(secure_aggregation=True, max_partner_weight=100.0,
                     out_dir=str(tmp_path / "run"), **changes)


def test_an_honest_round_sums_to_the_capped_fedavg(tmp_path: Path) -> None:
    rnd = Round(config_for(tmp_path), {11: 40.0, 22: 60.0, 33: 100.0})
    mean, error = rnd.run().mean_update()
    expected = fedavg([({"w": rnd.deltas[n]}, w) for n, w in rnd.examples.items()])["w"]
    assert not rnd.refusals and np.max(np.abs(mean - expected)) <= error


@pytest.mark.parametrize("key, bad", [
    (P.SECAGG_MAX_WEIGHT, 1e12), (P.SECAGG_CLIPPING_RANGE, 1e-3),
    (P.SECAGG_QUANTIZATION_RANGE, 2**10), (P.SECAGG_MOD_RANGE, 2**16), (P.SECAGG_THRESHOLD, 1)])
def test_a_setup_parameter_that_differs_from_the_run_config_is_refused(
        tmp_path: Path, key: str, bad: Any, caplog: pytest.LogCaptureFixture) -> None:
    config = config_for(tmp_path)
    good = {P.SECAGG_THRESHOLD: 2, **setup_parameters(config)}
    check_setup(good, config)
    with pytest.raises(PrivacyError, match=f"{key} = {bad!r}"):
        check_setup({**good, key: bad}, config)
    # through the partner's glue: the reply is a refusal without public keys, the spent
    # privacy history still goes back, and the partner logs why
    rnd = Round(config, {11: 40.0, 22: 60.0, 33: 100.0},
                tamper=lambda stage, nid, v: {**v, key: bad} if nid == 22 else v)
    with caplog.at_level(logging.ERROR, logger="client.secagg"):
        assert rnd.send(P.SECAGG_SETUP, 22, good) is None
    assert key in rnd.refusals[22] and "refuses secure aggregation" in caplog.text


def test_the_weight_isolation_attack_is_refused_and_cannot_shrink_the_others(
        tmp_path: Path) -> None:
    """The attack of issue 13: the target gets its own weight as normaliser, the others 1e12,
    so the others' weights would round to 0 and the "sum" would be the target's update."""
    examples = {11: 40.0, 22: 60.0, 33: 100.0}
    target = 11

    def isolate(stage: str, nid: int, values: dict[str, Any]) -> dict[str, Any]:
        if stage == P.SECAGG_SETUP:
            return {**values, P.SECAGG_MAX_WEIGHT: examples[nid] if nid == target else 1e12}
        if stage == P.SECAGG_MASK and nid != target:  # the old per-partner normaliser: ignored
            return {**values, P.SECAGG_MAX_WEIGHT: 1e12}
        return values

    rnd = Round(config_for(tmp_path), examples, tamper=isolate)
    with pytest.raises(Exception, match="threshold"):  # every partner refuses: nothing to unmask
        rnd.run()
    assert set(rnd.refusals) == set(examples)
    assert all("max-weight" in reason for reason in rnd.refusals.values())
    # sent at the masking stage only, a normaliser changes nothing: partners use the run config's
    rnd = Round(config_for(tmp_path), examples,
                tamper=lambda s, n, v: isolate(s, n, v) if s == P.SECAGG_MASK else v)
    mean, error = rnd.run().mean_update()
    expected = fedavg([({"w": rnd.deltas[n]}, w) for n, w in examples.items()])["w"]
    assert not rnd.refusals and np.max(np.abs(mean - expected)) <= error


@pytest.mark.parametrize("stage_values, reason", [
    (lambda v: {**v, P.SECAGG_NODES: v[P.SECAGG_NODES][1:],  # drops node 11 from the list
                P.SECAGG_PUBLIC_KEYS: v[P.SECAGG_PUBLIC_KEYS][2:]}, "not in the node list"),
    (lambda v: {**v, P.SECAGG_NODES: v[P.SECAGG_NODES][:1],
                P.SECAGG_PUBLIC_KEYS: v[P.SECAGG_PUBLIC_KEYS][:2]}, "at least 2 must"),
])
def test_a_bad_node_list_is_refused(tmp_path: Path, stage_values, reason: str) -> None:
    rnd = Round(config_for(tmp_path), {11: 40.0, 22: 60.0, 33: 100.0},
                tamper=lambda s, n, v: stage_values(v) if s == P.SECAGG_SHARE_KEYS and n == 11
                else v)
    rnd.run()  # the other two go on (threshold 2 of 3)
    assert reason in rnd.refusals[11] and set(rnd.refusals) == {11}


def test_a_threshold_below_the_run_share_is_refused(tmp_path: Path) -> None:
    """5 partners at secagg-threshold 0.8 need t = 4; a coordinator announcing t = 3 (still
    above half, so the protocol's own check passes) is refused by every partner."""
    config = config_for(tmp_path, secagg_threshold=0.8)
    rnd = Round(config, {n: 50.0 for n in (11, 22, 33, 44, 55)},
                tamper=lambda s, n, v: {**v, P.SECAGG_THRESHOLD: 3} if s == P.SECAGG_SETUP else v)
    with pytest.raises(Exception, match="threshold"):
        rnd.run()
    assert len(rnd.refusals) == 5
    assert all("needs 4 <= t <= 5" in reason for reason in rnd.refusals.values())


def test_min_partners_refuses_a_round_with_fewer_partners(tmp_path: Path) -> None:
    """A partner whose policy is min-partners = 4 sees 3 public keys in share-keys: it refuses
    (logged, in its audit log); the others, with no such rule, go on."""
    rnd = Round(config_for(tmp_path), {11: 40.0, 22: 60.0, 33: 100.0}, min_partners={22: 4})
    rnd.run()
    assert set(rnd.refusals) == {22} and "this partner's min-partners 4" in rnd.refusals[22]
    audit = [json.loads(line) for line in
             (tmp_path / "run" / "ledger" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["partner"] == "p22" and "share-keys" in audit[-1]["refused"]
    assert Round(config_for(tmp_path), {11: 40.0, 22: 60.0, 33: 100.0, 44: 10.0},
                 min_partners={22: 4}).run().masked  # with 4 it takes part


def test_min_partners_refuses_to_unmask_a_sum_of_too_few(tmp_path: Path) -> None:
    """Five partners share keys (t = 3), but the coordinator tells two of them that only three
    are summed: the one with min-partners = 4 signs nothing, the one without that rule signs
    (the threshold alone allows it). That signature is of another view than the other three
    signed, so it unmasks nothing; those three unmask the sum of all five."""
    def shrink(stage: str, nid: int, values: dict[str, Any]) -> dict[str, Any]:
        if stage == P.SECAGG_CHECK and nid in (11, 22):
            return {**values, P.SECAGG_SUMMED: [11, 22, 33]}
        return values

    examples = {11: 40.0, 22: 60.0, 33: 100.0, 44: 10.0, 55: 20.0}
    rnd = Round(config_for(tmp_path, secagg_threshold=0.51), examples, tamper=shrink,
                min_partners={11: 4})
    proto = rnd.run()
    assert "at least 4 must be in it" in rnd.refusals[11] and set(rnd.refusals) == {11}
    assert sorted(proto.signatures) == sorted(proto.unmaskers) == [33, 44, 55]
    mean, error = proto.mean_update()
    expected = fedavg([({"w": rnd.deltas[n]}, w) for n, w in examples.items()])["w"]
    assert np.max(np.abs(mean - expected)) <= error


def _forged(nid: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Keys the coordinator makes up for a node, signed with a key of its own."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from client.secagg_protocol import PartnerSecAgg
    from common.wire.secagg_identity import Identity

    key = ec.generate_private_key(ec.SECP384R1())
    params = {P.SECAGG_THRESHOLD: 3, **setup_parameters(config_for(Path(".")))}
    return PartnerSecAgg().setup(nid, params, Identity(key, {}))


def add_forged_partner(stage: str, nid: int, values: dict[str, Any]) -> dict[str, Any]:
    """At share-keys, list a made-up node 99 beside the real ones (a threshold of 3, announced
    at setup, is what 4 partners need: the forgery passes every check but the signatures)."""
    if stage == P.SECAGG_SETUP:
        return {**values, P.SECAGG_THRESHOLD: 3}
    if stage != P.SECAGG_SHARE_KEYS:
        return values
    pk1, pk2, signer, signature = _forged(99)
    return {**values, P.SECAGG_NODES: [*values[P.SECAGG_NODES], 99],
            P.SECAGG_PUBLIC_KEYS: [*values[P.SECAGG_PUBLIC_KEYS], pk1, pk2],
            P.SECAGG_SIGNERS: [*values[P.SECAGG_SIGNERS], signer],
            P.SECAGG_SIGNATURES: [*values[P.SECAGG_SIGNATURES], signature]}


def test_a_forged_partner_is_refused_by_every_partner(tmp_path: Path) -> None:
    rnd = Round(config_for(tmp_path), {11: 40.0, 22: 60.0, 33: 100.0}, tamper=add_forged_partner)
    with pytest.raises(Exception, match="threshold"):  # nobody shares keys with it
        rnd.run()
    assert set(rnd.refusals) == {11, 22, 33}
    assert all("not among this partner's peers" in r for r in rnd.refusals.values())
    audit = [json.loads(line) for line in
             (tmp_path / "run" / "ledger" / "audit.jsonl").read_text().splitlines()]
    assert "not among this partner's peers" in audit[-1]["refused"]


def test_enrolled_keys_sign_a_round_and_a_stranger_is_refused(tmp_path: Path) -> None:
    """Partners with `consortium partner keygen` keys (peers: the keys' directory) complete a
    round; a partner whose key is not in that directory is refused by the others."""
    from common.infra.keys import generate_node_keys

    examples = {11: 40.0, 22: 60.0, 33: 100.0, 44: 70.0}
    keys = {n: generate_node_keys(tmp_path / "keys", f"p{n}")[0] for n in (11, 22, 33)}
    keys[44] = generate_node_keys(tmp_path / "elsewhere", "p44")[0]
    (tmp_path / "elsewhere" / "p11.pub").write_bytes((tmp_path / "keys" / "p11.pub").read_bytes())
    rnd = Round(config_for(tmp_path), {n: examples[n] for n in (11, 22, 33)}, keys=keys)
    mean, error = rnd.run().mean_update()
    expected = fedavg([({"w": rnd.deltas[n]}, w) for n, w in rnd.examples.items()])["w"]
    assert not rnd.refusals and np.max(np.abs(mean - expected)) <= error
    rnd = Round(config_for(tmp_path, secagg_threshold=0.51), examples, keys=keys)
    with pytest.raises(Exception, match="threshold"):
        rnd.run()  # p44 knows only p11; the others know no p44: every partner refuses
    assert set(rnd.refusals) == {11, 22, 33, 44}
    assert "not among this partner's peers" in rnd.refusals[11]
