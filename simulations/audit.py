"""`consortium audit`: how much does one partner's trained model leak about its records?

Phases: load the partner's data (its file, or the embedded demo set) -> draw canaries and insert
half of them -> train once with the project's own code (DP-SGD at the asked ε, or the plain
baseline at ε = ∞) -> score inserted vs held-out canaries (membership-inference AUC) and rank each
inserted canary among alternatives (exposure) -> write OUT/audit.json and OUT/audit.png.
The trained model is discarded: the audit releases only its numbers. torch, transformers and
Opacus are imported inside the functions that train, so `consortium --help` stays fast.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.evaluation import audit as A
from common.config import TRAINED_MODES, RunConfig
from common.data.text import TextDataset, split_train_test
from common.errors import ConfigError, PrivacyError
from common.sources import run_labels
from common.infra.storage import atomic_write_bytes, atomic_write_json, finite_or_none
from common.tasks import get_task
from common.infra.machine import machine, versions

logger = logging.getLogger(__name__)


def parse_epsilon(text: str) -> float:
    """A positive ε, or ``inf`` for no DP."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"epsilon {text!r} must be a positive number or 'inf'")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="measure leakage: canaries, membership inference, exposure")
    p.add_argument("--epsilon", type=parse_epsilon, default=8.0,
                   help="ε of DP-SGD; inf = no DP (default 8)")
    p.add_argument("--canaries", type=int, default=A.AuditSettings.canaries,
                   help="canaries inserted; as many again are held out (default %(default)s)")
    p.add_argument("--repeats", type=int, default=A.AuditSettings.repeats,
                   help="copies of each inserted canary (default %(default)s)")
    p.add_argument("--candidates", type=int, default=A.AuditSettings.candidates,
                   help="alternatives per exposure rank (default %(default)s)")
    p.add_argument("--words", type=int, default=A.AuditSettings.words,
                   help="random vocabulary words per canary (default %(default)s)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the data (default 4)")
    p.add_argument("--unit", choices=("example", "person"), default="example",
                   help="what DP-SGD protects: each row, or each person (person-column, else "
                        "one person per row; a canary's copies are one canary person)")
    p.add_argument("--data", help="the partner's CSV / TSV / JSONL file (default: the embedded "
                                  "demo data of partner 0)")
    p.add_argument("--base-model", help="local directory or hub name (default: bundled MiniLM)")
    p.add_argument("--finetune", choices=TRAINED_MODES, help="default: lora")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--out", default="runs/audit", help="output directory (default runs/audit)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config key (docs/configuration.md), repeatable")


def audit_config(args: argparse.Namespace, extra: dict[str, Any]) -> RunConfig:
    flags = {"data": args.data, "base-model": args.base_model, "finetune": args.finetune,
             "learning-rate": args.learning_rate, "local-epochs": args.epochs}
    values = {**extra, **{k: v for k, v in flags.items() if v is not None}, "num-rounds": 1}
    if math.isinf(args.epsilon):
        values["dp"] = False
    else:
        values.update({"dp": True, "epsilon": args.epsilon})
    config = RunConfig.from_mapping(values)
    if not get_task(config.task).one_label_per_text:
        raise ConfigError(f"task = {config.task!r}: the audit's canaries are labelled texts; "
                          "audit a text-classification run")
    return config


def partner_data(config: RunConfig) -> tuple[TextDataset, TextDataset]:
    """(train, test) of the audited partner: its file, or partner 0 of the embedded data."""
    task, labels = get_task(config.task), run_labels(config)
    data = (task.read(config.data, config, labels,
                      person_column=config.person_column or None) if config.data
            else task.demo_data(0, config, labels))
    return split_train_test(data, config.test_fraction, config.seed)  # type: ignore[arg-type]


def train_arm(config: RunConfig, model: Any, encoded: Any, n: int,
              persons: Any = None) -> dict[str, Any]:
    """Train on ``encoded`` (n examples, or with ``persons`` n persons: per-person DP) once;
    the privacy numbers from Opacus' accountant."""
    from client.round_plan import batch_and_learning_rate
    from common.model.factory import trainable_size
    from common.training.person_dp import train_dp_persons
    from common.privacy.planner import plan_dp
    from common.privacy.ledger import epsilon_of
    from common.training.loop import DPSettings, TrainSettings, clipping_for, train_dp, train_plain

    plan = None  # one round; the audit measures leakage, so an unlearnable plan is not refused
    if config.dp and config.delta < 1.0 / n:
        plan = plan_dp(n, config.epsilon, config.delta, 1, config.local_epochs,
                       trainable_size(model), config.max_grad_norm,
                       None if config.batch_size == "auto" else int(config.batch_size),
                       None if config.learning_rate == "auto" else float(config.learning_rate),
                       config.finetune, config.noise_multiplier, check=False)
    batch, lr = batch_and_learning_rate(config, plan)
    settings = TrainSettings(lr, batch, config.local_epochs, config.max_length, seed=config.seed,
                             plan=plan, head_lr_scale=config.head_lr_scale)
    if not config.dp:
        stats = train_plain(model, encoded, settings)
        return {"dp": False, "epsilon_target": None, "epsilon_spent": None, "delta": 0.0,
                "noise_multiplier": 0.0, "sample_rate": 0.0, "steps": stats.steps,
                "train_loss": finite_or_none(stats.loss)}
    if config.delta >= 1.0 / n:
        raise PrivacyError(f"delta = {config.delta:g} is not below 1 / {n} training examples; "
                           "use a smaller delta (--set delta=...)")
    plan = settings.require_plan()
    q, steps, sigma = plan.sample_rate, plan.steps_per_round, plan.noise_multiplier
    if persons is not None:
        dp = DPSettings(sigma, config.max_grad_norm, "hooks")
        stats, history = train_dp_persons(model, encoded, persons, settings, dp,
                                          config.max_rows_per_person, [])
    else:
        dp = DPSettings(sigma, config.max_grad_norm,
                        clipping_for(config.clipping, config.finetune))
        stats, history = train_dp(model, encoded, settings, dp, [])
    if stats.steps != steps:
        raise PrivacyError(f"Opacus ran {stats.steps} steps, the audit planned {steps}")
    return {"dp": True, "epsilon_target": None if config.noise_multiplier else config.epsilon,
            "epsilon_spent": epsilon_of(history, config.delta), "delta": config.delta,
            "noise_multiplier": sigma, "sample_rate": q, "steps": stats.steps,
            "train_loss": finite_or_none(stats.loss), "unit": "example" if persons is None
            else "person", "clipped_fraction": finite_or_none(stats.clipped_fraction)}


def run_arm(config: RunConfig, settings: A.AuditSettings,
            unit: str = "example") -> dict[str, Any]:
    """One audit: canaries in, train, measure. Returns the arm's record for audit.json.
    ``unit`` = person: per-person DP-SGD, each canary's copies one canary person."""
    from client.round_plan import trainable_view
    from common.model.factory import build_model, load_tokenizer  # torch & co. only when auditing
    from common.training.person_dp import Persons
    from common.evaluation.scoring import evaluate, log_probabilities
    from common.training.loop import encode

    started = time.time()
    train, test = partner_data(config)
    tokenizer = load_tokenizer(config)
    canaries = A.make_canaries(A.canary_vocabulary(tokenizer.get_vocab()), train.label_names,
                               settings, exclude=train.texts + test.texts)
    rng = np.random.default_rng([settings.seed, 1])
    audited = A.insert_canaries(train, canaries.inserted, settings.repeats, rng)
    model = build_model(config, train.label_names)
    trained, encoded = trainable_view(model, encode(tokenizer, audited, config.max_length))
    persons = Persons.of(audited.persons) if unit == "person" and config.dp else None
    arm = train_arm(config, trained, encoded, len(persons) if persons else len(audited),
                    persons)

    def score(data: TextDataset) -> np.ndarray:
        return log_probabilities(model, encode(tokenizer, data, config.max_length))

    inserted = A.losses_at(score(canaries.inserted), canaries.inserted.labels)
    held_out = A.losses_at(score(canaries.held_out), canaries.held_out.labels)
    pool = score(TextDataset(canaries.candidates, (0,) * len(canaries.candidates),
                             train.label_names))
    auc = A.roc_auc(-inserted, -held_out)  # lower loss = "member"
    arm.update({
        "mia_auc": auc, "mia_auc_se": A.auc_standard_error(auc, len(inserted), len(held_out)),
        "exposure_inserted": A.summary(A.exposures(inserted, canaries.inserted.labels, pool)),
        "exposure_held_out": A.summary(A.exposures(held_out, canaries.held_out.labels, pool)),
        "max_exposure_possible": math.log2(len(canaries.candidates) + 1),
        "test_accuracy": evaluate(model, encode(tokenizer, test, config.max_length)).accuracy,
        "learning_rate": config.learning_rate,
        "train_examples": len(train), "training_rows_with_canaries": len(audited),
        "persons": len(Persons.of(audited.persons)),
        "losses_inserted": inserted.tolist(), "losses_held_out": held_out.tolist(),
        "seconds": round(time.time() - started, 1)})
    logger.info("ε=%s: MIA AUC %.3f ± %.3f, exposure %.2f (held-out %.2f), test acc %.3f",
                arm["epsilon_spent"], auc, arm["mia_auc_se"], arm["exposure_inserted"]["mean"],
                arm["exposure_held_out"]["mean"], arm["test_accuracy"])
    return arm


def arm_name(epsilon: float) -> str:
    return "eps=inf" if math.isinf(epsilon) else f"eps={epsilon:g}"


def report(config: RunConfig, settings: A.AuditSettings, arms: dict[str, dict[str, Any]],
           command: str) -> dict[str, Any]:
    config_map = config.to_mapping()
    for key in ("epsilon", "dp"):  # per arm
        config_map.pop(key)
    return {
        "command": command, "config": config_map,
        "audit": {"canaries_inserted": settings.canaries, "canaries_held_out": settings.canaries,
                  "repeats": settings.repeats, "candidates": settings.candidates,
                  "words_per_canary": settings.words, "seed": settings.seed,
                  "score": "loss (lower = member)"},
        "machine": machine(), "versions": versions(),
        "arms": arms}


def write_outputs(out: Path, body: dict[str, Any]) -> None:
    """OUT/audit.json and OUT/audit.png (loss histograms per arm + ROC), both atomic."""
    atomic_write_json(out / "audit.json", body)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = body["arms"]
    fig, axes = plt.subplots(1, len(arms) + 1, figsize=(4 * (len(arms) + 1), 3.4))
    for ax, (name, arm) in zip(axes, arms.items()):
        bins = np.histogram_bin_edges(arm["losses_inserted"] + arm["losses_held_out"], bins=25)
        ax.hist(arm["losses_held_out"], bins=bins, alpha=0.6, label="held out")
        ax.hist(arm["losses_inserted"], bins=bins, alpha=0.6, label="inserted")
        spent = arm["epsilon_spent"]
        ax.set_title(f"{name} (spent {spent:.2f})" if spent is not None else f"{name} (no DP)")
        ax.set_xlabel("canary loss")
        ax.legend()
    roc = axes[-1]
    for name, arm in arms.items():
        fpr, tpr = A.roc_curve(-np.array(arm["losses_inserted"]),
                               -np.array(arm["losses_held_out"]))
        roc.plot(fpr, tpr, label=f"{name}: AUC {arm['mia_auc']:.2f}")
    roc.plot([0, 1], [0, 1], "k:", linewidth=1)
    roc.set_xlabel("false-positive rate")
    roc.set_ylabel("true-positive rate")
    roc.set_title("loss-based membership inference")
    roc.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out / "audit.png", buffer.getvalue())


def run_audit(config: RunConfig, settings: A.AuditSettings, epsilons: Sequence[float],
              out: Path, command: str, dp_learning_rate: float | None = None,
              unit: str = "example") -> dict[str, Any]:
    """Every ε in ``epsilons`` on the same data and canaries; writes OUT/audit.{json,png}.
    ``dp_learning_rate``: the DP arms' own learning rate (DP-SGD's best differs from AdamW's)."""
    arms = {}
    for epsilon in epsilons:
        arm_config = config.replace(dp=False) if math.isinf(epsilon) else config.replace(
            dp=True, epsilon=float(epsilon),
            learning_rate=dp_learning_rate or config.learning_rate)
        arms[arm_name(epsilon)] = run_arm(arm_config, settings, unit)
    body = report(config, settings, arms, command)
    write_outputs(out, body)
    return body


def handle(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    if args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs} must be at least 1")
    config = audit_config(args, extra)
    settings = A.AuditSettings(canaries=args.canaries, repeats=args.repeats,
                               candidates=args.candidates, words=args.words, seed=config.seed)
    out = Path(args.out)
    body = run_audit(config, settings, [args.epsilon], out, " ".join(["consortium", *sys.argv[1:]]),
                     unit=args.unit)
    arm = body["arms"][arm_name(args.epsilon)]
    spent = f"{arm['epsilon_spent']:.3f}" if arm["dp"] else "∞ (no DP)"
    print(f"MIA AUC {arm['mia_auc']:.3f} ± {arm['mia_auc_se']:.3f}, mean exposure "
          f"{arm['exposure_inserted']['mean']:.2f} bits (held-out canaries "
          f"{arm['exposure_held_out']['mean']:.2f}), ε spent {spent}"
          + (f" per {arm['unit']}" if arm["dp"] else ""))
    print(f"written: {out / 'audit.json'}, {out / 'audit.png'}")
    return 0
