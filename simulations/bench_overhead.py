"""Benchmark P5: simulation overhead, round wall time ÷ the sum of the partners' pure training time.

    python -m simulations.bench_overhead [--partners 3 --rounds 3 --num-cpus 2] [--from RUN_DIR]

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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

CPU_GOAL = 1.25


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
                                           if m.get("train_phase_seconds") else None)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs per simulated partner (default: all, one partner at a time)")
    parser.add_argument("--from", dest="run_dir", type=Path, help="read this run instead")
    parser.add_argument("--out", type=Path, default=Path("results/overhead"))
    args = parser.parse_args()
    os.environ.setdefault("CONSORTIUM_PROGRESS", "0")
    wall = None
    if args.run_dir is None:
        from common.config import RunConfig
        from simulations.simulate import Federation, run_simulation

        args.run_dir = args.out / "run"
        shutil.rmtree(args.run_dir, ignore_errors=True)
        started = time.perf_counter()
        run_simulation(RunConfig(num_rounds=args.rounds, out_dir=str(args.run_dir)),
                       Federation(partners=args.partners, num_cpus=args.num_cpus))
        wall = time.perf_counter() - started
    rows = round_ratios(args.run_dir)
    steady = rows[1:] or rows  # round 1 also pays Ray's worker start and the first imports
    mean = sum(r["round_ratio"] for r in steady) / len(steady)
    print("| round | round s | train phase s | Σ partner train s | round ÷ Σ train |")
    for r in rows:
        print(f"| {r['round']} | {r['round_seconds']:.1f} | {r['train_phase_seconds'] or 0:.1f} | "
              f"{r['sum_train_seconds']:.1f} | {r['round_ratio']:.3f} |")
    print(f"mean over rounds 2+: {mean:.3f} (goal ≤ {CPU_GOAL} on CPU: "
          f"{'met' if mean <= CPU_GOAL else 'not met'})")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "loadavg_after": os.getloadavg()},
              "config": {"partners": args.partners, "rounds": args.rounds,
                         "num_cpus_per_partner": args.num_cpus, "run_dir": str(args.run_dir)},
              "total_wall_seconds": wall, "rounds": rows, "steady_mean_ratio": mean,
              "goal": CPU_GOAL, "goal_met": mean <= CPU_GOAL}
    from common.storage import atomic_write_json

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "overhead.json", result)
    print(f"wrote {args.out / 'overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
