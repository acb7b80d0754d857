"""Benchmark: federated DP vs non-private on Sentiment Labelled Sentences, one domain per partner.

    python -m benchmarks.sentiment [--rounds 3] [--epsilon 8] [--out results/sentiment]

Reads ../shared/datasets/sentiment_labelled_sentences (or --dataset-dir); skips cleanly when it is
absent. Runs both arms side by side through `consortium simulate` and writes
OUT/sentiment.json with machine, versions, config and per-round numbers.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.config import RunConfig
from common.infra.logs import configure_logging
from simulations.simulate import Federation, run_simulation

DOMAINS = ("amazon_cells", "imdb", "yelp")
# per mode: learning rate and local epochs, picked by a short sweep on one partner (amazon)
MODE_SETTINGS = {"lora": dict(learning_rate=1e-2, local_epochs=1),
                 "full": dict(learning_rate=1e-3, local_epochs=1),
                 "head": dict(learning_rate=1e-1, local_epochs=3)}
DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "shared/datasets/" \
    "sentiment_labelled_sentences"


def to_csv(dataset_dir: Path, target: Path) -> int:
    """One CSV with text, label, domain; the raw files are TSV without quoting."""
    rows = 0
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "domain"])
        for domain in DOMAINS:
            for line in (dataset_dir / f"{domain}_labelled.txt").read_text().split("\n"):
                if line.strip():
                    text, label = line.rsplit("\t", 1)
                    writer.writerow([text.strip(), label.strip(), domain])
                    rows += 1
    return rows


def arms(modes: list[str], epsilon: float) -> list[Arm]:
    """Per fine-tuning mode, DP at ε beside no DP, with the mode's tuned settings."""
    return [arm for mode in modes for arm in (
        Arm(f"{mode}_dp_eps{epsilon:g}", dict(finetune=mode, epsilon=epsilon,
                                              **MODE_SETTINGS[mode])),
        Arm(f"{mode}_no_dp", dict(finetune=mode, dp=False, **MODE_SETTINGS[mode])))]


def run_arm(arm: Arm, base: dict, out: Path) -> dict:
    """One federation, a partner per domain; the final evaluation and ε."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    run_simulation(RunConfig(**base, **arm.settings, out_dir=str(out)), Federation(len(DOMAINS)))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": round(time.time() - started, 1), "rounds": lines,
            "final_accuracy": lines[-1]["eval_accuracy"],
            "final_macro_f1": lines[-1]["eval_macro_f1"],
            "max_epsilon": lines[-1]["max_epsilon"]}


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--dataset-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--finetune", action="append", choices=["lora", "full", "head"],
                        help="fine-tuning modes to compare (repeatable; default lora and head)")
    parser.add_argument("--out", type=Path, default=Path("results/sentiment"))
    args = parser.parse_args()
    configure_logging()
    if not args.dataset_dir.is_dir():
        print(f"skipped: {args.dataset_dir} not found")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "sentiment_by_domain.csv"
    n = to_csv(args.dataset_dir, data)
    base = dict(data=str(data), partition="column:domain", labels="0,1", num_rounds=args.rounds,
                max_length=64)
    modes = args.finetune or ["lora", "head"]
    summary = {"mode_settings": {m: MODE_SETTINGS[m] for m in modes},
               **harness.header("benchmarks.sentiment"),
               "config": {**base, "examples": n, "partners": list(DOMAINS)}, "arms": {}}

    def save(done: dict[str, dict]) -> None:
        summary["arms"] = done
        harness.write_json(args.out / "sentiment.json", summary)

    results = harness.run_arms(arms(modes, args.epsilon),
                               lambda arm: run_arm(arm, base, args.out / arm.name), save=save)
    print("\n" + harness.table([{"arm": name, **r} for name, r in results.items()], [
        Column("arm", "arm"), Column("accuracy", "final_accuracy", ".4f"),
        Column("macro-F1", "final_macro_f1", ".4f"),
        Column("max ε", "max_epsilon", ".2f", missing="∞"),
        Column("seconds", "seconds", ".0f")]))
    print(f"written: {args.out / 'sentiment.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
