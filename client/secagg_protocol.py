"""The partner's secure-aggregation protocol state (SecAgg+, Bell et al. 2020): keys, Shamir
shares, masks; the stages are described in client/secagg.py, which drives this from Messages.
The mask maths the coordinator repeats lives in common/wire/secagg.py.
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
from common.wire.secagg import mask_vector, pairwise_seed


def quantized_vector(delta: np.ndarray, ratio: float, clipping_range: float,
                     quantization_range: int) -> np.ndarray:
    """[round(ratio·T), quantize(ratio·Δ)]: weight and weighted update as integers in [0, T]."""
    weight = round(ratio * quantization_range)  # Δ is scaled by the weight as it is summed
    values = quantize([weight / quantization_range * delta], clipping_range, quantization_range)
    return np.concatenate([np.array([weight], dtype=np.int64), values[0].astype(np.int64)])


@dataclass
class PartnerSecAgg:
    """One partner's protocol state for one round; lives in ``context.state`` between Messages."""

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
    peers: list[int] = field(default_factory=list)  # every partner that shared keys, self too
    peer_pk1: list[bytes] = field(default_factory=list)
    peer_pk2: list[bytes] = field(default_factory=list)
    share_owners: list[int] = field(default_factory=list)  # shares held, for these partners
    seed_shares: list[bytes] = field(default_factory=list)
    sk1_shares: list[bytes] = field(default_factory=list)

    def ratio(self) -> float:
        """The weight this partner masks: min(examples, W) / W, W from its own run config."""
        if not self.max_weight > 0:
            raise PrivacyError("secure aggregation: no max-partner-weight was set at setup")
        return min(self.weight, self.max_weight) / self.max_weight

    def _expect(self, stage: str) -> None:
        order = P.SECAGG_STAGES
        if self.stage not in order or order[(order.index(self.stage) + 1) % len(order)] != stage:
            raise PrivacyError(f"secure aggregation: asked for stage {stage!r} after "
                               f"{self.stage or 'nothing'!r}; stages run in the order "
                               f"{list(order)}, once per round")
        self.stage = stage

    def setup(self, nid: int, params: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """Fresh key pairs for this round; returns (pk1, pk2)."""
        self.stage, self.nid = P.SECAGG_SETUP, nid
        self.threshold = int(params[P.SECAGG_THRESHOLD])
        self.clipping_range = float(params[P.SECAGG_CLIPPING_RANGE])
        self.quantization_range = int(params[P.SECAGG_QUANTIZATION_RANGE])
        self.mod_range = int(params[P.SECAGG_MOD_RANGE])
        if self.threshold < 2 or self.mod_range & (self.mod_range - 1) or \
                not 0 < self.quantization_range < self.mod_range <= 2**32:
            raise PrivacyError(f"secure aggregation: refusing unsafe parameters {dict(params)}")
        keys = [generate_key_pairs() for _ in range(2)]
        (self.sk1, self.pk1), (self.sk2, self.pk2) = (
            (private_key_to_bytes(sk), public_key_to_bytes(pk)) for sk, pk in keys)
        return self.pk1, self.pk2

    def share_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> tuple[list[int], list[bytes]]:
        """Split the private-mask seed and sk1 among the peers; returns (destinations,
        ciphertexts), one per peer other than this partner."""
        self._expect(P.SECAGG_SHARE_KEYS)
        if not len(keys) / 2 < self.threshold <= len(keys):
            raise PrivacyError(f"secure aggregation: threshold {self.threshold} for {len(keys)} "
                               "partners; it must be above half of them (else a coordinator "
                               "could collect both secrets of one partner) and at most all")
        if keys.get(self.nid) != (self.pk1, self.pk2):
            raise PrivacyError("secure aggregation: the coordinator relayed wrong own keys")
        flat = [k for pair in keys.values() for k in pair]
        if len(set(flat)) != len(flat):
            raise PrivacyError("secure aggregation: two partners announced the same public key")
        self.peers = sorted(keys)
        self.peer_pk1 = [keys[n][0] for n in self.peers]
        self.peer_pk2 = [keys[n][1] for n in self.peers]
        self.seed = os.urandom(32)
        seed_shares = create_shares(self.seed, self.threshold, len(self.peers))
        sk1_shares = create_shares(self.sk1, self.threshold, len(self.peers))
        dsts, ciphertexts = [], []
        for i, peer in enumerate(self.peers):
            if peer == self.nid:
                self._hold(self.nid, seed_shares[i], sk1_shares[i])
                continue
            key = generate_shared_key(bytes_to_private_key(self.sk2),
                                      bytes_to_public_key(self.peer_pk2[i]))
            plain = share_keys_plaintext_concat(self.nid, peer, seed_shares[i], sk1_shares[i])
            dsts.append(peer)
            ciphertexts.append(encrypt(key, plain))
        return dsts, ciphertexts

    def _hold(self, owner: int, seed_share: bytes, sk1_share: bytes) -> None:
        self.share_owners.append(owner)
        self.seed_shares.append(seed_share)
        self.sk1_shares.append(sk1_share)

    def mask(self, sources: list[int], ciphertexts: list[bytes], delta: np.ndarray,
             ratio: float) -> np.ndarray:
        """Store the peers' shares; return the masked [w, w·Δ] as uint32 (flat)."""
        self._expect(P.SECAGG_MASK)
        if len(sources) + 1 < self.threshold:
            raise PrivacyError(f"secure aggregation: shares from {len(sources)} peers, the "
                               f"threshold is {self.threshold}")
        if not 0 < ratio <= 1 or not math.isfinite(ratio):
            raise PrivacyError(f"secure aggregation: weight ratio {ratio} is not in (0, 1]")
        for src, ciphertext in zip(sources, ciphertexts, strict=True):
            i = self.peers.index(src)  # ValueError for a partner that never shared keys
            key = generate_shared_key(bytes_to_private_key(self.sk2),
                                      bytes_to_public_key(self.peer_pk2[i]))
            real_src, dst, seed_share, sk1_share = share_keys_plaintext_separate(
                decrypt(key, ciphertext))
            if (real_src, dst) != (src, self.nid):
                raise PrivacyError(f"secure aggregation: a share from {real_src} to {dst} was "
                                   f"relayed as from {src} to {self.nid}")
            self._hold(src, seed_share, sk1_share)
        vector = quantized_vector(delta, ratio, self.clipping_range, self.quantization_range)
        vector += mask_vector(self.seed, vector.size, self.mod_range)
        for src in sources:
            pairwise = mask_vector(pairwise_seed(self.sk1, self.peer_pk1[self.peers.index(src)]),
                                   vector.size, self.mod_range)
            vector += pairwise if self.nid > src else -pairwise
        return (vector & (self.mod_range - 1)).astype(np.uint32)

    def unmask(self, active: list[int], dead: list[int]) -> tuple[list[int], list[bytes]]:
        """Shares of the survivors' mask seeds and of the dropouts' sk1: (owners, shares)."""
        self._expect(P.SECAGG_UNMASK)
        if set(active) & set(dead) or self.nid not in active or len(active) < self.threshold:
            raise PrivacyError(f"secure aggregation: refusing to unmask, survivors {active} / "
                               f"dropouts {dead} are inconsistent or below the threshold "
                               f"{self.threshold}")
        unknown = set(active + dead) - set(self.share_owners)
        if unknown:
            raise PrivacyError(f"secure aggregation: holds no share for partners {unknown}")
        owners = active + dead
        shares = [self.seed_shares[self.share_owners.index(n)] for n in active]
        shares += [self.sk1_shares[self.share_owners.index(n)] for n in dead]
        return owners, shares

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(asdict(self))  # type: ignore[arg-type]

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> PartnerSecAgg:
        return cls(**dict(record)) if record else cls()  # type: ignore[arg-type]
