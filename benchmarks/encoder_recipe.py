"""DP recipes that adapt the encoder (issue 12): centralized SST-2, one arm per recipe.

    python -m benchmarks.encoder_recipe --train-examples 4000 --arms pooled-lora:r8:lr3e-3:eps8
    python -m benchmarks.encoder_recipe --preset grid --device cuda --out results/encoder.json

Each arm builds the model with the product's own factory (``common.model.factory.build_model``),
trains it with the product's DP-SGD (``common.training.loop.train_dp``: Opacus, Poisson sampling,
RDP accountant, σ from ``common.privacy.planner.plan_dp``) or without DP (``train_plain``), and
scores it on the 872 GLUE dev sentences. An arm is ``MODE:key value:…`` with keys ``r`` (LoRA rank),
``lr``, ``eps`` (``inf`` = no DP), ``ep`` (epochs), ``b`` (expected batch; default the planner's),
``ffa`` (FFA-LoRA: the A matrices frozen) and ``lp`` (linear probe first: the head is trained on the
frozen encoder's cached features for ``lp`` epochs, then the adapters and head together; under
DP both phases share one σ, calibrated so that their composition spends exactly ``eps``).
Results are rewritten after each arm (``--out``; a run cut off keeps what it measured).
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.dp_recipe import SST2, _read_tsv
from common.evaluation import scoring as evaluation
from common.privacy import planner
from common.training import loop as training
from common.config import RunConfig
from common.data.text import TextDataset
from common.model.device import resolve_device
from common.privacy.ledger import epsilon_of, poisson_schedule

logger = logging.getLogger(__name__)
DELTA, C, MAX_LENGTH = 1e-5, 1.0, 64
PRESETS = {
    # the GPU grid: what to train, lr and LP-FT at ε = 8, and the non-private references
    "grid": ["pooled-head:eps8", "pooled-lora:r8:lr1e-2:eps8", "pooled-lora:r8:lr3e-2:eps8",
             "pooled-lora:r8:lr1e-2:eps8:lp2", "pooled-lora:r8:lr3e-3:eps8:lp2",
             "pooled-lora:r8:lr1e-2:eps8:ffa1", "pooled-lora:r2:lr1e-2:eps8",
             "pooled-lora:r8:lr1e-2:eps8:b1000", "full:lr1e-3:eps8:b1000",
             "pooled-lora:r8:lr5e-4:epsinf:ep1:b32", "pooled-head:epsinf:lr1e-2"],
}
KEYS = {"r": int, "lr": float, "eps": float, "ep": int, "b": int, "ffa": int, "lp": int}


def parse_arm(text: str) -> dict[str, Any]:
    """``pooled-lora:r8:lr3e-3:eps8`` → {"mode": "pooled-lora", "r": 8, "lr": 0.003, "eps": 8}."""
    mode, *parts = text.split(":")
    arm: dict[str, Any] = {"mode": mode, "r": 8, "eps": 8.0, "ep": 3, "ffa": 0, "lp": 0}
    for part in parts:
        match = re.fullmatch(r"(eps|ep|lr|lp|ffa|r|b)([0-9.e+-]+|inf)", part)
        if not match:
            raise SystemExit(f"arm {text!r}: cannot read {part!r} (keys: {', '.join(KEYS)})")
        arm[match.group(1)] = KEYS[match.group(1)](match.group(2))
    arm.setdefault("lr", planner.default_learning_rate(mode, not math.isinf(arm["eps"])))
    if (arm["lp"] or arm["ffa"]) and mode != "pooled-lora" and not (arm["ffa"] and mode == "lora"):
        raise SystemExit(f"arm {text!r}: lp needs pooled-lora, ffa needs pooled-lora or lora")
    return arm


def load_sst2(n: int, seed: int) -> tuple[TextDataset, TextDataset]:
    texts, labels = _read_tsv(SST2 / "train.tsv")
    pick = sorted(np.random.default_rng(seed).permutation(len(texts))[:n])
    dev = _read_tsv(SST2 / "test.tsv")
    names = ("0", "1")
    return (TextDataset(tuple(texts[i] for i in pick), tuple(labels[i] for i in pick), names),
            TextDataset(tuple(dev[0]), tuple(dev[1]), names))


def shared_sigma(phases: list[tuple[float, int]], epsilon: float) -> float:
    """The one σ at which DP-SGD phases [(q, steps), …] compose to exactly ``epsilon``."""
    low, high = 0.3, 50.0
    for _ in range(24):  # 50 / 2^24: σ to 3e-6
        mid = (low + high) / 2
        spent = epsilon_of([(mid, q, t) for q, t in phases], DELTA)
        low, high = (mid, high) if spent > epsilon else (low, mid)
    return high


def run_arm(arm: dict[str, Any], train: TextDataset, dev: TextDataset, device: torch.device,
            seed: int, base_model: str = "") -> dict[str, Any]:
    """Build, train and score one recipe; the row records σ, q, steps and the ε spent."""
    from common.training.features import pooled_features
    from common.model.factory import build_model, load_tokenizer, trainable_size

    config = RunConfig(finetune=arm["mode"], lora_r=arm["r"], lora_alpha=2 * arm["r"],
                       lora_freeze_a=bool(arm["ffa"]), seed=seed, max_length=MAX_LENGTH,
                       base_model=base_model)
    model = build_model(config, ("0", "1")).to(device)
    tok = load_tokenizer(config)
    data, dev_data = (training.encode(tok, s, MAX_LENGTH) for s in (train, dev))
    dp, n, d = not math.isinf(arm["eps"]), len(train), trainable_size(model)
    row: dict[str, Any] = {**arm, "n": n, "trainable": d}
    started = time.perf_counter()
    if arm["mode"] == "pooled-head":  # the head on cached features, as partners train it
        view, data = model.head, pooled_features(model, data)
        d = trainable_size(view)
    else:
        view = model
    phases: list[tuple[Any, Any, int]] = []  # (module, data set, epochs)
    if arm["lp"]:
        phases.append((model.head, pooled_features(model, data), arm["lp"]))
    phases.append((view, data, arm["ep"]))
    if not dp:
        for module, part, epochs in phases:
            training.train_plain(module, part, training.TrainSettings(
                arm["lr"], arm.get("b", 32), epochs, MAX_LENGTH, seed))
    else:
        batch = arm.get("b") or planner.auto_batch(n, 1, arm["ep"], arm["mode"])
        schedule = [poisson_schedule(n, batch, epochs) for _, _, epochs in phases]
        sigma = shared_sigma(schedule, arm["eps"])
        history: list = []
        for (module, part, epochs), (q, steps) in zip(phases, schedule):
            plan = planner.plan_dp(n, arm["eps"], DELTA, 1, epochs, trainable_size(module), C,
                                   batch_size=batch, learning_rate=arm["lr"],
                                   finetune=arm["mode"], noise_multiplier=sigma, check=False)
            stats, history = training.train_dp(
                module, part, training.TrainSettings(arm["lr"], batch, epochs, MAX_LENGTH, seed,
                                                     plan=plan),
                training.DPSettings(sigma, C, training.clipping_for("auto", arm["mode"])),
                history)
            row.setdefault("clipped", []).append(stats.clipped_fraction)
        row.update(sigma=sigma, batch=batch, schedule=schedule,
                   epsilon_spent=epsilon_of(history, DELTA),
                   run_ratio=planner.plan_dp(n, arm["eps"], DELTA, 1, arm["ep"], d, C,
                                             batch_size=batch, noise_multiplier=sigma,
                                             check=False).run_ratio)
    row["train_seconds"] = round(time.perf_counter() - started, 1)
    model.eval()
    row["accuracy"] = evaluation.evaluate(model, dev_data).accuracy
    return row


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--arms", nargs="+", default=[])
    parser.add_argument("--preset", choices=list(PRESETS))
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--base-model", default="", help="a model directory (default: MiniLM)")
    parser.add_argument("--out", type=Path, default=Path("results/encoder_recipe.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if not (SST2 / "train.tsv").exists():
        print(f"skipped: no SST-2 at {SST2} (set SST2_DIR)")
        return 0
    arms = [parse_arm(a) for a in (PRESETS.get(args.preset, []) + args.arms)]
    device = resolve_device(args.device)
    train, dev = load_sst2(args.train_examples, args.seed)
    body: dict[str, Any] = {**harness.header("benchmarks.encoder_recipe"),
                            "device": str(device), "train_examples": len(train),
                            "data": "SST-2 train (seeded subset) / GLUE dev 872",
                            "delta": DELTA, "max_grad_norm": C, "arms": []}
    for arm in arms:
        try:
            row = run_arm(arm, train, dev, device, args.seed, args.base_model)
        except Exception as exc:  # one broken recipe must not lose the others' numbers
            logger.exception("arm %s failed", arm)
            row = {**arm, "error": f"{type(exc).__name__}: {exc}"}
        body["arms"].append(row)
        harness.write_json(args.out, body)
        print("ARM", {k: v for k, v in row.items() if k != "schedule"}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
