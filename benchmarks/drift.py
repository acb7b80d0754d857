"""Benchmark (issue 17, done-when 3): drift since release on Multi-Domain Sentiment. A release is
trained by two partners, books and dvd; then a monitoring run asks each for its accuracy on new
data: partner 0's new reviews come from another domain (kitchen), partner 1's are new dvd
reviews. The coordinator's drift check flags a partner whose accuracy fell by more than
drift-threshold since the release.

    python -m benchmarks.drift [--per-partner 1500] [--new-per-partner 300] [--epsilon 8]
        [--release-domains books,dvd] [--new-domains kitchen,dvd]

Data: ../shared/datasets/multi_domain_sentiment (or --datasets-dir; skipped when absent). Per
domain a seeded shuffle: the first --per-partner reviews train the release (partition
column:domain, each partner holding out 20 % by the hash of each text: the baseline), the next
--new-per-partner are the new data (partition column:slot of the monitoring file: slot 0 =
kitchen, slot 1 = dvd). Pooled-head (DP linear head on mean-pooled MiniLM features), ε per
partner, max-length 128. As a control, the release is also scored on new books reviews (partner
0's own domain) by `consortium partner evaluate`'s code (client.monitor): how much of partner 0's
drop is the domain and how much the noise of a small baseline; the table also gives each
drop's standard error (binomial, both accuracies independent). Both runs go through the
coordinator's real run loop and the partners' real ClientApp handlers in this process
(simulations.local_grid). Writes OUT/drift.json after each arm (harness) and prints the table.
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
from common.config import RunConfig
from common.infra.logs import configure_logging

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared/datasets"
RELEASE_DOMAINS = ("books", "dvd")  # partner 0, partner 1 (column:domain sorts the values)
NEW_DOMAINS = ("kitchen", "dvd")  # partner 0's new data, partner 1's
DOMAINS = ("books", "dvd", "electronics", "kitchen")


def shuffled_domains(root: Path, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Every review as (title. text, label), per domain, in a seeded order."""
    by_domain: dict[str, list[tuple[str, str]]] = {}
    for line in (root / "multi_domain_sentiment.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        by_domain.setdefault(r["domain"], []).append(
            (" ".join(f"{r.get('title', '')}. {r['text']}".split()), str(r["label"])))
    rng = np.random.default_rng(seed)
    return {d: [rows[i] for i in rng.permutation(len(rows))] for d, rows in by_domain.items()}


def write_csv(rows: list[tuple[str, ...]], header: list[str], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return target


def write_data(folder: Path, n: int, m: int, seed: int, out: Path,
               release_domains: tuple[str, ...] = RELEASE_DOMAINS,
               new_domains: tuple[str, ...] = NEW_DOMAINS) -> dict[str, Path]:
    """The release's training file, the monitoring file and the control file (new reviews of
    partner 0's own domain)."""
    reviews = shuffled_domains(folder, seed)
    release = [(t, lab, d) for d in release_domains for t, lab in reviews[d][:n]]
    new = [(t, lab, d, f"{slot}-{d}") for slot, d in enumerate(new_domains)
           for t, lab in reviews[d][n:n + m]]
    control = [(t, lab) for t, lab in reviews[release_domains[0]][n:n + m]]
    return {"release": write_csv(release, ["text", "label", "domain"], out / "release.csv"),
            "new": write_csv(new, ["text", "label", "domain", "slot"], out / "new.csv"),
            "control": write_csv(control, ["text", "label"], out / "new_own_domain.csv")}


def train_release(config: RunConfig) -> dict[str, Any]:
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    shutil.rmtree(config.out_dir, ignore_errors=True)
    started = time.time()
    out = run_federation(LocalGrid(config, 2), config)
    record = json.loads((out / "model" / "release.json").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"seconds": round(time.time() - started, 1), "model": str(out / "model"),
            "release_id": record["release_id"], "evaluation": record["evaluation"],
            "held_out": {n: p["num_examples"] for n, p in last["eval_per_partner"].items()},
            "epsilon": {n: p["epsilon"] for n, p in record["partners"].items()}}


def monitor(config: RunConfig, model: str) -> dict[str, Any]:
    from common.model.release import monitoring_config, read_release
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    shutil.rmtree(config.out_dir, ignore_errors=True)
    config = monitoring_config(config, read_release(model))
    started = time.time()
    out = run_federation(LocalGrid(config, 2, run_id=2), config)  # a run id of its own
    summary = json.loads((out / "monitoring.json").read_text())
    return {"seconds": round(time.time() - started, 1), "flagged": summary["flagged"],
            "partners": summary["partners"], "refused": summary["refused"],
            "report": str(out / "monitoring.md")}


def control(model: str, data: Path, out: Path) -> dict[str, Any]:
    from client.monitor import MonitorRequest, evaluate_release

    started = time.time()
    _, report = evaluate_release(MonitorRequest(Path(model), data, out=out))
    return {"seconds": round(time.time() - started, 1), "examples": report["examples"],
            "accuracy": report["value"]}


def drop_se(row: dict[str, Any], held_out: int | None) -> float | None:
    """Standard error of at release − now: two independent binomial proportions."""
    if row["at_release"] is None or row["now"] is None or not held_out:
        return None
    a, b = row["at_release"], row["now"]
    return float(np.sqrt(a * (1 - a) / held_out + b * (1 - b) / row["examples"]))


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--per-partner", type=int, default=1500, help="release reviews each")
    parser.add_argument("--new-per-partner", type=int, default=300, help="new reviews each")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drift-threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("results/drift"))
    parser.add_argument("--release-domains", default=",".join(RELEASE_DOMAINS),
                        help="partner 0's and partner 1's domains, in sorted order")
    parser.add_argument("--new-domains", default=",".join(NEW_DOMAINS),
                        help="partner 0's and partner 1's new data")
    args = parser.parse_args(argv)
    release_domains = tuple(args.release_domains.split(","))
    new_domains = tuple(args.new_domains.split(","))
    if (len(release_domains) != 2 or len(new_domains) != 2 or list(release_domains) !=
            sorted(release_domains) or not set(release_domains + new_domains) <= set(DOMAINS)):
        parser.error(f"--release-domains: two of {DOMAINS} in sorted order (column:domain "
                     "numbers partners so); --new-domains: two of them")
    configure_logging()
    folder = args.datasets_dir / "multi_domain_sentiment"
    if not folder.is_dir():
        print(f"skipped: {folder} not found")
        return 0
    files = write_data(folder, args.per_partner, args.new_per_partner, args.seed, args.out,
                       release_domains, new_domains)
    base = dict(labels="0,1", max_length=128, seed=args.seed, finetune="pooled-head",
                min_partners=2, round_timeout=600.0)
    release = RunConfig(**base, data=str(files["release"]), partition="column:domain",
                        num_rounds=args.rounds, epsilon=args.epsilon,
                        out_dir=str(args.out / "runs" / "release"))
    watch = RunConfig(**base, data=str(files["new"]), partition="column:slot",
                      drift_threshold=args.drift_threshold,
                      out_dir=str(args.out / "runs" / "monitoring"))
    head = {**harness.header("benchmarks.drift"),
            "data": {"release": dict(zip(("partner-0", "partner-1"), release_domains)),
                     "new": dict(zip(("partner-0", "partner-1"), new_domains)),
                     "per_partner": args.per_partner, "new_per_partner": args.new_per_partner},
            "config": {**base, "epsilon": args.epsilon, "num_rounds": args.rounds,
                       "drift_threshold": args.drift_threshold}}
    done: dict[str, Any] = {}

    def measure(arm: Arm) -> dict[str, Any]:
        if arm.name == "release":
            return train_release(release)
        model = done["release"]["model"]
        if arm.name == "monitoring":
            return monitor(watch, model)
        return control(model, files["control"], args.out / "runs" / "control")

    def save(results: dict[str, Any]) -> None:
        done.update(results)
        harness.write_json(args.out / "drift.json", {**head, "arms": results})

    harness.run_arms([Arm("release"), Arm("monitoring"), Arm("control_own_domain")], measure,
                     save=save)
    trained, watched = done["release"], done["monitoring"]["partners"]
    rows = [{"partner": name, "release data": release_domains[i], "new data": new_domains[i],
             "held-out": trained["held_out"].get(name), "epsilon": trained["epsilon"].get(name),
             **watched[name], "drop_se": drop_se(watched[name], trained["held_out"].get(name))}
            for i, name in enumerate(("partner-0", "partner-1"))]
    print(harness.table(rows, [
        Column("partner", "partner"), Column("release data", "release data"),
        Column("new data", "new data"), Column("ε", "epsilon", ".2f"),
        Column("held-out n", "held-out"), Column("acc at release", "at_release", ".4f"),
        Column("new n", "examples"), Column("acc now", "now", ".4f"),
        Column("drop", "drop", "+.4f"), Column("± se", "drop_se", ".4f"),
        Column("flagged", lambda r: "yes" if r["drift"] else "no")], markdown=True))
    harness.write_json(args.out / "drift.json", {**head, "arms": done, "table": rows})
    print(f"control: the release on {done['control_own_domain']['examples']} new "
          f"{release_domains[0]} reviews: "
          f"accuracy {done['control_own_domain']['accuracy']:.4f}")
    print(f"seconds: release {done['release']['seconds']}, monitoring "
          f"{done['monitoring']['seconds']}, control {done['control_own_domain']['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
