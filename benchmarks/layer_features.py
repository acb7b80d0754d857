"""How far a DP linear head on *frozen* MiniLM features can go on SST-2, by which features it reads.

    HF_HUB_OFFLINE=1 python -m benchmarks.layer_features --out results/layer_features.json

Views of one frozen pass over each sentence (the bundled MiniLM): ``last``, the last layer's
mean (what finetune = "pooled-head" trains on); ``average``, the mean of the 7 layers' means
(embeddings + 6 layers; exportable as sentence-transformers' WeightedLayerPooling with equal
weights); ``concat``, layers 1-6's means side by side (2,304 numbers; no standard
sentence-transformers or transformers module computes it, so a model trained on it would not
load in one line); and other poolings of the last layer that sentence-transformers' Pooling
computes (it concatenates the modes it is given): ``max``, ``mean+max``, ``mean+cls``. Each
view trains a zero-initialised linear head centrally with the project's own DP-SGD
(benchmarks.dp_recipe.train_head: Opacus, Poisson sampling, RDP accountant, the planner's batch
and learning rate, 3 epochs) at ε = 8 and without DP, on the first n of the 20,000 seeded
training sentences, and is scored on the 872 GLUE dev sentences. Skips cleanly when the data
set is absent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks import harness
from benchmarks.dp_recipe import (C, DELTA, EPOCHS, _mean_acc, _run, encoded_sst2,
                                  sst2_missing, train_head)
from benchmarks.harness import Arm
from common.privacy import planner
from common.training.features import mean_pool

logger = logging.getLogger(__name__)
# a sentence's features: every layer's mean (embeddings first), then the last layer's max and
# its first ([CLS]) token, as sentence-transformers' Pooling computes them
VIEWS = {"last": lambda x: x[:, -3], "average": lambda x: x[:, :-2].mean(dim=1),
         "concat": lambda x: x[:, 1:-2].flatten(1), "max": lambda x: x[:, -2],
         "mean+max": lambda x: x[:, -3:-1].flatten(1),
         "mean+cls": lambda x: torch.cat([x[:, -3], x[:, -1]], dim=1)}


def layer_means(n_train: int, max_length: int, cache: Path) -> tuple[TensorDataset, ...]:
    """(texts, layers + 2, hidden) pooled hidden states (see VIEWS), for n_train seeded
    training sentences (the same pick as benchmarks.dp_recipe) and the dev set."""
    return encoded_sst2(n_train, max_length, cache, "every layer's features", _every_layer)


@torch.no_grad()
def _every_layer(model: nn.Module, encoded: TensorDataset) -> TensorDataset:
    ids, mask, labels = encoded.tensors
    rows = torch.empty(len(ids), model.config.num_hidden_layers + 3, model.config.hidden_size)
    order = torch.argsort(mask.sum(dim=1), stable=True)
    for start in range(0, len(order), 128):
        pick = order[start:start + 128]
        length = int(mask[pick].sum(dim=1).max())
        m = mask[pick, :length]
        hidden = model(input_ids=ids[pick, :length], attention_mask=m,
                       output_hidden_states=True).hidden_states
        last = hidden[-1].masked_fill(m.unsqueeze(-1) == 0, -1e9)  # Pooling(max)'s padding
        rows[pick] = torch.stack([*(mean_pool(h, m) for h in hidden), last.max(dim=1).values,
                                  hidden[-1][:, 0]], dim=1)
    return TensorDataset(rows, labels)


def measure(train: TensorDataset, dev: TensorDataset, seeds: int, arm: Arm) -> dict[str, Any]:
    view, n, epsilon = arm.settings["view"], arm.settings["n"], arm.settings["epsilon"]
    sub = TensorDataset(VIEWS[view](train.tensors[0][:n]), train.tensors[1][:n])
    held = TensorDataset(VIEWS[view](dev.tensors[0]), dev.tensors[1])
    d = sub.tensors[0].shape[1] * 2 + 2
    row: dict[str, Any] = {"view": view, "n": n, "epsilon": epsilon, "trainable": d}
    if epsilon is None:  # the non-private probe: batch 32, AdamW lr 1e-3, same 3 epochs
        runs = [train_head(sub, held, 32, 1e-3, s, None) for s in range(seeds)]
    else:
        plan = planner.plan_dp(n, epsilon, DELTA, 1, EPOCHS, d, C, check=False)
        runs = [train_head(sub, held, plan.batch_size, plan.learning_rate, s, epsilon)
                for s in range(seeds)]
        row.update(batch=plan.batch_size, lr=plan.learning_rate, run_ratio=plan.run_ratio)
    return {**row, "accuracy": _mean_acc(runs), "runs": runs}


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--train-examples", type=int, default=20000)
    parser.add_argument("--sizes", default="2000,20000", help="n per arm, comma-separated")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="results/layer_features.json")
    args = parser.parse_args()
    if sst2_missing():
        return 0
    torch.set_num_threads(2)
    started, out = time.perf_counter(), Path(args.out)
    cache = out.with_name(f"sst2_minilm_views_{args.train_examples}_{args.max_length}.pt")
    train, dev = layer_means(args.train_examples, args.max_length, cache)
    arms = [Arm(f"{view}/n{n}/eps{e}", {"view": view, "n": n, "epsilon": e})
            for n in (int(s) for s in args.sizes.split(",")) for e in (8.0, None)
            for view in VIEWS]
    rows = _run(arms, lambda arm: measure(train, dev, args.seeds, arm), out)
    body = {**harness.header("benchmarks.layer_features"),
            "data": f"SST-2 train {args.train_examples} seeded / GLUE dev 872",
            "epochs": EPOCHS, "delta": DELTA, "max_grad_norm": C, "seeds": args.seeds,
            "rows": rows, "seconds": time.perf_counter() - started}
    harness.write_json(out, body)
    print(harness.table(rows, [harness.Column("view", "view"), harness.Column("n", "n"),
                               harness.Column("ε", "epsilon", "g", "none"),
                               harness.Column("trainable", "trainable"),
                               harness.Column("accuracy", "accuracy", ".3f")], markdown=True))
    print(f"wrote {out} ({body['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
