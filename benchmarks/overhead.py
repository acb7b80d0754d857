"""Benchmark P5: simulation overhead, round wall time ÷ the sum of the partners' pure training time.

    python -m benchmarks.overhead [--partners 3 --rounds 3 --num-cpus 2] [--from RUN_DIR]
    python -m benchmarks.overhead --num-gpus 0.25 --device cuda   # the GPU row

Runs the README demo (embedded data, MiniLM + LoRA, DP ε = 8) through Flower's simulation engine
(``consortium simulate``'s code path) and reads the run's ``metrics.jsonl``: per round the
coordinator records its wall time (``seconds``: train phase + evaluation phase) and
``train_phase_seconds`` (first push to last reply of the train Messages), and each partner reports
``train-seconds``, the wall time of its local training alone (DP-SGD, from the first Poisson batch
to the last optimizer step; model building, tokenizing, clipping the update, encoding, the ledger
and the evaluation are not in it: they are overhead here).

With ``--num-cpus`` equal to the machine's cores (the default) Flower runs one partner at a time,
so the sum of the partners' training times is the time the machine spent training and the ratio
is the share of everything else. ``--from`` only reads an existing run directory.

On a GPU (``--num-gpus F``: 1/F partners share one GPU at once) the goal is 1.05, and the run
doubles as the fractional-GPU leak check: each CUDA partner reports the bytes its process still
reserves after handing a round's memory back (``partner_gpu_bytes`` in metrics.jsonl); the check
passes when the largest of them does not grow from round 1 to the last round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Column

CPU_GOAL, GPU_GOAL = 1.25, 1.05
LEAK_SLACK = 16 * 2**20  # bytes a process may still reserve more in the last round than in round 1


def round_ratios(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        train = {k: v for k, v in (m.get("partner_train_seconds") or {}).items() if v}
        if not train:
            raise SystemExit(f"{run_dir}/metrics.jsonl round {m['round']} has no partner "
                             "train-seconds (a run from before they were recorded?)")
        total = sum(train.values())
        rows.append({"round": m["round"], "round_seconds": m["seconds"],
                     "train_phase_seconds": m.get("train_phase_seconds"),
                     "partner_train_seconds": train, "sum_train_seconds": total,
                     "round_ratio": m["seconds"] / total,
                     "train_phase_ratio": (m["train_phase_seconds"] / total
                                           if m.get("train_phase_seconds") else None),
                     "partner_gpu_bytes": m.get("partner_gpu_bytes")})
    return rows


def leak_check(rows: list[dict]) -> dict | None:
    """Largest per-process GPU bytes still reserved after each round; None for a CPU run."""
    reserved = [max((g["reserved"] for g in (r["partner_gpu_bytes"] or {}).values()), default=None)
                for r in rows]
    if all(r is None for r in reserved):
        return None
    if any(r is None for r in reserved):
        raise SystemExit("some rounds have no partner GPU bytes: a mixed CPU / GPU run")
    grew = reserved[-1] - reserved[0]
    return {"max_reserved_after_round": reserved, "grew_bytes": grew,
            "no_leak": grew <= LEAK_SLACK}


def simulate(args: argparse.Namespace) -> float:
    """The README demo through Flower's simulation engine into ``args.run_dir``; wall seconds."""
    from common.config import RunConfig
    from simulations.simulate import Federation, run_simulation

    shutil.rmtree(args.run_dir, ignore_errors=True)
    started = time.perf_counter()
    run_simulation(RunConfig(num_rounds=args.rounds, out_dir=str(args.run_dir),
                             device=args.device),
                   Federation(args.partners, args.num_cpus, args.num_gpus))
    return time.perf_counter() - started


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs per simulated partner (default: all, one partner at a time)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPU share per partner")
    parser.add_argument("--device", default="auto", help="run config device (auto, cpu, cuda)")
    parser.add_argument("--from", dest="run_dir", type=Path, help="read this run instead")
    parser.add_argument("--out", type=Path, default=Path("results/overhead"))
    args = parser.parse_args()
    os.environ.setdefault("CONSORTIUM_PROGRESS", "0")
    wall = None
    if args.run_dir is None:
        args.run_dir = args.out / "run"
        wall = simulate(args)
    rows = round_ratios(args.run_dir)
    steady = rows[1:] or rows  # round 1 also pays Ray's worker start and the first imports
    mean = sum(r["round_ratio"] for r in steady) / len(steady)
    leak = leak_check(rows)
    goal, where = (CPU_GOAL, "CPU") if leak is None else (GPU_GOAL, "GPU")
    print(harness.table(rows, [
        Column("round", "round"), Column("round s", "round_seconds", ".1f"),
        Column("train phase s", lambda r: r["train_phase_seconds"] or 0, ".1f"),
        Column("Σ partner train s", "sum_train_seconds", ".1f"),
        Column("round ÷ Σ train", "round_ratio", ".3f")], markdown=True))
    print(f"mean over rounds 2+: {mean:.3f} (goal ≤ {goal} on {where}: "
          f"{'met' if mean <= goal else 'not met'})")
    if leak is not None:
        print(f"GPU bytes still reserved after each round (largest process): "
              f"{leak['max_reserved_after_round']} -> {'no leak' if leak['no_leak'] else 'LEAK'}")
    result = {**harness.header("benchmarks.overhead", "loadavg_after"),
              "config": {"partners": args.partners, "rounds": args.rounds,
                         "num_cpus_per_partner": args.num_cpus, "num_gpus_per_partner":
                         args.num_gpus, "device": args.device, "run_dir": str(args.run_dir)},
              "total_wall_seconds": wall, "rounds": rows, "steady_mean_ratio": mean,
              "goal": goal, "goal_met": mean <= goal, "gpu_leak_check": leak}
    harness.write_json(args.out / "overhead.json", result)
    print(f"wrote {args.out / 'overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
