"""Benchmark P3 (utility): federated DP vs centralized non-private vs federated non-private vs
centralized DP, at ε ∈ {1, 3, 8, ∞}, on SST-2, on Multi-Domain Sentiment split by domain, on
AG News (4 topics) and on CoNLL-2003 NER (entity F1).

    python -m benchmarks.utility [--dataset sst2] [--finetune head] [--train-examples 2000]

Reads ../shared/datasets/{sst2,multi_domain_sentiment,ag_news,conll2003} (or --datasets-dir); a
data set that is absent is skipped. Per data set a seeded subset of the training data is written
to one CSV (CoNLL: one ``word tag`` file); *federated* arms split it over K partners (SST-2:
Dirichlet α = 1 on labels, K = 10; Multi-Domain Sentiment: one partner per product domain,
K = 4; AG News: Dirichlet α = 0.5, K = 5; CoNLL-2003: iid, K = 3), *centralized* arms give all
of it to a single partner that trains the same local epochs per round for the same rounds, with
the same DP-SGD (ε is then per record of the pooled set).
Every arm runs the coordinator's real round loop and the partners' real ClientApp handlers in
this process (``simulations.local_grid``), and the coordinator scores the shared model each round
on the same evaluation set: SST-2's labelled 872-example GLUE dev set (``test.tsv`` here), for
Multi-Domain Sentiment a seeded per-domain sample disjoint from the training subset, for AG News
and CoNLL-2003 a seeded sample of the official test set (the score: the task's main metric,
accuracy or entity F1). Merges per data set into results/utility/utility.json, rewritten after
each arm (a run cut off keeps what it made).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.config import RunConfig
from common.training.schedule import LR_SCHEDULES
from common.infra.logs import configure_logging
from simulations.local_grid import LocalGrid

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared/datasets"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
# per fine-tuning mode: learning rate and local epochs (benchmarks.sentiment's sweep, one partner)
MODE_SETTINGS = {"pooled-head": dict(),  # batch and learning rate: the DP planner's (auto)
                 "head": dict(learning_rate=1e-1, local_epochs=3),
                 "lora": dict(learning_rate=1e-2, local_epochs=1),
                 "pooled-lora": dict(),  # the planner's, as pooled-head
                 "full": dict(learning_rate=1e-3, local_epochs=1),
                 "bias": dict(learning_rate=1e-2, local_epochs=1)}
# per data set: federated partition, partners, max-length, default subset sizes (train, eval)
DATASETS = {"sst2": dict(partition="dirichlet:1", partners=10, max_length=64, sizes=(2000, 872),
                         folder="sst2", labels="0,1"),
            "mds": dict(partition="column:domain", partners=4, max_length=128, sizes=(1200, 400),
                        folder="multi_domain_sentiment", labels="0,1"),
            "agnews": dict(partition="dirichlet:0.5", partners=5, max_length=64,
                           sizes=(10000, 2000), folder="ag_news",
                           labels="World,Sports,Business,Sci/Tech"),
            "conll2003": dict(partition="iid", partners=3, max_length=64, sizes=(14041, 3453),
                              folder="conll2003", labels="LOC,MISC,ORG,PER",
                              task="token-classification", format="conll")}


def conll_sentences(root: Path, n_train: int, n_eval: int, seed: int) -> tuple[list, list]:
    """Seeded samples of CoNLL-2003's training file and of its official test file, as
    (words, IOB2 tags) per sentence."""
    from common.tasks.tokens import read_sentences

    rng = np.random.default_rng(seed)
    train, test = read_sentences(root / "train.txt"), read_sentences(root / "test.txt")
    return ([train[i] for i in sorted(rng.permutation(len(train))[:n_train])],
            [test[i] for i in sorted(rng.permutation(len(test))[:n_eval])])


def write_conll(sentences: list[tuple[list[str], list[str]]], target: Path) -> None:
    """``word tag`` lines, a blank line after each sentence."""
    lines = [f"{w} {t}" for words, tags in sentences for w, t in
             [*zip(words, tags), ("", "")]]
    target.write_text("\n".join(line.strip() for line in lines) + "\n", encoding="utf-8")


def write_csv(rows: list[tuple[str, str, str]], target: Path) -> None:
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "domain"])
        writer.writerows(rows)


WRITERS = {"csv": write_csv, "conll": write_conll}  # a data set's file format -> its writer


def sst2_rows(root: Path, n_train: int, seed: int) -> tuple[list, list]:
    """A seeded sample of SST-2 train; all 872 labelled GLUE dev sentences for evaluation."""
    def read(name: str) -> list[tuple[str, str, str]]:
        lines = (root / name).read_text(encoding="utf-8").splitlines()[1:]
        return [(t.strip(), lab.strip(), "sst2") for t, lab in
                (line.rsplit("\t", 1) for line in lines if line.strip())]
    train = read("train.tsv")
    pick = np.random.default_rng(seed).permutation(len(train))[:n_train]
    return [train[i] for i in sorted(pick)], read("test.tsv")


def agnews_rows(root: Path, n_train: int, n_eval: int, seed: int) -> tuple[list, list]:
    """A seeded sample of the 10,000-row AG News training subset, and a seeded sample of n_eval
    rows of the official 7,600-row test set to score on."""
    def read(name: str) -> list[tuple[str, str, str]]:
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        return [(" ".join(t.split()), lab.strip(), "agnews") for t, lab in
                (line.rsplit("\t", 1) for line in lines if line.strip())]
    rng = np.random.default_rng(seed)
    train, test = read("train_subset10k.tsv"), read("test.tsv")
    pick = rng.permutation(len(train))[:n_train]
    return [train[i] for i in sorted(pick)], [test[i] for i in sorted(rng.permutation(
        len(test))[:n_eval])]


def mds_rows(root: Path, n_train: int, n_eval: int, seed: int) -> tuple[list, list]:
    """Per domain, a seeded sample of n_train/4 reviews to train on and n_eval/4 others to score."""
    by_domain: dict[str, list[tuple[str, str, str]]] = {d: [] for d in DOMAINS}
    for line in (root / "multi_domain_sentiment.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        text = " ".join(f"{r.get('title', '')}. {r['text']}".split())
        by_domain[r["domain"]].append((text, str(r["label"]), r["domain"]))
    rng, train, held = np.random.default_rng(seed), [], []
    for domain in DOMAINS:
        rows = by_domain[domain]
        order = rng.permutation(len(rows))
        k, m = n_train // len(DOMAINS), n_eval // len(DOMAINS)
        train += [rows[i] for i in order[:k]]
        held += [rows[i] for i in order[k:k + m]]
    return train, held


def run_arm(config: RunConfig, partners: int) -> dict[str, Any]:
    """One arm through the real round loop; DP plans too weak to learn are run anyway
    (dp-plan-check = false here) so that the table shows what they give."""
    from common.tasks import get_task
    from server.coordinator import run_federation  # after logging is configured
    from server.evaluation import line_key

    out = Path(config.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    run_federation(LocalGrid(config, partners), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / "privacy_report.json").read_text())
    own = [ln["eval_coordinator"] for ln in lines]
    metric = line_key(get_task(config.task).main_metric)  # accuracy, entity_f1
    return {"seconds": round(time.time() - started, 1), "metric": metric,
            "score_per_round": [o[metric] for o in own], "final_score": own[-1][metric],
            "final_accuracy": own[-1]["accuracy"], "final_macro_f1": own[-1]["macro_f1"],
            "partners_mean_score": (lines[-1].get("eval_mean") or {}).get(metric),
            "max_epsilon": lines[-1]["max_epsilon"],
            "noise_multipliers": sorted({p["noise_multiplier"] for p in
                                         report.get("partners", {}).values()
                                         if p.get("noise_multiplier") is not None})}


def final_score(arm: dict[str, Any]) -> float:
    """The arm's main metric on the evaluation set (results before entity F1 kept accuracy)."""
    return arm.get("final_score", arm["final_accuracy"])


def gaps(arms: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Points below the best centralized non-private arm (any fine-tuning mode), per arm."""
    refs = [final_score(a) for n, a in arms.items() if n.endswith("_central_epsinf")]
    if not refs:
        return {}
    best = max(refs)
    return {name: round(100 * (best - final_score(arm)), 2) for name, arm in arms.items()}


def arms(args: argparse.Namespace, name: str, base: dict[str, Any]) -> list[Arm]:
    """Per mode, setting (central: one partner; federated: the data set's split) and ε."""
    spec, found = DATASETS[name], []
    for mode in args.finetune or ["pooled-head", "lora"]:
        for setting in args.settings:
            for eps in args.epsilons:
                partners = spec["partners"] if setting == "federated" else 1
                privacy = dict(dp=False) if math.isinf(eps) else dict(epsilon=eps)
                tuned = {**MODE_SETTINGS[mode], **({} if args.learning_rate is None else
                                                   {"learning_rate": args.learning_rate}),
                         **({} if args.local_epochs is None else
                            {"local_epochs": args.local_epochs}),
                         **({} if args.batch_size is None else {"batch_size": args.batch_size})}
                arm = f"{mode}_{setting}_eps{eps:g}"
                config = RunConfig(**base, **tuned, **privacy, finetune=mode, dp_plan_check=False,
                                   partition=spec["partition"] if partners > 1 else "iid",
                                   min_partners=max(1, partners // 2),
                                   out_dir=str(args.out / "runs" / name / arm))
                found.append(Arm(arm, {"setting": setting, "finetune": mode,
                                       "epsilon": None if math.isinf(eps) else eps,
                                       "partners": partners, "config": config}))
    return found


def write_data(args: argparse.Namespace, name: str) -> tuple[dict[str, Any], int, int] | None:
    """The data set's training and evaluation CSVs and the run config they share; None when the
    data set is absent."""
    spec = DATASETS[name]
    folder = args.datasets_dir / spec["folder"]
    if not folder.is_dir():
        print(f"skipped {name}: {folder} not found")
        return None
    n_train = args.train_examples or spec["sizes"][0]
    n_eval = args.eval_examples or spec["sizes"][1]
    train, held = {"sst2": lambda: sst2_rows(folder, n_train, args.seed),
                   "mds": lambda: mds_rows(folder, n_train, n_eval, args.seed),
                   "agnews": lambda: agnews_rows(folder, n_train, n_eval, args.seed),
                   "conll2003": lambda: conll_sentences(folder, n_train, n_eval, args.seed),
                   }[name]()
    suffix = spec.get("format", "csv")
    files = [args.out / f"{name}_{part}.{suffix}" for part in ("train", "eval")]
    for rows, target in zip((train, held), files):
        WRITERS[suffix](rows, target)
    base = dict(task=spec.get("task", "text-classification"), data=str(files[0]),
                labels=spec["labels"],
                server_eval_data=str(files[1]),
                max_length=spec["max_length"], num_rounds=args.rounds, seed=args.seed,
                base_model=args.base_model, lora_freeze_a=args.lora_freeze_a,
                lora_layers=args.lora_layers, head_lr_scale=args.head_lr_scale,
                lr_schedule=args.lr_schedule, lr_warmup=args.lr_warmup,
                ema_decay=args.ema_decay, train_dropout=args.train_dropout,
                round_timeout=60.0,
                **({} if args.update_clip_norm is None else
                   {"update_clip_norm": args.update_clip_norm}))
    return base, len(train), len(held)


def _dropout(text: str) -> float | str:
    return text if text == "auto" else float(text)


def parse_args() -> argparse.Namespace:
    parser = harness.parser(__doc__)
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--dataset", action="append", choices=list(DATASETS))
    parser.add_argument("--finetune", action="append", choices=list(MODE_SETTINGS),
                        help="fine-tuning modes (repeatable; default pooled-head and lora)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 3, 8, math.inf])
    parser.add_argument("--settings", nargs="+", choices=["central", "federated"],
                        default=["central", "federated"])
    parser.add_argument("--train-examples", type=int, help="training subset (default per set)")
    parser.add_argument("--eval-examples", type=int, help="evaluation sample (default per set; "
                        "SST-2 always scores its 872 dev sentences)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, help="override the mode's learning rate")
    parser.add_argument("--local-epochs", type=int, help="override the mode's local epochs")
    parser.add_argument("--batch-size", type=int, help="an expected batch instead of the "
                        "planner's (auto)")
    parser.add_argument("--update-clip-norm", type=float, help="run config update-clip-norm "
                        "(default 10; 0 = none, for the best non-private reference)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--base-model", default="", help="a model directory (default: MiniLM)")
    parser.add_argument("--lora-freeze-a", action="store_true", help="FFA-LoRA (A frozen)")
    parser.add_argument("--head-lr-scale", type=float, default=1.0,
                        help="with LoRA: the head's lr = the lr × this")
    parser.add_argument("--lora-layers", type=int, default=0,
                        help="LoRA in the top N encoder layers only (0 = all)")
    parser.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                        help="the learning rate over the run (run config lr-schedule)")
    parser.add_argument("--lr-warmup", type=float, default=0.0,
                        help="share of the run's steps warming up (run config lr-warmup)")
    parser.add_argument("--train-dropout", type=_dropout, default="auto",
                        help="dropout while training (run config train-dropout; auto = the "
                        "base model's, 0 = none)")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="EMA of each round's iterates (run config ema-decay; 0 = off)")
    parser.add_argument("--out", type=Path, default=Path("results/utility"))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    configure_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "utility.json"
    head = harness.header("benchmarks.utility", "load_average_at_start")
    summary = harness.read_json(target, {"datasets": {}})  # data sets merged, arms too
    summary.update({"machine": head["machine"], "versions": head["versions"]})
    for name in args.dataset or list(DATASETS):
        written = write_data(args, name)
        if written is None:
            continue
        base, n_train, n_eval = written
        spec = DATASETS[name]
        entry = summary["datasets"].setdefault(name, {"arms": {}})
        entry.update({"command": head["command"], "train_examples": n_train,
                      "eval_examples": n_eval,
                      "config": {**base, "partition_federated": spec["partition"],
                                 "partners_federated": spec["partners"]}})

        def measure(arm: Arm) -> dict[str, Any]:
            s = arm.settings
            return {"setting": s["setting"], "finetune": s["finetune"], "epsilon": s["epsilon"],
                    "partners": s["partners"], **run_arm(s["config"], s["partners"])}

        def save(done: dict[str, Any], entry: dict[str, Any] = entry, name: str = name) -> None:
            entry["arms"].update(done)
            entry["gap_to_central_no_dp_points"] = gaps(entry["arms"])
            summary["machine"]["load_average_at_end"] = os.getloadavg()
            harness.write_json(target, summary)
            arm = next(reversed(done))
            print(f"{name} {arm}: {done[arm]['metric']} {done[arm]['final_score']:.4f}", flush=True)

        harness.run_arms(arms(args, name, base), measure, save=save)
    print_table(summary)
    print(f"written: {target}")
    return 0


def print_table(summary: dict[str, Any]) -> None:
    rows = [{"data": name, "arm": arm, **r,
             "gap": entry.get("gap_to_central_no_dp_points", {}).get(arm)}
            for name, entry in summary["datasets"].items() for arm, r in entry["arms"].items()]
    print("\n" + harness.table(rows, [
        Column("data", "data"), Column("arm", "arm"), Column("score", final_score, ".4f"),
        Column("max ε", "max_epsilon", ".2f", missing="∞"), Column("gap pts", "gap", "+.1f"),
        Column("s", "seconds", ".0f")]))


if __name__ == "__main__":
    sys.exit(main())
