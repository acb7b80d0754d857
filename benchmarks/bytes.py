"""Benchmark P2: upload bytes per partner-round ÷ full-model fp32 FedAvg, and the accuracy cost
of update compression.

    python -m benchmarks.bytes [--out results/bytes] [--skip-accuracy]

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

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import harness
from benchmarks.harness import Arm, Column

ACCURACY_GOAL_POINTS = 0.3
BYTES_GOAL = 0.005  # ≤ 0.5 % of full-model fp32 FedAvg (issue 5, P2)
BYTE_ARMS = [Arm(f"{f}-{c}", {"finetune": f, "compression": c})
             for f in ("lora", "head") for c in ("none", "fp16", "int8")]
ACCURACY_ARMS = [Arm(c, {"compression": c}) for c in ("none", "fp16", "int8")]


def full_model_bytes() -> tuple[int, int]:
    """(parameters, fp32 bytes) of the full MiniLM classifier, every parameter counted."""
    from common.config import RunConfig
    from common.model.factory import build_model
    from common.data.synthetic import LABELS

    model = build_model(RunConfig(finetune="full", freeze_embeddings=False), LABELS)
    params = sum(p.numel() for p in model.parameters())
    return params, 4 * params


def measure_bytes(arm: Arm, work: Path, baseline: int) -> dict[str, Any]:
    """One real DP partner round in this mode and compression: the bytes it returns."""
    from client.data import PartnerSettings
    from client.partner import train_round
    from common.wire.compression import wire_bytes
    from common.config import RunConfig
    from common.training.fingerprint import frozen_fingerprint
    from common.model.factory import build_model, trainable_state
    from common.data.synthetic import LABELS
    from common.wire.records import to_array_record

    finetune, compression = arm.settings["finetune"], arm.settings["compression"]
    config = RunConfig(finetune=finetune, compression=compression, examples_per_partner=80,
                       batch_size=16, local_epochs=1, num_rounds=1, delta=1e-3,
                       out_dir=str(work / "out"),
                       ledger_dir=str(work / f"ledgers-{finetune}-{compression}"))
    model = build_model(config, LABELS)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    reply = train_round(config, PartnerSettings(name="bench"), shared, fingerprint, 1, "b")
    record = to_array_record(reply.arrays)
    row = {"finetune": finetune, "compression": compression,
           "trainable_params": int(sum(a.size for a in shared.values())),
           "payload_bytes": wire_bytes(reply.arrays),
           "record_bytes": int(sum(len(a.data) for a in record.values())),
           "arrays": len(reply.arrays)}
    row["ratio_to_full_fp32"] = row["payload_bytes"] / baseline
    row["record_ratio_to_full_fp32"] = row["record_bytes"] / baseline
    row["goal_met"] = row["ratio_to_full_fp32"] <= BYTES_GOAL
    print(f"{finetune:4s} {compression:4s} payload {row['payload_bytes']:>9,d} B  "
          f"record {row['record_bytes']:>9,d} B", flush=True)
    return row


def measure_accuracy(arm: Arm, work: Path, rounds: int, partners: int) -> dict[str, Any]:
    """The README demo with this compression: final example-weighted evaluation accuracy."""
    from common.config import RunConfig
    from simulations.simulate import Federation, run_simulation

    compression = arm.settings["compression"]
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


def compare_accuracy(accuracy: list[dict[str, Any]]) -> None:
    """Each compression's difference to none, in points, against the goal."""
    base = accuracy[0]["final_accuracy"]
    for a in accuracy:
        a["difference_points"] = 100 * (a["final_accuracy"] - base)
        a["goal_met"] = abs(a["difference_points"]) <= ACCURACY_GOAL_POINTS


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/bytes"))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partners", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("CONSORTIUM_PROGRESS", "0")
    params, baseline = full_model_bytes()
    print(f"full MiniLM classifier: {params:,d} parameters, fp32 FedAvg {baseline:,d} B/round")
    head = harness.header("benchmarks.bytes", "loadavg_after",
                          **harness.versions("torch", "flwr"))
    result: dict[str, Any] = {**head, "baseline": {"params": params, "fp32_bytes": baseline},
                              "bytes": [], "accuracy": []}

    def save(key: str) -> Callable[[dict[str, dict[str, Any]]], None]:
        def write(done: dict[str, dict[str, Any]]) -> None:
            result[key] = list(done.values())
            harness.write_json(args.out / "bytes.json", result)
        return write

    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as tmp:
        harness.run_arms(BYTE_ARMS, lambda arm: measure_bytes(arm, Path(tmp), baseline),
                         save=save("bytes"))
        if not args.skip_accuracy:
            harness.run_arms(ACCURACY_ARMS, lambda arm: measure_accuracy(
                arm, Path(tmp), args.rounds, args.partners), save=save("accuracy"))
    print("\n" + harness.table(result["bytes"], [
        Column("fine-tuning", "finetune"), Column("compression", "compression"),
        Column("bytes / partner-round", "payload_bytes", ",d"),
        Column("÷ full fp32 FedAvg", lambda r: f"{100 * r['ratio_to_full_fp32']:.4f} %"),
        Column("goal", lambda r: "met" if r["goal_met"] else "not met")], markdown=True))
    if result["accuracy"]:
        compare_accuracy(result["accuracy"])
        for a in result["accuracy"]:
            print(f"demo {a['compression']:4s}: accuracy {a['final_accuracy']:.4f} "
                  f"({a['difference_points']:+.2f} pts), per round "
                  f"{[round(x, 4) for x in a['accuracy_per_round']]}, {a['seconds']:.0f} s")
    result["machine"]["loadavg_after"] = os.getloadavg()
    harness.write_json(args.out / "bytes.json", result)
    print(f"wrote {args.out / 'bytes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
