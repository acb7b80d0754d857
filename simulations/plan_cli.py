"""`consortium plan`: a partner's DP plan and its predicted noise-to-signal, without training."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from common.config import AUTO, TRAINED_MODES, RunConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print the DP plan (batch, steps, sigma, lr) of a partner "
                                    "and whether it is predicted to learn; trains nothing")
    p.add_argument("--examples", type=int, required=True,
                   help="the partner's TRAINING examples: its rows after the held-out split "
                        "(test-fraction 0.2 by a hash of each text, so about 0.8 × rows, give or "
                        "take a few)")
    p.add_argument("--epsilon", type=float, required=True, help="target ε over all rounds")
    p.add_argument("--rounds", type=int, required=True, help="planned federated rounds")
    p.add_argument("--delta", type=float, help="δ (default: the run config's, 1e-5)")
    p.add_argument("--local-epochs", type=int, help="passes per round (default: run config's)")
    p.add_argument("--finetune", help=f"{' | '.join(TRAINED_MODES)} (default: the run "
                   "config's)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default: the run config's)")
    p.add_argument("--lora-layers", type=int,
                   help="LoRA in the top N encoder layers only (default: the run config's)")
    p.add_argument("--lora-freeze-a", action="store_true", default=None,
                   help="FFA-LoRA: count only the B matrices as trainable")
    p.add_argument("--batch-size", help="auto or an expected batch (default: auto)")
    p.add_argument("--num-labels", type=int, default=2, help="classes (default 2)")
    p.add_argument("--trainable-dims", type=int,
                   help="d; default: counted on the base model for --finetune (loads it)")
    p.add_argument("--update-clip-norm", type=float,
                   help="the run's update bound, checked against the plan's update (default: "
                        "the run config's)")
    p.add_argument("--ledger", metavar="FILE", help="a partner's ledger: plan against what it "
                   "has spent on this data (composed exactly, as the partner will)")
    p.add_argument("--spent", type=float, metavar="EPS", help="without the ledger: ε already "
                   "spent, composed by adding (an upper bound; --ledger is exact)")
    p.add_argument("--max-epsilon", type=float, help="the partner's budget: exit 2 with what "
                   "still fits when the plan would pass it")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _config(args: argparse.Namespace) -> RunConfig:
    values = {"epsilon": args.epsilon, "num-rounds": args.rounds, "delta": args.delta,
              "local-epochs": args.local_epochs, "finetune": args.finetune,
              "lora-r": args.lora_r, "lora-layers": args.lora_layers,
              "lora-freeze-a": args.lora_freeze_a, "update-clip-norm": args.update_clip_norm,
              "batch-size": (args.batch_size if args.batch_size in (None, AUTO)
                             else _int(args.batch_size))}
    return RunConfig.from_mapping({k: v for k, v in values.items() if v is not None})


def _int(text: str) -> int | str:
    return int(text) if text.isdigit() else text  # RunConfig names a bad value


def _dims(config: RunConfig, num_labels: int) -> int:
    from common.model.factory import build_model, trainable_size

    return trainable_size(build_model(config, tuple(f"label-{i}" for i in range(num_labels))))


def handle(args: argparse.Namespace) -> int:
    """Print the plan; a plan predicted to learn nothing exits 2 with the refusal's advice."""
    from common.privacy.planner import plan_dp, update_clip_note

    config = _config(args)
    dims = args.trainable_dims or _dims(config, args.num_labels)
    pooled = None
    if config.finetune != "pooled-head" and not args.trainable_dims:
        pooled = _dims(config.replace(finetune="pooled-head"), args.num_labels)
    plan = plan_dp(args.examples, config.epsilon, config.delta, config.num_rounds,
                   config.local_epochs, dims, config.max_grad_norm,
                   None if config.batch_size == AUTO else int(config.batch_size),
                   finetune=config.finetune, pooled_head_dims=pooled)
    advice = update_clip_note(plan, config.update_clip_norm)
    if args.json:
        print(json.dumps({**asdict(plan), "learnable": plan.learnable,
                          "noise_update_norm": plan.noise_update_norm,
                          "update_clip_note": advice}, indent=1))
    else:
        print(f"finetune = {config.finetune!r}: {plan.describe()}")
        if advice:
            print(f"note: {advice}", file=sys.stderr)
    print("note: --examples counts training rows; a file of N rows trains on about 0.8 × N "
          "(the partner's held-out split, by a hash of each text)", file=sys.stderr)
    return _against_budget(args, plan)


def _against_budget(args: argparse.Namespace, plan) -> int:
    """With --ledger / --spent: ε after the run, composed with what was spent; with
    --max-epsilon, exit 2 and say what still fits when the plan would pass the budget."""
    from common.privacy.ledger import epsilon_of, fits_note

    if args.ledger is None and args.spent is None:
        return 0
    run = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)] * plan.rounds
    if args.ledger is not None:
        from common.infra.storage import read_sealed_json

        releases = read_sealed_json(args.ledger)["releases"]
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
        spent, after = epsilon_of(history, plan.delta), epsilon_of(history + run, plan.delta)
        how = f"{len(history)} release(s) in {args.ledger}, composed with Opacus' accountant"
    else:
        history, spent = [], float(args.spent)
        after, how = spent + epsilon_of(run, plan.delta), "added (an upper bound)"
    print(f"spent so far: epsilon = {spent:.3f}; after this run: {after:.3f} ({how})")
    if args.max_epsilon is not None and after > args.max_epsilon:
        if args.ledger is None:
            note = (f"at most epsilon = {max(args.max_epsilon - spent, 0):.3f} for the run "
                    "(by adding; --ledger gives the exact figure)")
        else:
            note = fits_note(history, run, plan.delta, args.max_epsilon)
        print(f"the plan would bring epsilon to {after:.3f} > max-epsilon "
              f"{args.max_epsilon:g}. {note}", file=sys.stderr)
        return 2
    return 0
