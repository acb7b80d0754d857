"""Benchmark: the privacy audit on MiniLM at ε = ∞, 8 and 1, one command.

    flock /tmp/consortium/heavy.lock python -m benchmarks.audit [--out results]

Every arm audits the same partner data (partner 0 of the embedded demo set unless --data) with the
same canaries, hyperparameters and seed; only ε changes. Writes OUT/audit.json (config, per-arm
ε spent by Opacus' accountant, σ, MIA AUC ± SE, exposure, losses) and OUT/audit.png.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.evaluation.audit import AuditSettings
from common.config import RunConfig
from common.infra.logs import configure_logging
from simulations.audit import arm_name, parse_epsilon, report, run_arm, write_outputs

# The worst case the audit is meant to measure: canaries repeated and a model that can memorise.
# Chosen by the sweep recorded in BENCHMARKS.md ("Privacy audit").
DEFAULTS: dict = dict(canaries=64, repeats=4, candidates=1000, epochs=4, finetune="lora",
                      learning_rate=3e-3, dp_learning_rate=1e-2)


def arms(epsilons: list[float], config: RunConfig, dp_learning_rate: float) -> list[Arm]:
    """One arm per ε: the same run, DP off at ∞, else DP at ε with the DP learning rate."""
    return [Arm(arm_name(e), {"config": config.replace(dp=False) if math.isinf(e) else
                              config.replace(dp=True, epsilon=float(e),
                                             learning_rate=dp_learning_rate
                                             or config.learning_rate)})
            for e in epsilons]


def print_table(body: dict[str, Any]) -> None:
    print("\n" + harness.table([{"arm": n, **a} for n, a in body["arms"].items()], [
        Column("arm", "arm"), Column("ε spent", "epsilon_spent", ".2f", missing="∞"),
        Column("σ", "noise_multiplier", ".2f"),
        Column("MIA AUC", lambda a: f"{a['mia_auc']:.3f} ± {a['mia_auc_se']:.3f}"),
        Column("exposure", lambda a: a["exposure_inserted"]["mean"], ".2f"),
        Column("held-out", lambda a: a["exposure_held_out"]["mean"], ".2f"),
        Column("test acc", "test_accuracy", ".3f"), Column("seconds", "seconds", ".0f")]))


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--epsilons", default="inf,8,1", help="comma-separated (default inf,8,1)")
    parser.add_argument("--canaries", type=int, default=DEFAULTS["canaries"])
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"])
    parser.add_argument("--candidates", type=int, default=DEFAULTS["candidates"])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--finetune", choices=("lora", "full", "head"),
                        default=DEFAULTS["finetune"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--dp-learning-rate", type=float, default=DEFAULTS["dp_learning_rate"],
                        help="the DP arms' learning rate (default %(default)s; DP-SGD's noisy, "
                             "clipped steps need a larger one than plain AdamW)")
    parser.add_argument("--data", default="", help="a partner file (default: embedded demo data)")
    parser.add_argument("--base-model", default="", help="default: bundled MiniLM")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    configure_logging()
    try:
        epsilons = [parse_epsilon(e.strip()) for e in args.epsilons.split(",") if e.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    config = RunConfig(num_rounds=1, data=args.data, base_model=args.base_model,
                       finetune=args.finetune, learning_rate=args.learning_rate,
                       local_epochs=args.epochs)
    settings = AuditSettings(canaries=args.canaries, repeats=args.repeats,
                             candidates=args.candidates, seed=config.seed)
    command = harness.command("benchmarks.audit", argv)
    bodies: list[dict[str, Any]] = []

    def save(done: dict[str, dict[str, Any]]) -> None:  # audit.json and audit.png, every arm
        bodies.append(report(config, settings, done, command))
        write_outputs(args.out, bodies[-1])

    harness.run_arms(arms(epsilons, config, args.dp_learning_rate),
                     lambda arm: run_arm(arm.settings["config"], settings), save=save)
    print_table(bodies[-1])
    print(f"written: {args.out / 'audit.json'}, {args.out / 'audit.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
