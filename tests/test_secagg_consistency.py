"""Issue 33 item 4: a coordinator that tells partners different stories about who took part.

Ten partner state machines (client.secagg_protocol.PartnerSecAgg), n = 10, t = 6, driven by a
malicious coordinator in process; no Flower processes. The issue's attack: the target masks with
five peers only; each other partner is asked to unmask with the target summed and four of those
five dropped, so the coordinator collects t shares of the target's mask seed and of each of the
five peers' sk1, removes every mask of the target and reads its update. Before the consistency
check it did (max error ≈ 1e-5, correlation 1.0); now every partner refuses to unmask, because no
t partners signed its view. Forged partners are refused when the keys are exchanged."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.quantization import dequantize

from client.secagg_protocol import PartnerSecAgg
from common import protocol as P
from common.errors import PrivacyError
from common.wire.secagg_identity import Identity, key_statement, simulated_identity
from common.wire.secagg import mask_vector, pairwise_seed
from server.secagg import MOD_RANGE, SecAggRound

CLIP, LEVELS, SIZE, W, T = 10.0, 2**22, 500, 100.0, 6
NODES = list(range(101, 111))  # n = 10
TARGET, S, REST = NODES[0], NODES[1:6], NODES[6:]  # t = 6: five sources for the target
PARAMS = {P.SECAGG_THRESHOLD: T, P.SECAGG_CLIPPING_RANGE: CLIP,
          P.SECAGG_QUANTIZATION_RANGE: LEVELS, P.SECAGG_MOD_RANGE: MOD_RANGE}
Views = Callable[[int], list[int]]  # partner -> the partners the coordinator says are summed


def identities() -> dict[int, Identity]:
    return {nid: simulated_identity(7, i, len(NODES)) for i, nid in enumerate(NODES)}


def issue_views(u: int) -> list[int]:
    """The issue's split: the target summed for everyone, four of its five peers dropped,
    a different four for different partners (each of the five is dropped for ≥ 6 partners)."""
    if u == TARGET:
        return [TARGET, *S]
    kept = u if u in S else S[REST.index(u)]  # partner REST[i] is told S[i] is still in
    return [n for n in NODES if n == kept or n not in S]


def attack(views: Views) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
    """Run the round with the target masking with S only and partner u told ``views(u)``;
    returns (the target's Δ, what the coordinator reads of it or None, refusals)."""
    rng = np.random.default_rng(0)
    deltas = {n: rng.normal(0, 0.05, SIZE) for n in NODES}
    ids, refusals = identities(), {}
    proto = SecAggRound(T, CLIP, LEVELS, SIZE, W)
    partners = {n: PartnerSecAgg() for n in NODES}
    for n, p in partners.items():
        proto.add_keys(n, *p.setup(n, PARAMS, ids[n]), 50.0)
        p.weight, p.max_weight = 50.0, W
    for n, p in partners.items():
        proto.add_ciphertexts(n, *p.share_keys(dict(proto.keys), ids[n]))
    masked = {}
    for n, p in partners.items():
        srcs, texts = proto.forward_for(n)
        if n == TARGET:  # the target masks with five peers only
            kept = [(s, t) for s, t in zip(srcs, texts) if s in S]
            srcs, texts = [s for s, _ in kept], [t for _, t in kept]
        masked[n] = p.mask(srcs, texts, deltas[n], p.ratio())
    signed: dict[int, bytes] = {}
    for n, p in partners.items():  # each summed partner signs the view it is given
        if n not in views(n):
            continue
        try:
            signed[n] = p.check(views(n), ids[n])
        except PrivacyError as exc:
            refusals[n] = str(exc)
    seeds: dict[int, list[bytes]] = {}
    sk1s: dict[int, list[bytes]] = {}
    for u in NODES:  # the signatures of whoever was told the same, padded with others of U3
        if u in refusals or u not in signed:
            continue
        same = [v for v in signed if sorted(views(v)) == sorted(views(u))]
        others = [v for v in signed if v not in same and v in views(u)]
        signers = same + others[:max(0, T - len(same))]
        try:
            owners, shares = partners[u].unmask(signers, [signed[v] for v in signers])
        except PrivacyError as exc:  # a partner that refuses gives nothing
            refusals[u] = str(exc)
            continue
        for owner, share in zip(owners, shares):
            (seeds if owner in views(u) else sk1s).setdefault(owner, []).append(share)
    if len(seeds.get(TARGET, [])) < T or any(len(sk1s.get(s, [])) < T for s in S):
        return deltas[TARGET], None, refusals
    vector = masked[TARGET].astype(np.int64) - mask_vector(
        combine_shares(seeds[TARGET][:T]), SIZE + 1, MOD_RANGE)
    for s in S:
        pairwise = mask_vector(pairwise_seed(combine_shares(sk1s[s][:T]), proto.keys[TARGET][0]),
                               SIZE + 1, MOD_RANGE)
        vector -= pairwise if TARGET > s else -pairwise
    vector &= MOD_RANGE - 1
    return deltas[TARGET], dequantize([vector[1:]], CLIP, LEVELS)[0] / (vector[0] / LEVELS), \
        refusals


def test_inconsistent_views_do_not_reveal_one_update() -> None:
    assert all(len(issue_views(u)) == T and TARGET in issue_views(u) for u in NODES)
    for s in S:  # the split gives the coordinator t shares of every secret it needs
        assert sum(s not in issue_views(u) for u in NODES if u != s) >= T
    truth, read, refusals = attack(issue_views)
    assert read is None or np.corrcoef(read, truth)[0, 1] < 0.5, (
        f"the coordinator read the target's update: max error {np.abs(read - truth).max():.2e}")
    # nobody unmasks: the largest group told the same story has 2 partners, and t = 6
    assert sorted(refusals) == NODES
    assert all("did not sign this partner's view" in r for r in refusals.values())


def test_one_consistent_view_unmasks_the_sum_only() -> None:
    """The coordinator's best consistent story: three of the target's five peers dropped (the
    most that leaves t partners to sign). Everyone unmasks that one view, which gives the
    target's mask seed and three sk1, but two pairwise masks of the target stay on it."""
    summed = [n for n in NODES if n not in S[:3]]
    truth, read, refusals = attack(lambda u: summed)
    assert read is None
    assert refusals == {TARGET: refusals[TARGET]}  # the target masked with S only: U3 ⊄ U2
    assert "only partners it masked with" in refusals[TARGET]


def _keys_then(change: Callable[[dict, dict[int, Identity]], None]) -> str:
    """Three honest partners; the coordinator ``change``s the signed key list before relaying
    it to the first; returns that partner's refusal."""
    nodes, ids = NODES[:3], {n: simulated_identity(7, i, 3) for i, n in enumerate(NODES[:3])}
    params = {**PARAMS, P.SECAGG_THRESHOLD: 3}  # above half of the 3 to 5 listed
    partners = {n: PartnerSecAgg() for n in nodes}
    keys = {n: p.setup(n, params, ids[n]) for n, p in partners.items()}
    change(keys, ids)
    with pytest.raises(PrivacyError) as refused:
        partners[nodes[0]].share_keys(keys, ids[nodes[0]])
    return str(refused.value)


def _forge(nid: int, key: ec.EllipticCurvePrivateKey, peers: dict) -> tuple:
    """A partner the coordinator makes up: fresh keys, signed with a key of its own."""
    forged = PartnerSecAgg()
    return forged.setup(nid, {**PARAMS, P.SECAGG_THRESHOLD: 3}, Identity(key, peers))


def test_forged_partners_are_refused() -> None:
    def add_forged(keys: dict, ids: dict) -> None:  # a key of the coordinator's own
        for nid in (201, 202):
            keys[nid] = _forge(nid, ec.generate_private_key(ec.SECP384R1()), {})

    def impersonate(keys: dict, ids: dict) -> None:  # a real partner's signing key, new pk
        pk1, pk2, signer, signature = keys[NODES[1]]
        keys[NODES[1]] = (pk2, pk1, signer, signature)

    def list_twice(keys: dict, ids: dict) -> None:  # one partner as two nodes
        keys[204] = keys[NODES[2]]

    def other_run(keys: dict, ids: dict) -> None:  # a simulated key of another seed
        keys[205] = _forge(205, simulated_identity(8, 1, 3).key, {})

    assert "not among this partner's peers" in _keys_then(add_forged)
    assert "not signed by partner partner-1" in _keys_then(impersonate)
    assert "listed twice" in _keys_then(list_twice)
    assert "not among this partner's peers" in _keys_then(other_run)


def test_the_coordinator_drops_a_bad_signature_before_relaying_it() -> None:
    ids = {n: simulated_identity(7, i, 3) for i, n in enumerate(NODES[:3])}
    proto = SecAggRound(2, CLIP, LEVELS, SIZE, W)
    pk1, pk2, signer, signature = PartnerSecAgg().setup(NODES[0], PARAMS, ids[NODES[0]])
    with pytest.raises(ValueError, match="not signed"):
        proto.add_keys(NODES[1], pk1, pk2, signer, signature, 10.0)  # another node's id
    proto.add_keys(NODES[0], pk1, pk2, signer, signature, 10.0)
    again = PartnerSecAgg().setup(NODES[1], PARAMS, ids[NODES[0]])
    with pytest.raises(ValueError, match="another node's"):
        proto.add_keys(NODES[1], *again, 10.0)
    assert ids[NODES[0]].sign(key_statement(NODES[0], pk1, pk2)) != signature  # randomized
