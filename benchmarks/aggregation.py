"""Benchmark P4: coordinator aggregation, peak memory and time at K = 10, 100, 1000 updates, for
updates of the LoRA size and of the full MiniLM size; streaming (ours) vs hold-all-then-average.

    python -m benchmarks.aggregation [--ks 10,100,1000] [--out results/aggregation]

Ours = what the coordinator does per reply: validate the update, fold it into a running weighted
sum, drop it. Hold-all = keep every update, then average (Flower's FedAvg receives all K replies
before aggregating). Peak memory is traced with tracemalloc (numpy reports its buffers to it),
over and above the current model. One update tensor set is reused for every arrival: creating K
distinct random updates would dominate the time and does not change the memory a streaming fold
needs; the hold-all arm stores a real copy per update.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import Arm, Column
from server.aggregation import WeightedMean, validate_update

# trainable tensor shapes of MiniLM-L6 (hidden 384, 6 layers) as the coordinator sees them
LORA_SHAPES = [(8, 384), (384, 8)] * 12 + [(4, 384), (4,)]  # r = 8 on query, value + head
FULL_PARAMS = 22_714_756  # every parameter, with a 4-label head


def make_model(kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if kind == "lora":
        return {f"t{i}": rng.standard_normal(s).astype(np.float32)
                for i, s in enumerate(LORA_SHAPES)}
    chunk = FULL_PARAMS // 100  # 100 tensors of ~227 k parameters
    return {f"t{i}": rng.standard_normal(chunk).astype(np.float32) for i in range(100)}


def streaming(current: dict, update: dict, k: int) -> dict:
    mean = WeightedMean()
    for i in range(k):
        validate_update(update, current, clip_norm=0.0)
        mean.add(update, float(100 + i))
    return mean.result()


def hold_all(current: dict, update: dict, k: int) -> dict:
    held = [({n: a.copy() for n, a in update.items()}, float(100 + i)) for i in range(k)]
    for arrays, _ in held:
        validate_update(arrays, current, clip_norm=0.0)
    total = sum(w for _, w in held)
    return {n: sum(a[n] * (w / total) for a, w in held).astype(np.float32) for n in current}


def measure(fn, current: dict, update: dict, k: int) -> tuple[float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    fn(current, update, k)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, seconds


def arms(ks: list[int]) -> list[Arm]:
    """Every (size, K); the hold-all arm runs beside streaming where it fits in memory."""
    return [Arm(f"{kind}-k{k}", {"size": kind, "k": k}) for kind in ("lora", "full") for k in ks]


def measure_arm(arm: Arm, models: dict[str, tuple[dict, dict]], hold_all_max_mib: float) -> dict:
    kind, k = arm.settings["size"], arm.settings["k"]
    current, update = models[kind]
    model_mib = sum(a.nbytes for a in current.values()) / 2**20
    row = {"size": kind, "model_mib": round(model_mib, 3), "k": k}
    row["streaming_peak_mib"], row["streaming_seconds"] = measure(streaming, current, update, k)
    if k * model_mib <= hold_all_max_mib:
        row["hold_all_peak_mib"], row["hold_all_seconds"] = measure(hold_all, current, update, k)
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--ks", default="10,100,1000")
    parser.add_argument("--hold-all-max-mib", type=float, default=4096,
                        help="skip hold-all arms that would need more memory than this")
    parser.add_argument("--out", type=Path, default=Path("results/aggregation"))
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    rng = np.random.default_rng(0)
    models = {kind: (make_model(kind, rng), make_model(kind, rng)) for kind in ("lora", "full")}
    head = harness.header("benchmarks.aggregation", numpy=np.__version__)
    goal = "peak memory at K=1000 <= 1.10 x at K=10"
    results = harness.run_arms(
        arms(ks), lambda arm: measure_arm(arm, models, args.hold_all_max_mib),
        save=lambda done: harness.write_json(args.out / "aggregation.json",
                                             {**head, "rows": list(done.values()), "goal": goal}))
    rows = list(results.values())
    ratios = {}
    for kind in ("lora", "full"):
        mine = {r["k"]: r["streaming_peak_mib"] for r in rows if r["size"] == kind}
        ratios[kind] = mine[max(ks)] / mine[min(ks)]
    harness.write_json(args.out / "aggregation.json",
                       {**head, "rows": rows,
                        f"streaming_peak_ratio_k{max(ks)}_over_k{min(ks)}": ratios, "goal": goal})
    print("\n" + harness.table(rows, [
        Column("size", "size"), Column("K", "k"),
        Column("stream MiB", "streaming_peak_mib", ".1f"),
        Column("stream s", "streaming_seconds", ".2f"),
        Column("hold-all MiB", "hold_all_peak_mib", ".1f", missing="(skipped)"),
        Column("hold-all s", "hold_all_seconds", ".2f")]))
    for kind, ratio in ratios.items():
        print(f"{kind}: streaming peak K={max(ks)} / K={min(ks)} = {ratio:.3f} "
              f"({'met' if ratio <= 1.10 else 'NOT met'}, goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
