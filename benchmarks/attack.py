"""Benchmark: one malicious partner out of five, against FedAvg and the robust rules.

    flock /tmp/consortium/heavy.lock python -m benchmarks.attack [--rounds 6] \
        [--seeds 42] [--out results]

The coordinator's real round loop (server.coordinator.run_federation) drives the partners' real
ClientApp handlers in process (simulations.local_grid: no SuperLink, same code otherwise), on a
tiny random BERT (tests/conftest.py's fixture, word-level vocabulary) and the embedded 4-topic
data. Partner 4 trains honestly, then replies

- ``sign-flip``: old − C · Δ / ‖Δ‖, its update reversed and stretched to the agreed clip C, the
  strongest update that still passes validation;
- ``sign-flip-plain``: old − Δ, the plain sign-flipped update issue 4 names (same norm as the
  honest update);
- ``scaled-1000``: old + 1000 Δ, which validation rejects (norm above the clip).

Writes OUT/attack.json: final weighted accuracy per arm and seed, per-round curves, the gap to the
clean FedAvg run, the reasons updates were rejected.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.config import RunConfig
from simulations.local_grid import LocalGrid, Tamper, sign_flip

ROOT = Path(__file__).resolve().parent.parent
PARTNERS, ATTACKER = 5, 4
# a task the clean run learns: full fine-tuning with trainable embeddings (the random tiny BERT's
# embeddings carry no meaning yet), lr from a short single-partner sweep (0.88 after 20 epochs)
TASK = dict(finetune="full", freeze_embeddings=False, learning_rate=3e-3, local_epochs=2,
            examples_per_partner=300, max_length=16, batch_size=16, dp=False,
            update_clip_norm=10.0, min_partners=2, round_timeout=5.0)
ARMS: dict[str, tuple[str, str]] = {  # name -> (aggregation, attack)
    "clean_fedavg": ("fedavg", ""), "clean_median": ("median", ""),
    "clean_trimmed": ("trimmed-mean:0.2", ""), "clean_multikrum": ("multi-krum:1", ""),
    "signflip_fedavg": ("fedavg", "sign-flip"), "signflip_median": ("median", "sign-flip"),
    "signflip_trimmed": ("trimmed-mean:0.2", "sign-flip"), "signflip_krum": ("krum:1", "sign-flip"),
    "scaled1000_fedavg": ("fedavg", "scaled-1000"),
    "plainflip_fedavg": ("fedavg", "sign-flip-plain"),
    "plainflip_median": ("median", "sign-flip-plain"),
    "plainflip_trimmed": ("trimmed-mean:0.2", "sign-flip-plain"),
    "plainflip_multikrum": ("multi-krum:1", "sign-flip-plain"),
    "signflip_multikrum": ("multi-krum:1", "sign-flip"),
}


def tiny_bert(directory: Path) -> str:
    """The test suite's tiny random BERT (tests/conftest.py: make_tiny_bert)."""
    spec = importlib.util.spec_from_file_location("_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return str(module.make_tiny_bert(directory))


def attack(kind: str, clip: float) -> dict[int, Tamper]:
    if kind == "sign-flip":
        return {ATTACKER: sign_flip(to_norm=clip)}
    if kind == "sign-flip-plain":
        return {ATTACKER: sign_flip(scale=1.0)}  # old − Δ
    if kind == "scaled-1000":
        return {ATTACKER: sign_flip(scale=-1000.0)}  # old + 1000 Δ
    return {}


def run_arm(base_model: str, out: Path, aggregation: str, kind: str, rounds: int, seed: int,
            **changes: Any) -> dict[str, Any]:
    """One federation; returns its per-round accuracies and what was rejected."""
    from server.coordinator import run_federation

    shutil.rmtree(out, ignore_errors=True)
    config = RunConfig(**{**TASK, **changes, "base_model": base_model, "num_rounds": rounds,
                          "seed": seed, "aggregation": aggregation, "out_dir": str(out)})
    started = time.time()
    run_federation(LocalGrid(config, PARTNERS, attack(kind, config.update_clip_norm)), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"accuracy": [ln["eval_accuracy"] for ln in lines],
            "final_accuracy": lines[-1]["eval_accuracy"],
            "rejected": sorted({f["reason"] for ln in lines for f in ln["failures"]}),
            "seconds": round(time.time() - started, 1)}


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]],
              head: dict[str, Any]) -> dict[str, Any]:
    """What is written: every run so far, with its gap to clean FedAvg of the same seed."""
    clean = {s: r["final_accuracy"] for s, r in results.get("clean_fedavg", {}).items()}
    for arm in results.values():
        for s, r in arm.items():
            r["gap_to_clean_fedavg_points"] = (round(100 * (r["final_accuracy"] - clean[s]), 2)
                                               if s in clean else None)
    return {
        **head, "machine": {**head["machine"], "load_average_at_end": os.getloadavg()},
        "complete": sum(map(len, results.values())) == len(args.arms) * len(args.seeds),
        "task": {**TASK, "update_clip_norm": args.update_clip_norm, "partners": PARTNERS,
                 "attacker": f"partner-{ATTACKER}", "rounds": args.rounds, "chance_accuracy": 0.25,
                 "model": "tiny random BERT (2 layers, 32 wide), tests/conftest.py"},
        "arms": {n: {"aggregation": ARMS[n][0], "attack": ARMS[n][1] or None,
                     "mean_final_accuracy": float(np.mean([r["final_accuracy"]
                                                           for r in results[n].values()])),
                     "seeds": results[n]} for n in results if results[n]},
    }


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--update-clip-norm", type=float, default=TASK["update_clip_norm"],
                        help="the agreed clip C: validation bound and the sign-flip's length")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--name", default="attack.json", help="file name written under --out")
    args = parser.parse_args()
    head = harness.header("benchmarks.attack", load_key="load_average_at_start")
    # one arm per (rule, attack, seed), seeds innermost; rewritten after every run
    arms = [Arm(f"{name}/{s}", {"name": name, "seed": s}) for name in args.arms
            for s in args.seeds]
    results: dict[str, dict[str, Any]] = {}

    def save(done: dict[str, dict[str, Any]]) -> None:
        for key, run in done.items():
            name, seed = key.split("/")
            results.setdefault(name, {})[seed] = run
        harness.write_json(args.out / args.name, summarize(args, results, head))

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_bert(Path(tmp) / "tiny-bert")

        def measure(arm: Arm) -> dict[str, Any]:
            name, seed = arm.settings["name"], arm.settings["seed"]
            aggregation, kind = ARMS[name]
            run = run_arm(model, Path(tmp) / f"{name}-{seed}", aggregation, kind, args.rounds,
                          seed, update_clip_norm=args.update_clip_norm)
            print(name, seed, run["final_accuracy"], flush=True)
            return run

        harness.run_arms(arms, measure, save=save)
    summary = summarize(args, results, head)

    def gap(arm: dict[str, Any]) -> float | None:
        gaps = [r["gap_to_clean_fedavg_points"] for r in arm["seeds"].values()]
        return None if None in gaps else float(np.mean(gaps))

    print("\n" + harness.table(
        [{"arm": n, **a, "gap": gap(a)} for n, a in summary["arms"].items()],
        [Column("arm", "arm"), Column("final acc", "mean_final_accuracy", ".3f"),
         Column("vs clean", "gap", "+.1f")]))
    print(f"written: {args.out / args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
