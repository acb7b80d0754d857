"""Benchmark: what secure aggregation costs. Two `consortium simulate` runs (MiniLM LoRA, DP on),
identical but for ``secure-aggregation``, compared on upload bytes per partner per round and on
round / train-phase time; plus the protocol alone (no training), in-process, at K partners.

    flock /tmp/consortium/heavy.lock python -m benchmarks.secagg [--partners 3]
        [--rounds 2] [--examples 120] [--ks 3,5,10] [--out results]

Upload bytes are what the coordinator received for the update: the plain round's update arrays;
under secure aggregation the masked vector plus public keys, encrypted key shares and unmask
shares (server.secagg.payload_bytes). Metrics, names and Flower framing, alike in both, are out.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import Arm, Column
from client.secagg_protocol import PartnerSecAgg
from common import protocol as P
from server.secagg import MOD_RANGE, SecAggRound, threshold_for

LORA_PARAMS = 2 * 12 * 8 * 384 + 4 * 384 + 4  # MiniLM-L6, r = 8 on query + value, 4-label head


def simulate(out: Path, partners: int, rounds: int, examples: int, secure: bool) -> list[dict]:
    args = [str(Path(sys.executable).with_name("consortium")), "simulate", "--partners",
            str(partners), "--rounds", str(rounds), "--out", str(out),
            "--set", f"examples-per-partner={examples}", "--set", "local-epochs=1",
            "--set", f"secure-aggregation={'true' if secure else 'false'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def summarize(lines: list[dict]) -> dict:
    per_partner = [line["upload_bytes"] / len(line["partners_replied"]) for line in lines]
    return {"upload_bytes_per_partner_round": statistics.mean(per_partner),
            "round_seconds": statistics.mean(line["seconds"] for line in lines),
            "train_phase_seconds": statistics.mean(line["train_phase_seconds"] for line in lines),
            "partner_train_seconds": statistics.mean(
                s for line in lines for s in line["partner_train_seconds"].values() if s),
            "final_accuracy": lines[-1]["eval_accuracy"], "rounds": lines}


def protocol_only(k: int, size: int) -> dict:
    """Setup → unmask for K partners on a LoRA-sized update, one process; seconds per stage."""
    from common.wire.secagg_identity import simulated_identity

    rng = np.random.default_rng(0)
    proto = SecAggRound(threshold_for(k, 0.6), 10.0, 2**22, size, 100.0)
    params = {P.SECAGG_THRESHOLD: proto.threshold, P.SECAGG_CLIPPING_RANGE: 10.0,
              P.SECAGG_QUANTIZATION_RANGE: 2**22, P.SECAGG_MOD_RANGE: MOD_RANGE}
    partners = {n + 1: PartnerSecAgg() for n in range(k)}
    ids = {n + 1: simulated_identity(0, n, k) for n in range(k)}
    for partner in partners.values():
        partner.weight, partner.max_weight = 100.0, 100.0
    timings: dict[str, float] = {}

    def timed(stage: str, fn) -> None:
        started = time.perf_counter()
        fn()
        timings[stage] = round(time.perf_counter() - started, 4)

    timed("setup", lambda: [proto.add_keys(n, *p.setup(n, params, ids[n]), 100.0)
                            for n, p in partners.items()])
    timed("share_keys", lambda: [proto.add_ciphertexts(n, *p.share_keys(dict(proto.keys), ids[n]))
                                 for n, p in partners.items()])
    delta = rng.normal(0, 0.01, size)
    timed("mask", lambda: [proto.add_masked(n, p.mask(*proto.forward_for(n), delta, 1.0))
                           for n, p in list(partners.items())[:-1]])  # the last one drops out
    timed("consistency_check", lambda: [proto.add_signature(n, partners[n].check(
        list(proto.masked), ids[n])) for n in proto.masked])
    timed("unmask", lambda: [proto.add_unmask_shares(n, *partners[n].unmask(
        list(proto.signatures), list(proto.signatures.values()))) for n in proto.signatures])
    timed("reconstruct", proto.mean_update)
    return {"partners": k, "dropped": 1, "threshold": proto.threshold, "seconds": timings}


ARMS = [Arm("off", {"secure": False}), Arm("on", {"secure": True})]


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=120)
    parser.add_argument("--ks", default="3,5,10")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    summary = {**harness.header("benchmarks.secagg"),
               "config": {"model": "all-MiniLM-L6-v2 LoRA r=8", "partners": args.partners,
                          "rounds": args.rounds, "examples_per_partner": args.examples,
                          "dp": True}}

    def save(done: dict[str, dict]) -> None:
        summary["arms"] = done
        harness.write_json(args.out / "secagg.json", summary)

    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        arms = harness.run_arms(ARMS, lambda arm: summarize(simulate(
            Path(tmp) / arm.name, args.partners, args.rounds, args.examples,
            arm.settings["secure"])), save=save)
    ratio = {key: arms["on"][key] / arms["off"][key]
             for key in ("upload_bytes_per_partner_round", "round_seconds", "train_phase_seconds")}
    summary.update({"on_over_off": ratio, "protocol_only": [
        protocol_only(int(k), LORA_PARAMS) for k in args.ks.split(",")]})
    harness.write_json(args.out / "secagg.json", summary)
    print(harness.table([{"measure": k, "off": arms["off"][k], "on": arms["on"][k], "ratio": v}
                         for k, v in ratio.items()],
                        [Column("measure", "measure"), Column("off", "off", ".1f"),
                         Column("on", "on", ".1f"), Column("on/off", "ratio", ".3f")]))
    for row in summary["protocol_only"]:
        print(f"protocol only, K={row['partners']}: {row['seconds']}")
    print(f"written: {args.out / 'secagg.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
