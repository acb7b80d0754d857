"""The coordinator's side of secure aggregation (SecAgg+), on the Message API.

The stages (client/secagg.py has the partner's view): setup (partners train and send public keys
signed with their enrolled key, and their example count) → share keys (relay the signed keys,
collect encrypted key shares) → collect masked vectors (relay each partner its shares, sum the
masked [w, w·Δ] mod 2^32 as they arrive) → consistency check (tell the summed partners who is
summed, collect their signatures of their view of the round) → unmask (relay those signatures;
partners that find t of them over their own view send the shares that rebuild the summed
partners' private masks and the dropouts' pairwise masks; remove them, dequantize, divide by Σw).

What the coordinator learns: the example-weighted mean update of the partners whose masked update
arrived, each partner's example count, train loss and privacy numbers (as without secure
aggregation; the per-update norm is withheld), and who dropped out when. Never one partner's
update: each masked vector is uniform mod 2^32 to anyone lacking t shares, and partners unmask
only a set of summed partners that t of them signed (Bonawitz et al. 2017, malicious server),
so lying to partners about who took part or who dropped out gains nothing. Signatures are
checked here too, so a partner whose signature fails is dropped before it spoils the round.

What it cannot check (no zero-knowledge proofs): what a partner masked. ``aggregate_bounds`` is
all that holds of the aggregate whatever one partner masks; docs/privacy.md states it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.quantization import dequantize

from common import protocol as P
from common.errors import ConsortiumError, UpdateError
from common.wire.secagg_identity import key_statement, verify, view_statement
from common.wire.secagg_params import MOD_RANGE, threshold_for  # noqa: F401 (re-exported)
from common.wire.secagg import mask_vector, pairwise_seed
from common.wire.weights import capped_weight

logger = logging.getLogger(__name__)


class SecAggError(ConsortiumError):
    """The round cannot complete securely (too many dropouts, inconsistent sums)."""


@dataclass
class SecAggRound:
    """One round of the protocol at the coordinator: the maths and bookkeeping, no transport.

    Partner sets per stage: ``keys`` (setup replied: pk1, pk2, signing key, signature),
    ``sharers`` (key shares replied), ``masked`` (masked update arrived), ``signatures`` (signed
    the view in the consistency check), and the shares collected in unmask."""

    threshold: int
    clipping_range: float
    quantization_range: int
    length: int  # flat update length (the weight entry excluded)
    max_weight: float  # max-partner-weight W: weights are min(n, W), masked as min(n, W) / W
    keys: dict[int, tuple[bytes, bytes, bytes, bytes]] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    sharers: list[int] = field(default_factory=list)
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    masked: list[int] = field(default_factory=list)
    total: np.ndarray | None = None  # running sum of masked vectors, mod 2^32
    signatures: dict[int, bytes] = field(default_factory=dict)  # of the view, by summed partner
    shares: dict[int, list[bytes]] = field(default_factory=dict)  # owner -> shares collected
    unmaskers: list[int] = field(default_factory=list)

    def need(self, nodes: list[int] | dict, stage: str) -> None:
        if len(nodes) < self.threshold:
            raise SecAggError(f"secure aggregation, {stage}: {len(nodes)} partner(s) left, the "
                              f"threshold is {self.threshold}; the round cannot complete")

    def add_keys(self, nid: int, pk1: bytes, pk2: bytes, signer: bytes, signature: bytes,
                 examples: float) -> None:
        """A partner's signed public keys and claimed examples; its weight is the capped claim,
        as the partner itself caps it before masking. A bad signature, or a signing key already
        listed, is refused here (every partner would refuse the list)."""
        if not verify(signer, signature, key_statement(nid, pk1, pk2)):
            raise UpdateError(f"node {nid}: public keys not signed by the key it presents")
        if any(keys[2] == signer for keys in self.keys.values()):
            raise UpdateError(f"node {nid}: its signing key is another node's")
        weight = capped_weight(examples, self.max_weight)
        self.keys[nid], self.weights[nid] = (pk1, pk2, signer, signature), weight

    def check_setup(self) -> None:
        self.need(self.keys, "setup")
        if len(self.keys) * self.quantization_range >= MOD_RANGE:
            raise SecAggError(f"{len(self.keys)} partners × secagg-quantization-range "
                              f"{self.quantization_range} overflow 2^32; lower the range")

    def add_ciphertexts(self, src: int, dsts: list[int], ciphertexts: list[bytes]) -> None:
        if len(dsts) != len(ciphertexts) or set(dsts) - set(self.keys):
            raise UpdateError(f"node {src}: malformed key shares")
        self.sharers.append(src)
        for dst, ciphertext in zip(dsts, ciphertexts):
            srcs, texts = self.forward.setdefault(dst, ([], []))
            srcs.append(src)
            texts.append(ciphertext)

    def forward_for(self, nid: int) -> tuple[list[int], list[bytes]]:
        """The shares addressed to ``nid`` by partners that completed share-keys."""
        srcs, texts = self.forward.get(nid, ([], []))
        kept = [(s, t) for s, t in zip(srcs, texts) if s in self.sharers]
        return [s for s, _ in kept], [t for _, t in kept]

    def add_masked(self, nid: int, vector: np.ndarray) -> None:
        if nid not in self.sharers or nid in self.masked:
            raise UpdateError(f"node {nid}: masked update not expected")
        if vector.dtype != np.uint32 or vector.shape != (self.length + 1,):
            raise UpdateError(f"masked update of dtype {vector.dtype} / shape {vector.shape}; "
                              f"expected uint32 / ({self.length + 1},)")
        self.masked.append(nid)
        total = vector.astype(np.int64) if self.total is None else self.total + vector
        self.total = total & (MOD_RANGE - 1)

    def dead(self) -> list[int]:
        """Partners that shared keys but whose masked update never arrived."""
        return [n for n in self.sharers if n not in self.masked]

    def view(self) -> bytes:
        """The view every summed partner signs when the coordinator is honest: every listed
        partner's keys (U1), the sharers (U2), the summed (U3)."""
        keys = [(n, *self.keys[n][:3]) for n in sorted(self.keys)]
        return view_statement(self.threshold, keys, self.sharers, self.masked)  # type: ignore

    def add_signature(self, nid: int, signature: bytes) -> None:
        if nid not in self.masked or nid in self.signatures:
            raise UpdateError(f"node {nid}: view signature not expected")
        if not verify(self.keys[nid][2], signature, self.view()):
            raise UpdateError(f"node {nid}: its signature is not of the round's view")
        self.signatures[nid] = signature

    def add_unmask_shares(self, nid: int, owners: list[int], shares: list[bytes]) -> None:
        if len(owners) != len(shares) or set(owners) - set(self.masked) - set(self.dead()):
            raise UpdateError(f"node {nid}: malformed unmask shares")
        self.unmaskers.append(nid)
        for owner, share in zip(owners, shares):
            self.shares.setdefault(owner, []).append(share)

    def _secret(self, owner: int) -> bytes:
        held = self.shares.get(owner, [])
        if len(held) < self.threshold:
            raise SecAggError(f"secure aggregation, unmask: {len(held)} share(s) of node "
                              f"{owner}'s secret, the threshold is {self.threshold}")
        return combine_shares(held)

    def unmasked_sum(self) -> np.ndarray:
        """Σ of the survivors' quantized [w, w·Δ] (integers, mod 2^32), masks removed."""
        self.need(self.masked, "collect masked vectors")
        self.need(self.unmaskers, "unmask")
        assert self.total is not None
        total = self.total.copy()
        size = total.size
        for nid in self.masked:  # private masks
            total -= mask_vector(self._secret(nid), size, MOD_RANGE)
        for dead in self.dead():  # pairwise masks of survivors with a dropout
            sk1 = self._secret(dead)
            for nid in self.masked:
                pairwise = mask_vector(pairwise_seed(sk1, self.keys[nid][0]), size, MOD_RANGE)
                total += -pairwise if nid > dead else pairwise
        return total & (MOD_RANGE - 1)

    def mean_update(self) -> tuple[np.ndarray, float]:
        """The example-weighted mean Δ of the survivors and its quantization error bound
        (per coordinate). Checks the masked weights sum to what the survivors announced, and
        that every coordinate of the sum is one k partners in the quantization range give."""
        total = self.unmasked_sum()
        k, t_range = len(self.masked), self.quantization_range
        expected = sum(round(self.weights[n] / self.max_weight * t_range) for n in self.masked)
        if int(total[0]) != expected:
            raise UpdateError(f"secure aggregation: the unmasked weight sum {int(total[0])} is "
                              f"not the announced {expected}; a partner lied about its weight "
                              "or a mask was not removed; discarding the round's sum")
        outside = int(np.count_nonzero(total[1:] > k * t_range))
        if outside:
            raise UpdateError(f"secure aggregation: {outside} coordinate(s) of the unmasked sum "
                              f"lie outside [0, {k} × {t_range}], what {k} partners quantizing "
                              "within ± secagg-clipping-range can give: a partner masked values "
                              "outside the range; discarding the round's sum")
        weighted = dequantize([total[1:]], self.clipping_range, t_range)[0]
        weighted -= (k - 1) * self.clipping_range  # dequantize removed one offset of k
        ratio_sum = expected / t_range
        step = 2 * self.clipping_range / t_range
        return weighted / ratio_sum, k * step / ratio_sum


def split_flat(flat: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of client.secagg.flat_update's layout: sorted names, each tensor raveled."""
    out, at = {}, 0
    for name in sorted(like):
        size = like[name].size
        out[name] = flat[at: at + size].reshape(like[name].shape)
        at += size
    return out


@dataclass(frozen=True)
class AggregateBounds:
    """What holds of an aggregate the coordinator applies, whatever one partner masked: its
    L2 norm, and each coordinate (the sum's range check: |a_j| ≤ k·c / Σr)."""

    norm: float
    coordinate: float


def aggregate_bounds(partners: int, ratio_sum: float, clip_norm: float, clipping_range: float,
                     levels: int, size: int) -> AggregateBounds:
    """The bounds ``mean_update`` and ``check_mean_update`` enforce on the mean of ``partners``
    masked updates with announced weight ratios summing to ``ratio_sum`` (each ≤ 1), update
    clip C = ``clip_norm``, quantization range ±c = ``clipping_range`` over ``levels`` levels:
    ‖a‖₂ ≤ C·(1 + 10⁻⁶) + √d·k·(2c / T) / Σr and |a_j| ≤ k·c / Σr."""
    error = partners * 2 * clipping_range / levels / ratio_sum
    return AggregateBounds(norm=clip_norm * (1 + 1e-6) + error * math.sqrt(size),
                           coordinate=partners * clipping_range / ratio_sum)


def check_mean_update(mean: np.ndarray, error: float, clip_norm: float) -> float:
    """Validate the only update the coordinator sees: finite, and within the agreed clip (a
    weighted mean of updates each ≤ clip is ≤ clip), plus quantization slack. Returns its norm."""
    if not np.all(np.isfinite(mean)):
        raise UpdateError("the aggregated update holds NaN or Inf")
    norm = float(np.linalg.norm(mean))
    slack = error * math.sqrt(mean.size)
    if clip_norm > 0 and norm > clip_norm * (1 + 1e-6) + slack:
        raise UpdateError(f"the aggregated update's norm {norm:.4f} exceeds update-clip-norm "
                          f"{clip_norm:g} (+ quantization slack {slack:.2g}): some partner sent "
                          "an update above the clip")
    return norm


def payload_bytes(content: Any) -> int:
    """Bytes a Message carries for the update: array data plus the secure-aggregation record
    (keys, encrypted shares, node lists at 8 bytes an id). Metrics, names and framing, sent alike
    with or without secure aggregation, are left out, as in the plain round's count."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    record = content.config_records.get(P.SECAGG, {})
    for value in record.values():
        for item in value if isinstance(value, list) else [value]:
            total += len(item) if isinstance(item, (bytes, str)) else 8
    return total
