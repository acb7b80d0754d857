"""Who a partner is under secure aggregation (common.wire.secagg_identity,
client.secagg.identity_of): its enrolled key signs, its peers' directory says whom it accepts;
simulated partners derive both from the run's seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.policy import PartnerSettings
from client.secagg import identity_of
from common.config import RunConfig
from common.errors import PrivacyError
from common.infra.keys import generate_node_keys, load_node_public_key
from common.wire.secagg_identity import (fingerprint, key_statement, load_identity,
                                    simulated_identity, verify, view_statement)


def test_an_enrolled_key_signs_and_its_peers_are_the_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    private, public = generate_node_keys(keys, "org-a")
    generate_node_keys(keys, "org-b")
    identity = load_identity(private, keys)
    assert sorted(identity.peers.values()) == ["org-a", "org-b"]
    assert identity.peer_name(identity.public) == "org-a"
    assert fingerprint(identity.public) == load_node_public_key(public)  # what keygen printed
    statement = key_statement(7, b"pk1", b"pk2")
    signature = identity.sign(statement)
    assert verify(identity.public, signature, statement)
    assert not verify(identity.public, signature, key_statement(8, b"pk1", b"pk2"))
    assert not verify(b"not a key", signature, statement)
    view = view_statement(2, [(7, b"a", b"b", identity.public)], [7, 8], [8, 7])
    assert view == view_statement(2, [(7, b"a", b"b", identity.public)], [8, 7], [7, 8])
    assert view != view_statement(2, [(7, b"a", b"b", identity.public)], [7, 8], [7])


def test_a_peers_directory_without_the_partner_or_with_a_foreign_key_is_refused(
        tmp_path: Path) -> None:
    private, _ = generate_node_keys(tmp_path / "mine", "org-a")
    generate_node_keys(tmp_path / "theirs", "org-b")
    with pytest.raises(PrivacyError, match="not this partner's own"):
        load_identity(private, tmp_path / "theirs")
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "mine" / "odd.pub").write_bytes(other.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(PrivacyError, match="odd.pub .* not an EC P-384 key"):
        load_identity(private, tmp_path / "mine")
    with pytest.raises(PrivacyError, match="cannot read the signing key") as refused:
        load_identity(tmp_path / "missing", tmp_path / "mine")
    assert str(tmp_path) not in str(refused.value)  # a refusal travels: no path in it


def test_simulated_identities_are_derived_from_the_seed() -> None:
    a, b = simulated_identity(42, 0, 3), simulated_identity(42, 1, 3)
    assert a.public != b.public and a.peers == b.peers and len(a.peers) == 3
    assert simulated_identity(42, 0, 3).public == a.public  # every process derives the same
    assert simulated_identity(43, 0, 3).public not in a.peers  # another run's keys: strangers
    assert b.peer_name(a.public) == "partner-0"
    with pytest.raises(PrivacyError, match="partition-id 3"):
        simulated_identity(42, 3, 3)


def test_a_partner_with_its_own_data_needs_its_key(tmp_path: Path) -> None:
    config = RunConfig(secure_aggregation=True, seed=5)
    own = PartnerSettings("org-a", data_path=str(tmp_path / "a.csv"),
                          ledger_dir=str(tmp_path / "ledger"))
    with pytest.raises(PrivacyError, match="no signing key for secure aggregation"):
        identity_of(own, config)
    private, _ = generate_node_keys(tmp_path / "keys", "org-a")
    keyed = PartnerSettings.from_node_config({"partner-name": "org-a",
                                              "data-path": str(tmp_path / "a.csv"),
                                              "ledger-dir": str(tmp_path / "ledger"),
                                              "secagg-key": str(private)})
    assert identity_of(keyed, config).peer_name(identity_of(keyed, config).public) == "org-a"
    simulated = PartnerSettings.from_node_config({"partition-id": 1, "num-partitions": 2})
    assert identity_of(simulated, config).public == simulated_identity(5, 1, 2).public


def test_a_partner_without_its_key_refuses_before_any_epsilon(tiny_bert: str,
                                                             sentiment_csv: Path,
                                                             tmp_path: Path) -> None:
    """Through the ClientApp: a partner with its own data and no secagg-key answers the setup
    Message with a refusal, before it trains (its ledger stays empty)."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client import app
    from common import protocol as P
    from common.training.fingerprint import frozen_fingerprint
    from common.model.factory import build_model, trainable_state
    from common.wire.secagg_params import setup_parameters
    from common.wire.records import to_array_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = RunConfig(base_model=tiny_bert, max_length=16, batch_size=8, local_epochs=1,
                       labels="neg,pos", secure_aggregation=True, dp_plan_check=False,
                       out_dir=str(tmp_path / "out"))
    model = build_model(config, ("neg", "pos"))
    context = Context(1, 1, {"partner-name": "org-a", "data-path": str(sentiment_csv),
                             "ledger-dir": str(tmp_path / "ledger"),
                             "allow-unlearnable-rounds": True}, RecordDict(), config.to_mapping())
    msg = Message(RecordDict({
        P.ARRAYS: to_array_record(trainable_state(model)),
        P.CONFIG: ConfigRecord({P.ROUND: 1, P.MODEL_FINGERPRINT: frozen_fingerprint(model)}),
        P.SECAGG: ConfigRecord({P.SECAGG_STAGE: P.SECAGG_SETUP, P.SECAGG_THRESHOLD: 2,
                                **setup_parameters(config)})}),
        dst_node_id=1, message_type=MessageType.TRAIN, group_id="1")
    reply = app.train(msg, context)
    assert "no signing key for secure aggregation" in str(
        reply.content.config_records[P.PARTNER][P.REFUSAL])
    assert not list((tmp_path / "ledger").glob("org-a@*.json"))  # nothing trained, 0 spent
