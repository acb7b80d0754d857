"""A DP step in length-sorted pieces (``batch-tokens``) against the whole Poisson batch in one
pass, and evaluation in length-sorted batches against data order: seconds, side by side.

    HF_HUB_OFFLINE=1 python -m benchmarks.batching --dataset sst2 --out results/batching
    HF_HUB_OFFLINE=1 python -m benchmarks.batching --dataset conll2003 --out results/batching

One partner's DP round as ``client.partner`` runs it (``common.training.loop.train_dp``: Poisson
sampling, per-sample hooks, one noise draw and one step per batch), FFA-LoRA r = 8 on the bundled
MiniLM (pooled-lora for SST-2's labels, lora for CoNLL-2003's tags), the planner's batch of 256,
one epoch over the 80 % of ``--examples`` texts a partner trains on (the rest is its held-out
split); every arm starts from the same weights and seed.
Texts: seeded SST-2 training phrases or CoNLL-2003 training sentences from ../shared/datasets
(skipped cleanly when absent), or the embedded demo set (``--dataset demo``). Only the batch
tokens differ between the train arms, so their loss differs only by dropout's draws.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import harness
from benchmarks.harness import Arm, Column
from benchmarks.utility import DATASETS, conll_sentences, sst2_rows, write_conll, write_csv

logger = logging.getLogger(__name__)
BUDGETS = (0, 1024, 2048, 4096, 8192)
BATCH, LEARNING_RATE, SIGMA = 256, 1e-2, 0.8


def load(dataset: str, root: Path, examples: int, folder: Path) -> tuple[Any, Any] | None:
    """(run config, encoded training texts) of one partner holding ``examples`` texts."""
    from client.data import PartnerSettings, partner_dataset
    from common.config import RunConfig
    from common.model.factory import load_tokenizer
    from common.tasks import get_task

    spec = DATASETS.get(dataset, dict(max_length=48, labels="", task="text-classification"))
    base: dict[str, Any] = dict(task=spec.get("task", "text-classification"),
                                max_length=spec["max_length"], lora_freeze_a=True,
                                finetune="lora" if dataset == "conll2003" else "pooled-lora",
                                examples_per_partner=examples)
    if dataset != "demo":
        source = root / spec["folder"]
        if not source.is_dir():
            print(f"skipped {dataset}: {source} not found")
            return None
        target = folder / f"{dataset}.{spec.get('format', 'csv')}"
        if dataset == "conll2003":
            write_conll(conll_sentences(source, examples, 0, seed=0)[0], target)
        else:
            write_csv(sst2_rows(source, examples, seed=0)[0], target)
        base.update(data=str(target), labels=spec["labels"])
    config = RunConfig.from_mapping({k.replace("_", "-"): v for k, v in base.items()})
    task = get_task(config.task)
    train, _ = partner_dataset(config, PartnerSettings(name="p0"), task.run_labels(config))
    return config, task.encode(load_tokenizer(config), train, config.max_length)


def partner_arguments(p: argparse.ArgumentParser, out: str) -> argparse.ArgumentParser:
    """The options of a one-partner benchmark: its texts, where the data sets are, OUT."""
    p.add_argument("--examples", type=int, default=2048, help="training texts of the partner")
    p.add_argument("--datasets-dir", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared/datasets")
    p.add_argument("--out", type=Path, default=Path(out))
    return p


def measure(arm: Arm, config: Any, data: TensorDataset) -> dict[str, Any]:
    from common.model.factory import build_model
    from common.evaluation.scoring import evaluate, evaluate_tokens
    from common.training.loop import DPSettings, TrainSettings, _forward, train_dp

    from common.tasks import get_task

    torch.manual_seed(0)
    model = build_model(config, get_task(config.task).run_labels(config)).train()
    if arm.settings["kind"] == "train":
        settings = TrainSettings(LEARNING_RATE, BATCH, 1, config.max_length, seed=7,
                                 token_budget=arm.settings["budget"])
        started = time.perf_counter()
        stats, _ = train_dp(model, data, settings, DPSettings(SIGMA, 1.0), [])
        return {"seconds": time.perf_counter() - started, "steps": stats.steps,
                "loss": stats.loss, "budget": arm.settings["budget"]}
    model.eval()
    started = time.perf_counter()
    if arm.settings["order"] == "sorted":
        (evaluate_tokens if data.tensors[2].dim() == 2 else evaluate)(model, data)
    else:  # the data's own order, 64 texts per batch (how evaluation ran before)
        with torch.no_grad():
            for ids, mask, _ in DataLoader(data, batch_size=64):
                _forward(model, ids, mask)
    return {"seconds": time.perf_counter() - started}


def main() -> int:
    p = harness.parser(__doc__)
    p.add_argument("--dataset", default="sst2", choices=("sst2", "conll2003", "demo"))
    args = partner_arguments(p, "results/batching").parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as folder:
        loaded = load(args.dataset, args.datasets_dir, args.examples, Path(folder))
        if loaded is None:
            return 0
        config, data = loaded
        lengths = data.tensors[1].sum(dim=1).float()
        arms = [Arm(f"train, batch-tokens {b}" if b else "train, whole batch",
                    {"kind": "train", "budget": b}) for b in BUDGETS]
        arms += [Arm(f"evaluate, {o}", {"kind": "eval", "order": o}) for o in ("data order",
                                                                              "sorted")]
        head = harness.header("benchmarks.batching", dataset=args.dataset,
                              texts=len(lengths), mean_tokens=float(lengths.mean()),
                              max_tokens=int(lengths.max()))
        path = args.out / f"batching_{args.dataset}.json"
        results = harness.run_arms(arms, lambda arm: measure(arm, config, data),
                                   save=lambda done: harness.write_json(path, {**head,
                                                                               "arms": done}))
    whole = results["train, whole batch"]["seconds"]
    unsorted = results["evaluate, data order"]["seconds"]
    rows = [{"arm": name, **r, "speed-up": (whole if name.startswith("train") else unsorted)
             / r["seconds"]} for name, r in results.items()]
    print(f"{args.dataset}: {len(lengths)} texts, {float(lengths.mean()):.1f} tokens on average, "
          f"longest {int(lengths.max())}")
    print(harness.table(rows, [Column("arm", "arm"), Column("seconds", "seconds", ".1f"),
                               Column("speed-up", "speed-up", ".2f"),
                               Column("loss", "loss", ".4f", missing="")], markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
