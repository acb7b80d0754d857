"""Benchmark: the privacy audit on MiniLM at ε = ∞, 8 and 1, one command.

    flock /tmp/consortium/heavy.lock python -m simulations.bench_audit [--out results]

Every arm audits the same partner data (partner 0 of the embedded demo set unless --data) with the
same canaries, hyperparameters and seed; only ε changes. Writes OUT/audit.json (config, per-arm
ε spent by Opacus' accountant, σ, MIA AUC ± SE, exposure, losses) and OUT/audit.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.audit import AuditSettings
from common.config import RunConfig
from common.logs import configure_logging
from simulations.audit import parse_epsilon, run_audit

# The worst case the audit is meant to measure: canaries repeated and a model that can memorise.
# Chosen by the sweep recorded in BENCHMARKS.md ("Privacy audit").
DEFAULTS: dict = dict(canaries=64, repeats=4, candidates=1000, epochs=4, finetune="lora",
                      learning_rate=3e-3, dp_learning_rate=1e-2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    command = " ".join(["python -m simulations.bench_audit", *sys.argv[1:]])
    body = run_audit(config, settings, epsilons, args.out, command, args.dp_learning_rate)
    print(f"\n{'arm':<8} {'ε spent':>8} {'σ':>6} {'MIA AUC':>13} {'exposure':>9} "
          f"{'held-out':>9} {'test acc':>9} {'seconds':>8}")
    for name, arm in body["arms"].items():
        spent = "∞" if arm["epsilon_spent"] is None else f"{arm['epsilon_spent']:.2f}"
        print(f"{name:<8} {spent:>8} {arm['noise_multiplier']:>6.2f} "
              f"{arm['mia_auc']:>6.3f} ± {arm['mia_auc_se']:.3f} "
              f"{arm['exposure_inserted']['mean']:>9.2f} {arm['exposure_held_out']['mean']:>9.2f} "
              f"{arm['test_accuracy']:>9.3f} {arm['seconds']:>8.0f}")
    print(f"written: {args.out / 'audit.json'}, {args.out / 'audit.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
