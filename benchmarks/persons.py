"""Benchmark (issue 16): per-person vs per-example DP at the same ε, on reviews grouped into
pseudo-persons, and the canary-person audit for both units.

    python -m benchmarks.persons [--rows-per-person 8] [--epsilon 8] [--out results/persons]

Data: ../shared/datasets/multi_domain_sentiment (skipped when absent). Multi-Domain Sentiment has
no usable author ids (7,192 distinct reviewer names for 8,000 reviews, 167 blank), so reviews are
grouped into *pseudo-persons*: per domain, the reviews in a seeded random order are cut into runs
of ``--rows-per-person`` consecutive reviews; each run is one person (``domain-j``), so every
person writes that many reviews of one domain, with mixed labels. Per domain, the first
``--eval-persons`` persons' reviews are the coordinator's evaluation set, the rest the partner's.

Part 1, federated (4 partners, one per domain): pooled-head, the same run config, ε per example
vs ε per person (person-column), plus the non-private run; accuracy on the evaluation set.
Part 2, audit (the books partner alone, LoRA as in benchmarks/audit.py): 64 canary persons, each
one random-word sentence with a random label written ``--rows-per-person`` times, inserted; 64
held out. Membership AUC per canary person (loss threshold), at ε per example vs ε per person on
the same data and canaries, and without DP.
Writes OUT/persons.json after every arm (harness) and prints both tables.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.evaluation.audit import AuditSettings
from common.config import RunConfig
from common.infra.logs import configure_logging

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared/datasets"
DOMAINS = ("books", "dvd", "electronics", "kitchen")


def pseudo_persons(root: Path, rows_per_person: int, eval_persons: int,
                   seed: int) -> tuple[list[tuple], list[tuple]]:
    """(partner rows, evaluation rows) as (text, label, domain, person)."""
    rng, train, held = np.random.default_rng(seed), [], []
    by_domain: dict[str, list[tuple[str, str]]] = {d: [] for d in DOMAINS}
    for line in (root / "multi_domain_sentiment.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        by_domain[r["domain"]].append((" ".join(f"{r.get('title', '')}. {r['text']}".split()),
                                       str(r["label"])))
    for domain in DOMAINS:
        rows = by_domain[domain]
        order = rng.permutation(len(rows))
        for position, i in enumerate(order[: len(rows) - len(rows) % rows_per_person]):
            person = position // rows_per_person
            row = (*rows[i], domain, f"{domain}-{person}")
            (held if person < eval_persons else train).append(row)
    return train, held


def write_csv(rows: list[tuple], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "domain", "person"])
        writer.writerows(rows)
    return target


def federated_arm(config: RunConfig) -> dict[str, Any]:
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    out = Path(config.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    run_federation(LocalGrid(config, len(DOMAINS)), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    partners = json.loads((out / "privacy_report.json").read_text())["partners"]
    return {"seconds": round(time.time() - started, 1),
            "accuracy_per_round": [ln["eval_coordinator"]["accuracy"] for ln in lines],
            "final_accuracy": lines[-1]["eval_coordinator"]["accuracy"],
            "partners_mean_accuracy": lines[-1]["eval_accuracy"],
            "unit": sorted({p.get("unit") for p in partners.values()}),
            "epsilon": {n: p.get("epsilon") for n, p in partners.items()},
            "persons": {n: p.get("persons") for n, p in partners.items()},
            "plan": {n: p.get("plan") for n, p in partners.items()}}


def audit_arm(config: RunConfig, settings: AuditSettings, unit: str) -> dict[str, Any]:
    from simulations.audit import run_arm

    arm = run_arm(config, settings, unit)
    return {k: v for k, v in arm.items() if not k.startswith("losses_")}


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rows-per-person", type=int, default=8)
    parser.add_argument("--eval-persons", type=int, default=50, help="per domain (default 50)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("all", "federated", "audit"), default="all")
    parser.add_argument("--canaries", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("results/persons"))
    args = parser.parse_args(argv)
    configure_logging()
    folder = args.datasets_dir / "multi_domain_sentiment"
    if not folder.is_dir():
        print(f"skipped: {folder} not found")
        return 0
    train, held = pseudo_persons(folder, args.rows_per_person, args.eval_persons, args.seed)
    data = write_csv(train, args.out / "mds_persons.csv")
    held_path = write_csv(held, args.out / "mds_persons_eval.csv")
    base = dict(data=str(data), labels="0,1", server_eval_data=str(held_path), max_length=128,
                num_rounds=args.rounds, seed=args.seed, partition="column:domain",
                finetune="pooled-head", dp_plan_check=False, min_partners=2, round_timeout=60.0,
                max_rows_per_person=args.rows_per_person)
    found = []
    if args.part in ("all", "federated"):
        for name, extra in (("federated_per_example", dict(epsilon=args.epsilon)),
                            ("federated_per_person", dict(epsilon=args.epsilon,
                                                          person_column="person")),
                            ("federated_no_dp", dict(dp=False))):
            config = RunConfig(**base, **extra, out_dir=str(args.out / "runs" / name))
            found.append(Arm(name, {"part": "federated", "config": config}))
    if args.part in ("all", "audit"):
        books = write_csv([r for r in train if r[2] == "books"], args.out / "books_persons.csv")
        audit = RunConfig(data=str(books), labels="0,1", max_length=64, num_rounds=1,
                          finetune="lora", local_epochs=4, learning_rate=1e-2, seed=args.seed,
                          dp_plan_check=False, person_column="person",
                          max_rows_per_person=args.rows_per_person)
        for name, unit, extra in (("audit_per_example", "example", dict(epsilon=args.epsilon)),
                                  ("audit_per_person", "person", dict(epsilon=args.epsilon)),
                                  ("audit_no_dp", "example", dict(dp=False,
                                                                  learning_rate=3e-3))):
            found.append(Arm(name, {"part": "audit", "unit": unit,
                                    "config": audit.replace(**extra)}))
    settings = AuditSettings(canaries=args.canaries, repeats=args.rows_per_person,
                             seed=args.seed)
    head = {**harness.header("benchmarks.persons"),
            "data": {"partner_rows": len(train), "eval_rows": len(held),
                     "rows_per_person": args.rows_per_person,
                     "how": "per domain: seeded shuffle, consecutive runs of rows-per-person "
                            "reviews = one pseudo-person"}}

    def measure(arm: Arm) -> dict[str, Any]:
        if arm.settings["part"] == "federated":
            return federated_arm(arm.settings["config"])
        return audit_arm(arm.settings["config"], settings, arm.settings["unit"])

    results = harness.run_arms(found, measure, save=lambda done: harness.write_json(
        args.out / "persons.json", {**head, "arms": done}))
    print(harness.table([{"arm": n, **r} for n, r in results.items() if n.startswith("fed")], [
        Column("arm", "arm"), Column("accuracy", "final_accuracy", ".4f"),
        Column("partners' mean", "partners_mean_accuracy", ".4f"),
        Column("unit", lambda r: ",".join(u or "-" for u in r["unit"])),
        Column("seconds", "seconds", ".0f")]))
    print(harness.table([{"arm": n, **r} for n, r in results.items() if n.startswith("aud")], [
        Column("arm", "arm"), Column("ε spent", "epsilon_spent", ".2f", missing="∞"),
        Column("unit", lambda r: r.get("unit", "-")),
        Column("MIA AUC", lambda r: f"{r['mia_auc']:.3f} ± {r['mia_auc_se']:.3f}"),
        Column("test acc", "test_accuracy", ".3f"), Column("seconds", "seconds", ".0f")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
