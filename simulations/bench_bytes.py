"""Benchmark P2: upload bytes per partner-round ÷ full-model fp32 FedAvg, and the accuracy cost
of update compression.

    python -m simulations.bench_bytes [--out results/bytes] [--skip-accuracy]

Bytes: one real DP partner round (``client.partner.train_round``, the bundled MiniLM, the
embedded data) per fine-tuning mode (lora, head) and compression (none, fp16, int8); what is
counted is the arrays that round returns for the wire: the payload (array data) and the size of
Flower's serialized ArrayRecord (payload + per-array headers). The baseline is FedAvg of the full
MiniLM classifier in fp32: every parameter, embeddings included (what a strategy that ships the
whole model sends).

Accuracy: the README demo (3 partners × 3 rounds, LoRA, DP ε = 8, embedded data) through Flower's
simulation engine, once per compression; simulated partners replay their noise exactly, so the
runs differ only by compression. The reported number is the example-weighted evaluation accuracy
after the last round (goal: within 0.3 points of none).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from simulations.bench_env import machine, versions

ACCURACY_GOAL_POINTS = 0.3
BYTES_GOAL = 0.005  # ≤ 0.5 % of full-model fp32 FedAvg (issue 5, P2)
ARMS = [("lora", "none"), ("lora", "fp16"), ("lora", "int8"),
        ("head", "none"), ("head", "fp16"), ("head", "int8")]


def full_model_bytes() -> tuple[int, int]:
    """(parameters, fp32 bytes) of the full MiniLM classifier, every parameter counted."""
    from common.config import RunConfig
    from common.model import build_model
    from common.synthetic import LABELS

    model = build_model(RunConfig(finetune="full", freeze_embeddings=False), LABELS)
    params = sum(p.numel() for p in model.parameters())
    return params, 4 * params


def measure_bytes(work: Path) -> list[dict]:
    from client.data import PartnerSettings
    from client.partner import train_round
    from client.records import to_array_record
    from common.compression import wire_bytes
    from common.config import RunConfig
    from common.model import build_model, frozen_fingerprint, trainable_state
    from common.synthetic import LABELS

    rows = []
    for finetune, compression in ARMS:
        config = RunConfig(finetune=finetune, compression=compression, examples_per_partner=80,
                           batch_size=16, local_epochs=1, num_rounds=1, delta=1e-3,
                           out_dir=str(work / "out"),
                           ledger_dir=str(work / f"ledgers-{finetune}-{compression}"))
        model = build_model(config, LABELS)
        shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
        reply = train_round(config, PartnerSettings(name="bench"), shared, fingerprint, 1, "b")
        record = to_array_record(reply.arrays)
        rows.append({"finetune": finetune, "compression": compression,
                     "trainable_params": int(sum(a.size for a in shared.values())),
                     "payload_bytes": wire_bytes(reply.arrays),
                     "record_bytes": int(sum(len(a.data) for a in record.values())),
                     "arrays": len(reply.arrays)})
        print(f"{finetune:4s} {compression:4s} payload {rows[-1]['payload_bytes']:>9,d} B  "
              f"record {rows[-1]['record_bytes']:>9,d} B", flush=True)
    return rows


def measure_accuracy(compression: str, work: Path, rounds: int, partners: int) -> dict:
    from common.config import RunConfig
    from simulations.simulate import Federation, run_simulation

    out = work / f"demo-{compression}"
    shutil.rmtree(out, ignore_errors=True)
    config = RunConfig(num_rounds=rounds, compression=compression, out_dir=str(out))
    started = time.perf_counter()
    run_simulation(config, Federation(partners=partners))
    seconds = time.perf_counter() - started
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    return {"compression": compression, "seconds": seconds,
            "accuracy_per_round": [ln["eval_accuracy"] for ln in lines],
            "final_accuracy": lines[-1]["eval_accuracy"],
            "max_epsilon": lines[-1]["max_epsilon"], "metrics": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bytes"))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partners", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("CONSORTIUM_PROGRESS", "0")
    params, baseline = full_model_bytes()
    print(f"full MiniLM classifier: {params:,d} parameters, fp32 FedAvg {baseline:,d} B/round")
    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as tmp:
        rows = measure_bytes(Path(tmp))
        for r in rows:
            r["ratio_to_full_fp32"] = r["payload_bytes"] / baseline
            r["record_ratio_to_full_fp32"] = r["record_bytes"] / baseline
            r["goal_met"] = r["ratio_to_full_fp32"] <= BYTES_GOAL
        accuracy = [] if args.skip_accuracy else [
            measure_accuracy(c, Path(tmp), args.rounds, args.partners)
            for c in ("none", "fp16", "int8")]
    print("\n| fine-tuning | compression | bytes / partner-round | ÷ full fp32 FedAvg | goal |")
    for r in rows:
        print(f"| {r['finetune']} | {r['compression']} | {r['payload_bytes']:,d} | "
              f"{100 * r['ratio_to_full_fp32']:.4f} % | "
              f"{'met' if r['goal_met'] else 'not met'} |")
    if accuracy:
        base = accuracy[0]["final_accuracy"]
        for a in accuracy:
            a["difference_points"] = 100 * (a["final_accuracy"] - base)
            a["goal_met"] = abs(a["difference_points"]) <= ACCURACY_GOAL_POINTS
            print(f"demo {a['compression']:4s}: accuracy {a['final_accuracy']:.4f} "
                  f"({a['difference_points']:+.2f} pts), per round "
                  f"{[round(x, 4) for x in a['accuracy_per_round']]}, {a['seconds']:.0f} s")
    result = {"machine": machine("loadavg_after", **versions("torch", "flwr")),
              "baseline": {"params": params, "fp32_bytes": baseline},
              "bytes": rows, "accuracy": accuracy}
    from common.storage import atomic_write_json

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bytes.json", result)
    print(f"wrote {args.out / 'bytes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
