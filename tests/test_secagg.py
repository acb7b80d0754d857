"""Secure aggregation: the partner's and the coordinator's stage functions driven in-process
(no Flower processes), then whole rounds through the real ClientApp and round loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.secagg_protocol import PartnerSecAgg, quantized_vector
from common.config import RunConfig
from common.errors import ConfigError, PrivacyError, SimulatedDropout, UpdateError
from common.wire.secagg_identity import simulated_identity
from common.infra.storage import read_sealed_json
from server.aggregation import fedavg
from server.secagg import (MOD_RANGE, SecAggError, SecAggRound, check_mean_update,
                           threshold_for)
from common import protocol as P

CLIP, LEVELS = 10.0, 2**22
NODES = [7, 1_000_003, 2**63 + 11, 42]  # Flower node ids are unsigned 64-bit


def identities(nodes):
    """Each node's signing key and peers: simulated partners 0 … n − 1 of a run with seed 0."""
    return {nid: simulated_identity(0, i, len(nodes)) for i, nid in enumerate(nodes)}


def run_protocol(deltas: dict[int, np.ndarray], weights: dict[int, float], share: float = 0.6,
                 drop_after_keys: frozenset[int] = frozenset(), masked_weights=None,
                 max_weight: float = 500.0):
    """Every stage, as the two apps run them; returns (mean, error bound, masked views, round)."""
    n = len(deltas)
    proto = SecAggRound(threshold_for(n, share), CLIP, LEVELS, next(iter(deltas.values())).size,
                        max_weight)
    params = {P.SECAGG_THRESHOLD: proto.threshold, P.SECAGG_CLIPPING_RANGE: CLIP,
              P.SECAGG_QUANTIZATION_RANGE: LEVELS, P.SECAGG_MOD_RANGE: MOD_RANGE}
    partners = {nid: PartnerSecAgg() for nid in deltas}
    ids = identities(list(deltas))
    for nid, partner in partners.items():  # setup
        proto.add_keys(nid, *partner.setup(nid, params, ids[nid]), weights[nid])
    proto.check_setup()
    for nid, partner in partners.items():  # share keys
        proto.add_ciphertexts(nid, *partner.share_keys(dict(proto.keys), ids[nid]))
    views = {}
    for nid in proto.sharers:  # collect masked vectors; the dropouts never send theirs
        if nid in drop_after_keys:
            continue
        partner = partners[nid]  # it weighs itself: min(n, W) / W, W from its run config
        partner.weight, partner.max_weight = (masked_weights or weights)[nid], max_weight
        views[nid] = partner.mask(*proto.forward_for(nid), deltas[nid], partner.ratio())
        proto.add_masked(nid, views[nid])
    proto.need(proto.masked, "collect masked vectors")  # as server/secagg_phase.py does
    for nid in proto.masked:  # consistency check
        proto.add_signature(nid, partners[nid].check(list(proto.masked), ids[nid]))
    signed = list(proto.signatures), list(proto.signatures.values())
    for nid in proto.signatures:  # unmask
        proto.add_unmask_shares(nid, *partners[nid].unmask(*signed))
    mean, error = proto.mean_update()
    return mean, error, views, proto


def play_round(proto, partners: dict, ids: dict, weights: dict[int, float], max_weight: float,
               deltas: dict[int, np.ndarray]):
    """Every stage with every partner answering (``partners`` may hold forgers); returns
    (mean, error bound)."""
    for nid, partner in partners.items():
        proto.add_keys(nid, *partner.setup(nid, proto_params(proto), ids[nid]), weights[nid])
        partner.weight, partner.max_weight = weights[nid], max_weight
    for nid, partner in partners.items():
        proto.add_ciphertexts(nid, *partner.share_keys(dict(proto.keys), ids[nid]))
    for nid, partner in partners.items():
        proto.add_masked(nid, partner.mask(*proto.forward_for(nid), deltas[nid], partner.ratio()))
    for nid, partner in partners.items():
        proto.add_signature(nid, partner.check(list(proto.masked), ids[nid]))
    signed = list(proto.signatures), list(proto.signatures.values())
    for nid, partner in partners.items():
        proto.add_unmask_shares(nid, *partner.unmask(*signed))
    return proto.mean_update()


def proto_params(proto) -> dict:
    return {P.SECAGG_THRESHOLD: proto.threshold, P.SECAGG_CLIPPING_RANGE: proto.clipping_range,
            P.SECAGG_QUANTIZATION_RANGE: proto.quantization_range, P.SECAGG_MOD_RANGE: MOD_RANGE}


def make_updates(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    deltas = {nid: rng.normal(0, 0.02, size) for nid in NODES[:n]}
    weights = {nid: float(w) for nid, w in zip(NODES[:n], rng.integers(20, 500, n))}
    return deltas, weights


def plain_fedavg(deltas, weights, nids) -> np.ndarray:
    return fedavg([({"u": deltas[n]}, weights[n]) for n in nids])["u"]


def test_one_masked_update_is_noise_while_the_sum_is_fedavg() -> None:
    deltas, weights = make_updates(4, 20_000)
    mean, error, views, _ = run_protocol(deltas, weights)
    nid = NODES[0]
    view = views[nid][1:].astype(np.float64)  # what the coordinator holds of partner 0
    truth = deltas[nid]
    masked_corr = np.corrcoef(view, truth)[0, 1]
    unmasked = quantized_vector(truth, weights[nid] / 500.0, CLIP, LEVELS)[1:]
    control_corr = np.corrcoef(unmasked.astype(np.float64), truth)[0, 1]
    assert control_corr > 0.99  # without the masks the same statistic sees the update
    assert abs(masked_corr) < 0.04  # ~ 1/sqrt(20 000) = 0.007 for noise
    assert abs(view.mean() / MOD_RANGE - 0.5) < 0.01  # uniform on [0, 2^32)
    assert view.std() / MOD_RANGE == pytest.approx(1 / np.sqrt(12), rel=0.02)
    expected = plain_fedavg(deltas, weights, NODES[:4])
    assert np.max(np.abs(mean - expected)) <= error
    assert error < 1e-4 and np.max(np.abs(mean - expected)) < 2e-5
    assert check_mean_update(mean, error, CLIP) == pytest.approx(np.linalg.norm(expected),
                                                                rel=1e-3)


def test_a_dropout_after_sharing_keys_still_yields_the_survivors_sum() -> None:
    deltas, weights = make_updates(4, 5_000, seed=1)
    dropped = NODES[2]
    mean, error, _, proto = run_protocol(deltas, weights, drop_after_keys=frozenset({dropped}))
    assert proto.threshold == 3 and proto.dead() == [dropped]
    survivors = [n for n in NODES[:4] if n != dropped]
    assert np.max(np.abs(mean - plain_fedavg(deltas, weights, survivors))) <= error
    with pytest.raises(SecAggError, match="2 partner.s. left, the threshold is 3"):  # n − t = 1
        run_protocol(deltas, weights, drop_after_keys=frozenset(NODES[2:4]))


def test_partners_refuse_what_would_reveal_an_update() -> None:
    deltas, weights = make_updates(3, 100, seed=2)
    _, _, _, proto = run_protocol(deltas, weights)
    partner = PartnerSecAgg()
    params = {P.SECAGG_THRESHOLD: 2, P.SECAGG_CLIPPING_RANGE: CLIP,
              P.SECAGG_QUANTIZATION_RANGE: LEVELS, P.SECAGG_MOD_RANGE: MOD_RANGE}
    ids = identities([1, 2, 3, 4, 5])
    partner.setup(5, params, ids[5])
    with pytest.raises(PrivacyError, match="order"):  # no unmask before masking
        partner.unmask([5, 6], [b"", b""])
    with pytest.raises(PrivacyError, match="unsafe"):
        PartnerSecAgg().setup(5, {**params, P.SECAGG_THRESHOLD: 1}, ids[5])
    low, others = PartnerSecAgg(), {n: PartnerSecAgg() for n in range(2, 6)}
    # t = 2 of 5 partners: a coordinator could get both secrets of one
    keys = {1: low.setup(1, params, ids[1]),
            **{n: p.setup(n, params, ids[n]) for n, p in others.items()}}
    with pytest.raises(PrivacyError, match="above half"):
        low.share_keys(keys, ids[1])
    for summed, reason in (([1, 2, 3], "only partners it masked with"),  # 3 never shared keys
                           ([1], "hold this partner"), ([2, 2], "repeats")):
        a, b = PartnerSecAgg(), PartnerSecAgg()
        keys = {1: a.setup(1, params, ids[1]), 2: b.setup(2, params, ids[2])}
        _, texts = a.share_keys(keys, ids[1])
        b.share_keys(keys, ids[2])
        b.mask([1], texts, np.zeros(4), 1.0)
        with pytest.raises(PrivacyError, match=reason):
            b.check(summed, ids[2])
        with pytest.raises(PrivacyError, match="order"):  # one view signed per round, at most
            b.check([1, 2], ids[2])
    a, b = PartnerSecAgg(), PartnerSecAgg()
    keys = {1: a.setup(1, params, ids[1]), 2: b.setup(2, params, ids[2])}
    _, texts = a.share_keys(keys, ids[1])
    b.share_keys(keys, ids[2])
    b.mask([1], texts, np.zeros(4), 1.0)
    signature = b.check([2, 1], ids[2])
    with pytest.raises(PrivacyError, match="at least the threshold 2"):  # its own alone: < t
        b.unmask([2], [signature])


def test_the_coordinator_rejects_a_bad_aggregate() -> None:
    deltas, weights = make_updates(3, 1_000, seed=3)
    bad = NODES[1]
    deltas[bad] = deltas[bad] / np.linalg.norm(deltas[bad]) * 1000 * CLIP  # 1000× the clip
    mean, error, _, _ = run_protocol(deltas, weights)
    with pytest.raises(UpdateError, match="exceeds update-clip-norm"):
        check_mean_update(mean, error, CLIP)
    with pytest.raises(UpdateError, match="NaN"):
        check_mean_update(np.array([np.nan, 0.0]), 0.0, CLIP)
    deltas, weights = make_updates(3, 1_000, seed=4)
    lie = {**weights, bad: weights[bad] / 2}  # announces one weight, masks with another
    with pytest.raises(UpdateError, match="not the announced"):
        run_protocol(deltas, weights, masked_weights=lie)


@pytest.mark.parametrize("changes, message", [
    ({"aggregation": "median"}, "aggregation = 'fedavg'"),
    ({"compression": "int8"}, "compression = 'none'"),
    ({"min_partners": 1}, "min-partners >= 2"),
    ({"update_clip_norm": 0.0}, "update-clip-norm > 0"),
])
def test_config_rejects_what_secure_aggregation_cannot_do(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(secure_aggregation=True, **changes)
    RunConfig(secure_aggregation=True, update_clip_norm=0.0, secagg_clipping_range=1.0)


# ---- whole rounds: the real ClientApp and round loop over an in-process Grid ----

def ledger_history(root: Path, name: str) -> list[list[float]]:
    """The (σ, q, steps) releases in a partner's ledger file(s), as the report lists them."""
    releases = [r for path in sorted(root.glob(f"{name}[@-]*.json"))
                for r in read_sealed_json(path)["releases"]]
    assert releases, f"no ledger of {name} in {root}"
    return [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in releases]


def _dropout_seed(rate: float, partners: int, rounds: int) -> int:
    """A seed for which round 1 loses exactly one simulated partner, later rounds none."""
    from client.data import PartnerSettings
    from client.partner import drops_out

    for seed in range(500):
        config = RunConfig(seed=seed, dropout_rate=rate)
        drops = [[drops_out(config, PartnerSettings(f"partner-{p}", p, partners), r)
                  for p in range(partners)] for r in range(1, rounds + 1)]
        if sum(drops[0]) == 1 and not any(any(d) for d in drops[1:]):
            return seed
    raise AssertionError("no seed found")


def test_rounds_through_the_apps_with_a_dropout(tiny_bert: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from client import secagg as client_secagg
    from server.checkpoint import latest_checkpoint
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    class DroppingGrid(LocalGrid):  # a partner that raises has left: no reply, as in Flower
        def _answer(self, msg):
            try:
                return super()._answer(msg)
            except SimulatedDropout:
                return None

    masked: list[tuple[np.ndarray, float]] = []  # (Δ, weight ratio) of every masked update
    shared: list[np.ndarray] = []  # the weights each partner received, flat
    real_mask, real_flat = client_secagg.PartnerSecAgg.mask, client_secagg.flat_update

    def spy(self, sources, ciphertexts, delta, ratio):
        masked.append((delta.copy(), ratio))
        return real_mask(self, sources, ciphertexts, delta, ratio)

    def spy_flat(old, new):
        shared.append(np.concatenate([old[k].ravel() for k in sorted(old)]))
        return real_flat(old, new)

    monkeypatch.setattr(client_secagg, "flat_update", spy_flat)
    # the exported model directory is checked in test_simulation; only the round loop is tested here
    monkeypatch.setattr("server.coordinator.export_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(client_secagg.PartnerSecAgg, "mask", spy)
    config = RunConfig(base_model=tiny_bert, num_rounds=2, examples_per_partner=40,
                       max_length=16, batch_size=8, local_epochs=1, dp=True, epsilon=50.0,
                       secure_aggregation=True, dropout_rate=0.3, round_timeout=1.0,
                       max_partner_weight=32.0,  # ≈ each partner's training examples
                       dp_plan_check=False,  # a 2-round toy: the planner would refuse it
                       seed=_dropout_seed(0.3, 3, 2), out_dir=str(tmp_path / "run"))
    out = run_federation(DroppingGrid(config, 3), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first, second = lines[0], lines[1]
    assert len(first["secagg"]["dropped_after_keys"]) == 1 and first["secagg"]["threshold"] == 2
    assert len(first["partners_replied"]) == 2 and len(second["partners_replied"]) == 3
    assert first["secagg"]["aggregate_norm"] is not None
    assert first["secagg"]["signed_view"] == 2 and second["secagg"]["signed_view"] == 3
    # round 1's model, evaluated by every partner that trained it, dropout included, in the
    # clear beside round 2's keys; the final model in its own EVALUATE Messages
    assert len(first["eval_per_partner"]) == len(second["eval_per_partner"]) == 3
    assert first["eval_failures"] == second["eval_failures"] == []
    dropped = first["secagg"]["dropped_after_keys"][0]
    assert [f["reason"] for f in first["failures"] if f["partner"] == dropped] == [
        "no reply within round-timeout 1 s"]
    report = json.loads((out / "privacy_report.json").read_text())
    assert len(report["partners"]) == 3
    # what each partner spent, as the coordinator records it, is what its ledger says; round
    # 1's checkpoint holds the dropout's release too (it trained, then left after key sharing)
    for name, record in report["partners"].items():
        assert record["history"] == ledger_history(out / "ledgers", name)
    after_round_1 = read_sealed_json(out / "checkpoints" / "round-00001.json")["state"]
    assert after_round_1["partners"][dropped]["history"] == ledger_history(out / "ledgers",
                                                                           dropped)[:1]
    final = latest_checkpoint(out / "checkpoints").arrays  # round 2: every partner summed
    final_flat = np.concatenate([final[k].ravel() for k in sorted(final)])
    deltas, ratios = zip(*masked[-3:])
    fedavg_flat = shared[-1] + sum(r * d for r, d in zip(ratios, deltas)) / sum(ratios)
    assert len(masked) == 5 and np.abs(final_flat - fedavg_flat).max() < 1e-5


@pytest.mark.heavy  # ≈ 1–3 min of Ray; the apps' SecAgg+ rounds run in the default suite through
# LocalGrid (test_rounds_through_the_apps_with_a_dropout), and over TLS in test_deployment
def test_flwr_simulation_with_secure_aggregation(tiny_bert: str, tmp_path: Path) -> None:
    """`consortium simulate` (i.e. `flwr run`), 3 partners × 2 rounds, one partner leaving in
    round 1 after sharing keys: the run completes on the survivors' sum."""
    import subprocess
    import sys

    out = tmp_path / "secagg"
    seed = _dropout_seed(0.3, 3, 2)
    args = [str(Path(sys.executable).with_name("consortium")), "simulate", "--partners", "3",
            "--rounds", "2", "--out", str(out), "--set", f'base-model="{tiny_bert}"',
            "--set", "examples-per-partner=40", "--set", "max-length=16", "--set",
            "batch-size=8", "--set", "local-epochs=1", "--set", "secure-aggregation=true",
            "--set", "dropout-rate=0.3", "--set", f"seed={seed}", "--set", "dp-plan-check=false"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [len(line["partners_replied"]) for line in lines] == [2, 3]
    dropped = lines[0]["secagg"]["dropped_after_keys"]
    assert len(dropped) == 1 and not lines[1]["secagg"]["dropped_after_keys"]
    assert any(f["partner"] == dropped[0] and "after sharing keys" in f["reason"]
               for f in lines[0]["failures"])
    assert all(line["upload_bytes"] > 0 and line["secagg"]["aggregate_norm"] for line in lines)
