"""Who a partner is under secure aggregation, and what it signs (Bonawitz et al. 2017, the
protocol against a malicious server). No flwr here; the signatures are `cryptography`'s ECDSA.

A partner signs with the EC P-384 key it was enrolled with (`consortium partner keygen`, the
key Flower's node authentication uses; `--key` of `consortium partner start`) and accepts as
peers only the public keys in its own ``secagg-peers`` directory (NAME.pub files, each checked
with its partner by fingerprint). So a coordinator can neither invent partners nor speak for
one. Two statements are signed, each under its own domain tag (Flower's node authentication
signs timestamps with the same key, never a string that starts with these tags):

- the key statement, at setup: (node id, pk1, pk2), the round's fresh key-exchange keys;
- the view statement, at the consistency check: the threshold, every listed partner's signed
  keys (U1), the partners it exchanged shares with (U2) and those whose masked update is in the
  sum (U3). A partner unmasks only after t partners have signed its very view.

A simulated partner (no data file of its own) has no enrolled key: its key is derived from the
run's ``seed`` and its ``partition-id``, and its peers are the run's ``num-partitions`` such keys.
Anyone who knows the seed can derive them, the coordinator included: in simulation the
signatures exercise the protocol, they protect nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import PrivacyError

_KEY_TAG = b"consortium secagg key statement v1\x00"
_VIEW_TAG = b"consortium secagg view statement v1\x00"
_SIM_INFO = b"consortium simulated partner signing key v1"
_CURVE = ec.SECP384R1()
_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
             "581a0db248b0a77aecec196accc52973", 16)  # of P-384 (SEC 2, 2.5.1)


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """A public key as it travels and as a peers' file holds it: OpenSSH, no comment."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(public: bytes) -> str:
    """SHA-256 of the OpenSSH key, as `consortium partner keygen` prints it."""
    return "SHA256:" + hashlib.sha256(public).hexdigest()


@dataclass(frozen=True)
class Identity:
    """This partner's signing key and the peers it accepts (OpenSSH public key -> name)."""

    key: ec.EllipticCurvePrivateKey
    peers: Mapping[bytes, str]

    @property
    def public(self) -> bytes:
        return public_bytes(self.key.public_key())

    def sign(self, statement: bytes) -> bytes:
        return self.key.sign(statement, ec.ECDSA(hashes.SHA384()))

    def peer_name(self, public: bytes) -> str | None:
        return self.peers.get(public)


def verify(public: bytes, signature: bytes, statement: bytes) -> bool:
    """Whether ``signature`` is ``public``'s ECDSA P-384 signature of ``statement``."""
    try:
        key = serialization.load_ssh_public_key(public)
    except (ValueError, UnsupportedAlgorithm):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _CURVE.name:
        return False
    try:
        key.verify(signature, statement, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def key_statement(nid: int, pk1: bytes, pk2: bytes) -> bytes:
    """What a partner signs at setup: its node id and the round's fresh public keys."""
    return _KEY_TAG + _canonical({"node": nid, "pk1": pk1.hex(), "pk2": pk2.hex()})


def view_statement(threshold: int, keys: Sequence[tuple[int, bytes, bytes, bytes]],
                   shared: Sequence[int], summed: Sequence[int]) -> bytes:
    """What a partner signs before unmasking: t, U1 as (node, pk1, pk2, signing key), U2, U3."""
    return _VIEW_TAG + _canonical({
        "threshold": threshold,
        "keys": sorted([n, a.hex(), b.hex(), c.hex()] for n, a, b, c in keys),
        "shared": sorted(shared), "summed": sorted(summed)})


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load_identity(key_path: Path, peers_dir: Path) -> Identity:
    """A real partner's identity: its enrolled private key and the NAME.pub files in
    ``peers_dir`` (its own among them). Refuses rather than guess (PrivacyError)."""
    try:
        key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, UnsupportedAlgorithm):
        raise PrivacyError("secure aggregation: cannot read the signing key that node config "
                           "secagg-key names (missing, unreadable, or not an unencrypted "
                           "OpenSSH private key)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
        raise PrivacyError("secure aggregation: secagg-key is not an EC P-384 key; use the key "
                           "of `consortium partner keygen`")
    peers: dict[bytes, str] = {}
    for path in sorted(peers_dir.glob("*.pub")) if peers_dir.is_dir() else []:
        fields = path.read_bytes().split()
        try:
            peer = serialization.load_ssh_public_key(b" ".join(fields[:2]))
        except (ValueError, UnsupportedAlgorithm, IndexError):
            raise PrivacyError(f"secure aggregation: {path.name} in secagg-peers is not an "
                               "OpenSSH public key") from None
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != _CURVE.name:
            raise PrivacyError(f"secure aggregation: {path.name} in secagg-peers is not an EC "
                               "P-384 key (`consortium partner keygen` makes those)")
        peers[public_bytes(peer)] = path.name[:-len(".pub")]
    identity = Identity(key, peers)
    if identity.public not in peers:
        raise PrivacyError(f"secure aggregation: secagg-peers holds {len(peers)} key(s), "
                           "not this partner's own; put every partner's NAME.pub there, each "
                           "checked with its partner by fingerprint, this partner's too")
    return identity


def simulated_key(seed: int, partition: int) -> ec.EllipticCurvePrivateKey:
    """The signing key of simulated partner ``partition`` in a run with ``seed``: public to
    anyone who knows the seed (simulation only)."""
    material = HKDF(hashes.SHA384(), 64, salt=None, info=_SIM_INFO).derive(
        f"{seed}/{partition}".encode())
    return ec.derive_private_key(int.from_bytes(material, "big") % (_ORDER - 1) + 1, _CURVE)


def simulated_identity(seed: int, partition: int, partitions: int) -> Identity:
    """A simulated partner's identity: its derived key; its peers, the run's partitions."""
    if not 0 <= partition < partitions:
        raise PrivacyError(f"secure aggregation: partition-id {partition} is not below "
                           f"num-partitions {partitions}")
    peers = {public_bytes(simulated_key(seed, p).public_key()): f"partner-{p}"
             for p in range(partitions)}
    return Identity(simulated_key(seed, partition), peers)
