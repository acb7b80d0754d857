"""Benchmark: federated NER with DP-SGD vs without, on CoNLL-2003 and NCBI-disease, 3 partners.

    python -m benchmarks.ner [--dataset conll2003] [--finetune head] [--sentences 1200]

Reads ../shared/datasets/{conll2003,ncbi_disease} (or --datasets-dir); a data set that is absent
is skipped. Per data set: a seeded sample of the training file is split iid across 3 partners
(each holds out 20 %), each arm runs through `consortium simulate` (real Flower simulation), then
the final shared model is scored with seqeval on a seeded sample of the official test file.
Merges its numbers (machine, versions, command, config, per-round and final scores) per data set
into results/ner.json (--json), so data sets can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import PACKAGES, Arm, Column
from benchmarks.utility import write_conll
from client.data import PartnerSettings, partner_dataset
from common.config import RunConfig
from common.infra.logs import configure_logging
from common.evaluation.metrics import entity_scores
from common.model.factory import build_model, load_tokenizer, load_trainable_state
from common.sources import run_labels
from common.tasks.tokens import (TokenDataset, encode_tokens, entity_types, load_token_dataset,
                           predicted_tags, read_sentences, tag_names)
from common.evaluation.scoring import evaluate_tokens
from server.checkpoint import latest_checkpoint
from simulations.simulate import Federation, run_simulation

# per data set: training file, test file, max-length (words of 95 % of sentences fit)
DATASETS = {"conll2003": ("train.txt", "test.txt", 64),
            "ncbi_disease": ("train.tsv", "test.tsv", 128)}
PARTNERS = 3
DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared/datasets"
# per mode: learning rate and local epochs (head: the classifier only; lora: adapters + head)
MODE_SETTINGS = {"head": dict(learning_rate=5e-2, local_epochs=2),
                 "lora": dict(learning_rate=1e-2, local_epochs=1)}


def sample_conll(source: Path, target: Path, n: int, seed: int) -> int:
    """A seeded sample of ``n`` sentences of a CoNLL file, written as ``word tag`` lines."""
    sentences = read_sentences(source)
    pick = np.sort(np.random.default_rng(seed).permutation(len(sentences))[:n])
    write_conll([sentences[int(i)] for i in pick], target)
    return len(pick)


def score(config: RunConfig, run_dir: Path, data: TokenDataset) -> dict[str, float]:
    """Entity-level scores of the run's final shared model on ``data``."""
    tags = run_labels(config)
    model = build_model(config, tags)
    load_trainable_state(model, latest_checkpoint(run_dir / "checkpoints").arrays)
    stats = evaluate_tokens(model, encode_tokens(load_tokenizer(config), data, config.max_length))
    s = entity_scores(data.tag_strings(), predicted_tags(data, stats.predictions),
                      entity_types(tags))
    return {"entity_f1": s.f1, "entity_precision": s.precision, "entity_recall": s.recall,
            "macro_f1": s.macro_f1, "token_accuracy": s.token_accuracy,
            "per_type": {t: dict(zip(("tp", "fp", "fn"), c)) for t, c in s.counts.items()}}


def partners_held_out(config: RunConfig) -> TokenDataset:
    """The partners' held-out splits, pooled (what the federated evaluation scores)."""
    tags = run_labels(config)
    parts = [partner_dataset(config, PartnerSettings(f"partner-{i}", i, PARTNERS), tags)[1]
             for i in range(PARTNERS)]
    return TokenDataset(tuple(s for p in parts for s in p.tokens),
                        tuple(t for p in parts for t in p.tags), tags)


def run_arm(config: RunConfig, test: TokenDataset) -> dict:
    out = Path(config.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    run_simulation(config, Federation(PARTNERS))
    seconds = round(time.time() - started, 1)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "model" / "run_config.json").read_text())
    config = RunConfig.from_mapping(final)  # as the run saw it: labels declared, paths resolved
    return {"seconds": seconds,
            "max_epsilon": lines[-1].get("max_epsilon"),
            "entity_f1_per_round": [(ln.get("eval_mean") or {}).get("entity_f1") for ln in lines],
            "token_accuracy_per_round": [ln.get("eval_accuracy") for ln in lines],
            "partners_held_out": score(config, out, partners_held_out(config)),
            "official_test_sample": score(config, out, test)}


Prepared = tuple[dict[str, Any], TokenDataset, int, int]  # run config, test set, sizes


def prepare(name: str, args: argparse.Namespace) -> Prepared | None:
    """Seeded train and test samples of one data set and the run config they share; None when
    the data set is absent."""
    folder = args.datasets_dir / name
    train_file, test_file = folder / DATASETS[name][0], folder / DATASETS[name][1]
    if not (train_file.is_file() and test_file.is_file()):
        print(f"skipped {name}: {folder} not found")
        return None
    sample = args.out / f"{name}_train_sample.conll"
    n = sample_conll(train_file, sample, args.sentences, seed=0)
    types = tuple(sorted({t[2:] for _, tags in read_sentences(sample) for t in tags if t != "O"}))
    test_sample = args.out / f"{name}_test_sample.conll"
    n_test = sample_conll(test_file, test_sample, args.test_sentences, seed=1)
    base = dict(task="token-classification", data=str(sample.resolve()), labels=",".join(types),
                num_rounds=args.rounds, batch_size=args.batch_size,
                max_length=args.max_length or DATASETS[name][2],
                finetune=args.finetune, **MODE_SETTINGS[args.finetune])
    return base, load_token_dataset(test_sample, tag_names(types)), n, n_test


def run_dataset(key: str, prepared: Prepared, arms: list[Arm], args: argparse.Namespace,
                summary: dict[str, Any], command: str) -> dict:
    """Both arms on one data set; ``summary`` (merged into --json) is rewritten after each."""
    base, test, n, n_test = prepared
    entry = summary["datasets"][key] = {
        "command": command, "arms": {},
        "config": {**base, "train_sentences": n, "test_sentences": n_test, "partners": PARTNERS}}

    def measure(arm: Arm) -> dict:
        run_dir = (args.out / f"{key}_{arm.name}").resolve()
        return run_arm(RunConfig(**base, **arm.settings, out_dir=str(run_dir)), test)

    def save(done: dict[str, Any]) -> None:
        entry["arms"] = done
        harness.write_json(args.json, summary)

    harness.run_arms(arms, measure, save=save)
    return entry


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--dataset", action="append", choices=sorted(DATASETS))
    parser.add_argument("--sentences", type=int, default=900, help="training sample, all partners")
    parser.add_argument("--test-sentences", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--finetune", choices=sorted(MODE_SETTINGS), default="lora")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, help="default: per data set (DATASETS)")
    parser.add_argument("--out", type=Path, default=Path("results/ner"), help="runs, samples")
    parser.add_argument("--json", type=Path, default=Path("results/ner.json"))
    args = parser.parse_args()
    configure_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    head = harness.header("benchmarks.ner", packages=(*PACKAGES, "seqeval"))
    summary = {"machine": head["machine"], "versions": head["versions"],  # data sets merged
               "datasets": harness.read_json(args.json, {}).get("datasets", {})}
    arms = [Arm(f"dp_eps{args.epsilon:g}", {"epsilon": args.epsilon}),
            Arm("no_dp", {"dp": False})]
    results = {}
    for name in args.dataset or sorted(DATASETS):
        prepared = prepare(name, args)
        if prepared is not None:
            key = f"{name}-{args.finetune}"
            results[key] = run_dataset(key, prepared, arms, args, summary, head["command"])
    harness.write_json(args.json, summary)

    print("\n" + harness.table(
        [{"data set": name, "arm": arm, **r} for name, body in results.items()
         for arm, r in body["arms"].items()],
        [Column("data set", "data set"), Column("arm", "arm"),
         Column("F1 test", lambda r: r["official_test_sample"]["entity_f1"], ".4f"),
         Column("F1 partners", lambda r: r["partners_held_out"]["entity_f1"], ".4f"),
         Column("max ε", "max_epsilon", ".2f", missing="∞"), Column("s", "seconds", ".0f")]))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
