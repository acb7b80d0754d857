"""The partner's secure-aggregation protocol state (SecAgg+, Bell et al. 2020, with the
consistency check of Bonawitz et al. 2017 against a malicious coordinator): keys, signatures,
Shamir shares, masks. The stages are described in client/secagg.py, which drives this from
Messages; the mask maths the coordinator repeats lives in common/wire/secagg.py, the signed
statements in common/wire/secagg_identity.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
from flwr.app import ConfigRecord
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (decrypt, encrypt,
                                                                        generate_shared_key)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (share_keys_plaintext_concat,
                                                             share_keys_plaintext_separate)
from flwr.supercore.primitives.asymmetric import (bytes_to_private_key, bytes_to_public_key,
                                                  generate_key_pairs, private_key_to_bytes,
                                                  public_key_to_bytes)

from common import protocol as P
from common.errors import PrivacyError
from common.wire.secagg_identity import (Identity, fingerprint, key_statement, verify,
                                    view_statement)
from common.wire.secagg import mask_vector, pairwise_seed

SignedKeys = tuple[bytes, bytes, bytes, bytes]  # pk1, pk2, signing public key, its signature


def quantized_vector(delta: np.ndarray, ratio: float, clipping_range: float,
                     quantization_range: int) -> np.ndarray:
    """[round(ratio·T), quantize(ratio·Δ)]: weight and weighted update as integers in [0, T]."""
    weight = round(ratio * quantization_range)  # Δ is scaled by the weight as it is summed
    values = quantize([weight / quantization_range * delta], clipping_range, quantization_range)
    return np.concatenate([np.array([weight], dtype=np.int64), values[0].astype(np.int64)])


def _refuse(reason: str) -> PrivacyError:
    return PrivacyError(f"secure aggregation: {reason}")


def _distinct(nodes: list[int], what: str) -> None:
    if len(set(nodes)) != len(nodes):
        raise _refuse(f"the {what} list repeats a node")


@dataclass
class PartnerSecAgg:
    """One partner's protocol state for one round; lives in ``context.state`` between Messages.

    Its view of the round: ``peers`` (U1, every partner listed with signed keys, itself too),
    ``shared`` (U2: itself and the peers whose key shares it received, which its masked
    update is masked with) and ``summed`` (U3: whose masked updates the sum holds, as it signed).
    """

    stage: str = ""
    nid: int = 0
    threshold: int = 0
    clipping_range: float = 0.0
    quantization_range: int = 0
    mod_range: int = 0
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""  # of the private mask
    weight: float = 0.0  # this partner's examples this round
    max_weight: float = 0.0  # the run config's max-partner-weight: the weight's normaliser
    peers: list[int] = field(default_factory=list)
    peer_pk1: list[bytes] = field(default_factory=list)
    peer_pk2: list[bytes] = field(default_factory=list)
    peer_signers: list[bytes] = field(default_factory=list)  # each peer's signing public key
    share_owners: list[int] = field(default_factory=list)  # shares held, for these partners
    seed_shares: list[bytes] = field(default_factory=list)
    sk1_shares: list[bytes] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)
    summed: list[int] = field(default_factory=list)

    def ratio(self) -> float:
        """The weight this partner masks: min(examples, W) / W, W from its own run config."""
        if not self.max_weight > 0:
            raise _refuse("no max-partner-weight was set at setup")
        return min(self.weight, self.max_weight) / self.max_weight

    def _expect(self, stage: str) -> None:
        order = P.SECAGG_STAGES
        if self.stage not in order or order[(order.index(self.stage) + 1) % len(order)] != stage:
            raise _refuse(f"asked for stage {stage!r} after {self.stage or 'nothing'!r}; stages "
                          f"run in the order {list(order)}, once per round")
        self.stage = stage

    def setup(self, nid: int, params: Mapping[str, Any], identity: Identity) -> SignedKeys:
        """Fresh key pairs for this round; returns them signed with this partner's key."""
        self.stage, self.nid = P.SECAGG_SETUP, nid
        self.threshold = int(params[P.SECAGG_THRESHOLD])
        self.clipping_range = float(params[P.SECAGG_CLIPPING_RANGE])
        self.quantization_range = int(params[P.SECAGG_QUANTIZATION_RANGE])
        self.mod_range = int(params[P.SECAGG_MOD_RANGE])
        if self.threshold < 2 or self.mod_range & (self.mod_range - 1) or \
                not 0 < self.quantization_range < self.mod_range <= 2**32:
            raise _refuse(f"refusing unsafe parameters {dict(params)}")
        keys = [generate_key_pairs() for _ in range(2)]
        (self.sk1, self.pk1), (self.sk2, self.pk2) = (
            (private_key_to_bytes(sk), public_key_to_bytes(pk)) for sk, pk in keys)
        signature = identity.sign(key_statement(nid, self.pk1, self.pk2))
        return self.pk1, self.pk2, identity.public, signature

    def share_keys(self, keys: Mapping[int, SignedKeys],
                   identity: Identity) -> tuple[list[int], list[bytes]]:
        """Check every listed partner's signed keys, then split the private-mask seed and sk1
        among them; returns (destinations, ciphertexts), one per peer other than itself."""
        self._expect(P.SECAGG_SHARE_KEYS)
        if not len(keys) / 2 < self.threshold <= len(keys):
            raise _refuse(f"threshold {self.threshold} for {len(keys)} partners; it must be "
                          "above half of them (else a coordinator could collect both secrets "
                          "of one partner) and at most all")
        if tuple(keys.get(self.nid, ())[:3]) != (self.pk1, self.pk2, identity.public):
            raise _refuse("the coordinator relayed wrong own keys")
        self._check_signed(keys, identity)
        flat = [k for signed in keys.values() for k in signed[:2]]
        if len(set(flat)) != len(flat):
            raise _refuse("two partners announced the same public key")
        self.peers = sorted(keys)
        self.peer_pk1, self.peer_pk2, self.peer_signers = (
            [keys[n][i] for n in self.peers] for i in range(3))
        self.seed = os.urandom(32)
        seed_shares = create_shares(self.seed, self.threshold, len(self.peers))
        sk1_shares = create_shares(self.sk1, self.threshold, len(self.peers))
        dsts, ciphertexts = [], []
        for i, peer in enumerate(self.peers):
            if peer == self.nid:
                self._hold(self.nid, seed_shares[i], sk1_shares[i])
                continue
            plain = share_keys_plaintext_concat(self.nid, peer, seed_shares[i], sk1_shares[i])
            dsts.append(peer)
            ciphertexts.append(encrypt(self._channel(i), plain))
        return dsts, ciphertexts

    @staticmethod
    def _check_signed(keys: Mapping[int, SignedKeys], identity: Identity) -> None:
        """Each listed partner is one of this partner's peers, once, and signed its keys."""
        seen: dict[bytes, int] = {}
        for nid, (pk1, pk2, signer, signature) in keys.items():
            name = identity.peer_name(signer)
            if name is None:
                raise _refuse(f"node {nid} signs with key {fingerprint(signer)}, which is not "
                              "among this partner's peers (secagg-peers): a partner that was "
                              "never enrolled, or one the coordinator made up")
            if signer in seen:
                raise _refuse(f"partner {name} is listed twice (nodes {seen[signer]}, {nid})")
            seen[signer] = nid
            if not verify(signer, signature, key_statement(nid, pk1, pk2)):
                raise _refuse(f"the keys of node {nid} are not signed by partner {name}")

    def _channel(self, i: int) -> bytes:
        return generate_shared_key(bytes_to_private_key(self.sk2),
                                   bytes_to_public_key(self.peer_pk2[i]))

    def _hold(self, owner: int, seed_share: bytes, sk1_share: bytes) -> None:
        self.share_owners.append(owner)
        self.seed_shares.append(seed_share)
        self.sk1_shares.append(sk1_share)

    def mask(self, sources: list[int], ciphertexts: list[bytes], delta: np.ndarray,
             ratio: float) -> np.ndarray:
        """Store the peers' shares; return the masked [w, w·Δ] as uint32 (flat)."""
        self._expect(P.SECAGG_MASK)
        _distinct(sources, "share sources")
        if len(sources) + 1 < self.threshold:
            raise _refuse(f"shares from {len(sources)} peers, the threshold is {self.threshold}")
        if not 0 < ratio <= 1 or not math.isfinite(ratio):
            raise _refuse(f"weight ratio {ratio} is not in (0, 1]")
        unknown = set(sources) - set(self.peers) | ({self.nid} & set(sources))
        if unknown:
            raise _refuse(f"shares relayed as from {sorted(unknown)}, not peers of this one")
        for src, ciphertext in zip(sources, ciphertexts, strict=True):
            real_src, dst, seed_share, sk1_share = share_keys_plaintext_separate(
                decrypt(self._channel(self.peers.index(src)), ciphertext))
            if (real_src, dst) != (src, self.nid):
                raise _refuse(f"a share from {real_src} to {dst} was relayed as from {src} to "
                              f"{self.nid}")
            self._hold(src, seed_share, sk1_share)
        self.shared = sorted([*sources, self.nid])
        return self.add_masks(quantized_vector(delta, ratio, self.clipping_range,
                                               self.quantization_range))

    def add_masks(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` (integers) + this partner's private mask ± a pairwise mask per partner it
        shared keys with, mod the modulus, as uint32: to the coordinator, noise."""
        vector = vector + mask_vector(self.seed, vector.size, self.mod_range)
        for peer in self.shared:
            if peer != self.nid:
                pairwise = mask_vector(pairwise_seed(self.sk1, self.peer_pk1[
                    self.peers.index(peer)]), vector.size, self.mod_range)
                vector += pairwise if self.nid > peer else -pairwise
        return (vector & (self.mod_range - 1)).astype(np.uint32)

    def view(self) -> bytes:
        """The statement this partner signs: t, U1 with the signed keys, U2, U3."""
        keys = [(n, a, b, s) for n, a, b, s in zip(self.peers, self.peer_pk1, self.peer_pk2,
                                                     self.peer_signers)]
        return view_statement(self.threshold, keys, self.shared, self.summed)

    def check(self, summed: list[int], identity: Identity) -> bytes:
        """Consistency check: sign this partner's view, with U3 = ``summed`` (itself in it, all
        partners it masked with, at least t)."""
        self._expect(P.SECAGG_CHECK)
        _distinct(summed, "summed")
        if self.nid not in summed or set(summed) - set(self.shared) or \
                len(summed) < self.threshold:
            raise _refuse(f"the sum would hold {sorted(summed)}: it must hold this partner, only "
                          f"partners it masked with ({self.shared}), and at least the threshold "
                          f"{self.threshold}")
        self.summed = sorted(summed)
        return identity.sign(self.view())

    def unmask(self, signers: list[int], signatures: list[bytes]) -> tuple[list[int],
                                                                           list[bytes]]:
        """Once t partners of U3 signed this partner's own view: shares of the private-mask
        seeds of U3 and of the sk1 of U2 − U3 (partners that dropped out), never both for one
        partner. Returns (owners, shares)."""
        self._expect(P.SECAGG_UNMASK)
        _distinct(signers, "signers")
        if set(signers) - set(self.summed) or len(signers) < self.threshold:
            raise _refuse(f"signatures of {sorted(signers)}: unmasking needs at least the "
                          f"threshold {self.threshold} of the partners summed {self.summed}")
        view = self.view()
        for nid, signature in zip(signers, signatures, strict=True):
            if not verify(self.peer_signers[self.peers.index(nid)], signature, view):
                raise _refuse(f"node {nid} did not sign this partner's view of the round (who "
                              "took part, who is summed): the coordinator gave partners "
                              "different views; refusing to unmask")
        dead = [n for n in self.shared if n not in self.summed]
        missing = set(self.shared) - set(self.share_owners)
        if missing:
            raise _refuse(f"holds no share for partners {sorted(missing)}")
        shares = [self.seed_shares[self.share_owners.index(n)] for n in self.summed]
        shares += [self.sk1_shares[self.share_owners.index(n)] for n in dead]
        return self.summed + dead, shares

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(asdict(self))  # type: ignore[arg-type]

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> PartnerSecAgg:
        return cls(**dict(record)) if record else cls()  # type: ignore[arg-type]
