"""DP recipe for finetune = "pooled-head", centralized on SST-2 with the bundled MiniLM.

    HF_HUB_OFFLINE=1 python -m benchmarks.dp_recipe --part grid --out results/dp_recipe_grid.json
    HF_HUB_OFFLINE=1 python -m benchmarks.dp_recipe --part sweep --seeds 3 \
        --out results/dp_recipe_sweep.json
    HF_HUB_OFFLINE=1 python -m benchmarks.dp_recipe --part schedule --seeds 3 \
        --out results/dp_recipe_schedule.json
    HF_HUB_OFFLINE=1 python -m benchmarks.dp_recipe --part ema --seeds 3 \
        --out results/dp_recipe_ema.json

Frozen mean-pooled features are computed once (cached under results/), then every arm trains the
linear head with the project's own DP-SGD path (common.training.loop.train_dp: Opacus, Poisson
sampling, RDP accountant) and is scored on the 872 GLUE dev sentences (../shared/datasets/sst2/
test.tsv). Arms: batch × learning rate (raw and L2-normalised features), momentum SGD vs AdamW,
non-DP, a sweep of n × ε with the planner's automatic batch that calibrates its threshold, and
n × ε × the learning-rate schedule (constant, linear, cosine decay), and n × ε × the EMA of the
weights (common.training.averaging).
Skips cleanly when the data set is absent.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks import harness
from benchmarks.harness import Arm
from common.privacy import planner
from common.training import loop as training
from common.data.text import TextDataset
from common.privacy.ledger import calibrate_noise, poisson_schedule
from common.training.schedule import LR_SCHEDULES, LRSchedule

logger = logging.getLogger(__name__)
SST2 = Path(os.environ.get("SST2_DIR",
                          Path(__file__).resolve().parents[2] / "shared/datasets/sst2"))
EPOCHS, DELTA, C = 3, 1e-5, 1.0


def sst2_missing() -> bool:
    """Set up logging; True, with the skip printed, when the SST-2 files are absent."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if (SST2 / "train.tsv").exists():
        return False
    print(f"skipped: no SST-2 at {SST2} (set SST2_DIR)")
    return True


def _read_tsv(path: Path) -> tuple[list[str], list[int]]:
    rows = [ln.split("\t") for ln in path.read_text().splitlines()[1:] if ln.strip()]
    return [r[0].strip() for r in rows], [int(r[1]) for r in rows]


def features(n_train: int, max_length: int, cache: Path) -> tuple[TensorDataset, TensorDataset]:
    """Mean-pooled MiniLM features of n_train seeded SST-2 training sentences and the dev set."""
    from common.training.features import PooledHeadClassifier, pooled_features

    return encoded_sst2(n_train, max_length, cache, "features", lambda encoder, enc: (
        pooled_features(PooledHeadClassifier(encoder, 2).train(), enc)))


def encoded_sst2(n_train: int, max_length: int, cache: Path, what: str,
                 compute: Callable[[nn.Module, TensorDataset], TensorDataset]
                 ) -> tuple[TensorDataset, TensorDataset]:
    """``compute(frozen MiniLM, encoded split)`` for n_train seeded SST-2 training sentences
    and for the dev set, kept in ``cache`` (read back when it exists)."""
    if cache.exists():
        blob = torch.load(cache)
        return TensorDataset(*blob["train"]), TensorDataset(*blob["dev"])
    from transformers import AutoModel, AutoTokenizer

    from common.model.factory import resolve_base_model

    path = resolve_base_model("")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts, labels = _read_tsv(SST2 / "train.tsv")
    pick = np.random.default_rng(0).permutation(len(texts))[:n_train]
    out = []
    for t, y in (([texts[i] for i in pick], [labels[i] for i in pick]),
                 _read_tsv(SST2 / "test.tsv")):
        enc = training.encode(tokenizer, TextDataset(tuple(t), tuple(y), ("0", "1")), max_length)
        started = time.perf_counter()
        out.append(compute(model, enc))
        logger.info("%s of %d sentences: %.1f s", what, len(t), time.perf_counter() - started)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": out[0].tensors, "dev": out[1].tensors}, cache)
    return out[0], out[1]


_sigma = functools.lru_cache(calibrate_noise)  # arms share (ε, q, steps): calibrate once


@contextmanager
def momentum_sgd() -> Iterator[None]:
    """Swap the project's AdamW for SGD with momentum 0.9 (this benchmark's arm only)."""
    original = training.make_optimizer
    training.make_optimizer = lambda model, lr, *_: torch.optim.SGD(  # type: ignore[assignment]
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    try:
        yield
    finally:
        training.make_optimizer = original  # type: ignore[assignment]


def train_head(train: TensorDataset, dev: TensorDataset, batch: int, lr: float, seed: int,
               epsilon: float | None, lr_schedule: str = "constant",
               ema_decay: float = 0.0) -> dict[str, Any]:
    """One arm: a zero-initialised linear head, DP (epsilon) or not (None); dev accuracy."""
    head = nn.Linear(train.tensors[0].shape[1], 2)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    q, steps = poisson_schedule(len(train), batch, EPOCHS)
    schedule = LRSchedule.for_round(lr_schedule, 1, 1, steps)  # one round of EPOCHS epochs
    settings = training.TrainSettings(lr, batch, EPOCHS, 0, seed=seed, schedule=schedule,
                                      ema_decay=ema_decay)
    row: dict[str, Any] = {"batch": batch, "lr": lr, "seed": seed, "epsilon": epsilon}
    if epsilon is None:
        training.train_plain(head, train, settings)
    else:
        sigma = _sigma(epsilon, DELTA, q, steps)
        stats, _ = training.train_dp(head, train, settings,
                                     training.DPSettings(sigma, C, "hooks"), [])
        row.update(sigma=sigma, q=q, steps=stats.steps, clipped=stats.clipped_fraction)
    with torch.no_grad():
        pred = head(dev.tensors[0]).argmax(dim=1)
    row["accuracy"] = float((pred == dev.tensors[1]).float().mean())
    return row


def signal_fraction(train: TensorDataset, head: nn.Linear | None = None) -> float:
    """‖mean of clipped per-example gradients‖ / C of a linear head (closed form)."""
    x, y = train.tensors
    logits = head(x) if head is not None else torch.zeros(len(x), 2)
    err = torch.softmax(logits.detach(), dim=1) - nn.functional.one_hot(y, 2).float()
    grads = torch.cat([(err.unsqueeze(2) * x.unsqueeze(1)).flatten(1), err], dim=1)
    scale = (C / grads.norm(dim=1)).clamp(max=1.0)
    return float((grads * scale.unsqueeze(1)).mean(dim=0).norm() / C)


def _normalized(data: TensorDataset) -> TensorDataset:
    x, y = data.tensors
    return TensorDataset(nn.functional.normalize(x, dim=1), y)


def _mean_acc(rows: list[dict[str, Any]]) -> float:
    return statistics.mean(r["accuracy"] for r in rows)


def _log(rows: list[dict[str, Any]], out: Path) -> None:
    """Print the last arm and rewrite the partial results (a killed run keeps what it did)."""
    print({k: v for k, v in rows[-1].items() if k != "runs"}, flush=True)
    harness.write_json(out.with_suffix(".partial.json"), rows)


def _run(arms: list[Arm], measure: Callable[[Arm], dict[str, Any]],
         out: Path) -> list[dict[str, Any]]:
    done = harness.run_arms(arms, measure, save=lambda d: _log(list(d.values()), out))
    return list(done.values())


def grid_arms(n: int) -> list[Arm]:
    """Batch × lr at ε = 8 (raw and normalised features), SGD momentum, and non-DP."""
    arms = []
    for feats in ("raw", "normalized"):
        arms += [Arm(f"dp-adamw/{feats}/b{'all' if b == n else b}/lr{lr:g}",
                     dict(arm="dp-adamw", features=feats, batch=b, lr=lr, epsilon=8.0))
                 for b in (64, 256, 1024, n) for lr in (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)]
        arms += [Arm(f"no-dp-adamw/{feats}/lr{lr:g}",
                     dict(arm="no-dp-adamw", features=feats, batch=32, lr=lr, epsilon=None))
                 for lr in (1e-3, 1e-2, 3e-2)]
        arms += [Arm(f"dp-sgd-momentum/{feats}/lr{lr:g}",
                     dict(arm="dp-sgd-momentum", features=feats, batch=256, lr=lr, epsilon=8.0))
                 for lr in (0.1, 0.3, 1.0, 3.0)]
    return arms


def grid(train: TensorDataset, dev: TensorDataset, seeds: int,
         out: Path) -> list[dict[str, Any]]:
    """Every grid arm, ``seeds`` runs each; a row per arm with the mean accuracy."""
    data = {"raw": (train, dev), "normalized": (_normalized(train), _normalized(dev))}

    def measure(arm: Arm) -> dict[str, Any]:
        s = arm.settings
        tr, dv = data[s["features"]]
        with momentum_sgd() if s["arm"] == "dp-sgd-momentum" else nullcontext():
            runs = [train_head(tr, dv, s["batch"], s["lr"], seed, s["epsilon"])
                    for seed in range(seeds)]
        return {"arm": s["arm"], "features": s["features"], "batch": s["batch"], "lr": s["lr"],
                "accuracy": _mean_acc(runs), "runs": runs}

    return _run(grid_arms(len(train)), measure, out)


def sweep(train: TensorDataset, dev: TensorDataset, seeds: int,
          out: Path) -> list[dict[str, Any]]:
    """n × ε with the planner's batch and learning rate: accuracy against predicted run ratio."""
    d = train.tensors[0].shape[1] * 2 + 2

    def measure(arm: Arm) -> dict[str, Any]:
        n, epsilon = arm.settings["n"], arm.settings["epsilon"]
        sub = TensorDataset(*(t[:n] for t in train.tensors))
        plan = planner.plan_dp(n, epsilon, DELTA, 1, EPOCHS, d, C, check=False)
        runs = [train_head(sub, dev, plan.batch_size, plan.learning_rate, s, epsilon)
                for s in range(seeds)]
        return {"arm": "sweep", "n": n, "epsilon": epsilon, "batch": plan.batch_size,
                "lr": plan.learning_rate, "run_ratio": plan.run_ratio,
                "step_ratio": plan.step_ratio, "accuracy": _mean_acc(runs), "runs": runs}

    arms = [Arm(f"sweep/n{n}/eps{e:g}", {"n": n, "epsilon": e})
            for n in dict.fromkeys((50, 100, 200, 400, 800, 1600, len(train)))
            for e in (1.0, 3.0, 8.0)]
    return _run(arms, measure, out)


def _at_plan(train: TensorDataset, dev: TensorDataset, seeds: int, arm: Arm,
             **options: Any) -> dict[str, Any]:
    """One arm at the planner's batch and lr × the arm's ``lr_scale`` on the arm's first n
    rows, mean of ``seeds`` runs; ``options`` go to train_head (the schedule, the EMA)."""
    n, epsilon = arm.settings["n"], arm.settings["epsilon"]
    d = train.tensors[0].shape[1] * 2 + 2
    sub = TensorDataset(*(t[:n] for t in train.tensors))
    plan = planner.plan_dp(n, epsilon, DELTA, 1, EPOCHS, d, C, check=False)
    lr = plan.learning_rate * arm.settings["lr_scale"]
    runs = [train_head(sub, dev, plan.batch_size, lr, s, epsilon, **options)
            for s in range(seeds)]
    return {"n": n, "epsilon": epsilon, "batch": plan.batch_size, "lr": lr,
            "steps": runs[0]["steps"], "run_ratio": plan.run_ratio,
            "accuracy": _mean_acc(runs), "runs": runs}


def schedules(train: TensorDataset, dev: TensorDataset, seeds: int,
              out: Path) -> list[dict[str, Any]]:
    """The lr schedule (common.training.schedule) at the planner's batch and 1 to 3 × its lr (a
    decay halves the lr's sum over the run), where DP noise costs accuracy (small n, small ε) and
    where it does not."""
    def measure(arm: Arm) -> dict[str, Any]:
        kind = arm.settings["schedule"]
        return {"arm": "schedule", "schedule": kind,
                **_at_plan(train, dev, seeds, arm, lr_schedule=kind)}

    arms = [Arm(f"schedule/n{n}/eps{e:g}/{kind}/lr-x{scale}",
                {"n": n, "epsilon": e, "schedule": kind, "lr_scale": scale})
            for n in (400, 1600, len(train)) for e in (1.0, 8.0) for kind in LR_SCHEDULES
            for scale in (1, 2, 3)]
    return _run(arms, measure, out)


def averaging(train: TensorDataset, dev: TensorDataset, seeds: int,
              out: Path) -> list[dict[str, Any]]:
    """The EMA of the weights over the steps (common.training.averaging) at the planner's batch and
    lr, against the last iterate (decay 0), where DP noise costs accuracy and where it does not."""
    def measure(arm: Arm) -> dict[str, Any]:
        decay = arm.settings["decay"]
        return {"arm": "ema", "ema_decay": decay,
                **_at_plan(train, dev, seeds, arm, ema_decay=decay)}

    arms = [Arm(f"ema/n{n}/eps{e:g}/decay{decay:g}/lr-x{scale}",
                {"n": n, "epsilon": e, "decay": decay, "lr_scale": scale})
            for n in (400, 1600, len(train)) for e in (1.0, 8.0)
            for decay in (0.0, 0.5, 0.8, 0.9, 0.95) for scale in (1, 2)]
    return _run(arms, measure, out)


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--part", choices=("grid", "sweep", "schedule", "ema", "all"),
                        default="all")
    parser.add_argument("--out", default="results/dp_recipe.json")
    args = parser.parse_args()
    if sst2_missing():
        return 0
    torch.set_num_threads(1)
    started = time.perf_counter()
    cache = Path(args.out).with_name(f"sst2_minilm_mean_{args.train_examples}_{args.max_length}.pt")
    train, dev = features(args.train_examples, args.max_length, cache)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        **harness.header("benchmarks.dp_recipe"),
        "data": f"SST-2 train {args.train_examples} seeded / GLUE dev 872", "epochs": EPOCHS,
        "delta": DELTA, "max_grad_norm": C, "seeds": args.seeds,
        "majority": float(max(dev.tensors[1].float().mean(), 1 - dev.tensors[1].float().mean())),
        "feature_norm_mean": float(train.tensors[0].norm(dim=1).mean()),
        "signal_fraction_at_init": {"raw": signal_fraction(train),
                                    "normalized": signal_fraction(_normalized(train))}}
    if args.part in ("grid", "all"):
        body["grid"] = grid(train, dev, args.seeds, Path(args.out))
    if args.part in ("sweep", "all"):
        body["sweep"] = sweep(train, dev, args.seeds, Path(args.out))
    if args.part in ("schedule", "all"):
        body["schedule"] = schedules(train, dev, args.seeds, Path(args.out))
    if args.part in ("ema", "all"):
        body["ema"] = averaging(train, dev, args.seeds, Path(args.out))
    body["seconds"] = time.perf_counter() - started
    harness.write_json(args.out, body)
    print(f"wrote {args.out} ({body['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
