"""Adapters in the top layers only (``lora-layers``): one DP round with the whole encoder run in
every step, against the same round on the frozen layers' output computed once and kept
(common.training.top_layers), side by side.

    HF_HUB_OFFLINE=1 python -m benchmarks.top_layers --out results/top_layers

One partner's DP round as ``client.partner`` runs it (``common.training.loop.train_dp``: Poisson
sampling, per-sample hooks, one noise draw and one step per batch, length-sorted pieces), FFA-LoRA
r = 8 in the top N of the bundled MiniLM's 6 layers + the head on the mean-pooled output, batch
256, σ = 0.8, one epoch over the 80 % of ``--examples`` seeded SST-2 training phrases a partner
trains on. Both views of one N start from the same weights and seed, so they draw the same
batches and noise: the table gives the largest difference between their trained weights (float
rounding only) next to the seconds. "keep" is the one-off pass that computes the kept inputs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from benchmarks import harness
from benchmarks.batching import BATCH, LEARNING_RATE, SIGMA, load, partner_arguments
from benchmarks.harness import Arm, Column

logger = logging.getLogger(__name__)
LAYERS = (1, 2, 3)


def measure(arm: Arm, config: Any, data: TensorDataset, cache: Path,
            trained: dict[int, dict[str, Any]]) -> dict[str, Any]:
    from client.round_plan import trainable_view
    from common.model.factory import build_model, trainable_state
    from common.tasks import get_task
    from common.training.loop import DPSettings, TrainSettings, train_dp

    layers, kept = arm.settings["layers"], arm.settings["kept"]
    config = config.replace(lora_layers=layers)
    torch.manual_seed(0)
    model = build_model(config, get_task(config.task).run_labels(config)).train()
    started = time.perf_counter()
    module, inputs = trainable_view(model, data, cache / str(layers)) if kept else (model, data)
    keep = time.perf_counter() - started
    settings = TrainSettings(LEARNING_RATE, BATCH, 1, config.max_length, seed=7)
    started = time.perf_counter()
    stats, _ = train_dp(module, inputs, settings, DPSettings(SIGMA, 1.0), [])
    seconds = time.perf_counter() - started
    state = trainable_state(model)
    result = {"layers": layers, "seconds": seconds, "keep_seconds": keep if kept else None,
              "steps": stats.steps, "loss": stats.loss}
    if layers in trained:  # the other view of the same round: how far apart they ended
        other = trained[layers]
        result["max_weight_difference"] = max(
            float(abs(torch.as_tensor(state[k]) - torch.as_tensor(other[k])).max())
            for k in state)
    trained[layers] = state
    return result


def main() -> int:
    args = partner_arguments(harness.parser(__doc__), "results/top_layers").parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as folder:
        loaded = load("sst2", args.datasets_dir, args.examples, Path(folder))
        if loaded is None:
            return 0
        config, data = loaded
        arms = [Arm(f"top {n}, {'kept inputs' if kept else 'whole encoder'}",
                    {"layers": n, "kept": kept}) for n in LAYERS for kept in (False, True)]
        head = harness.header("benchmarks.top_layers", texts=len(data), batch=BATCH,
                              sigma=SIGMA, learning_rate=LEARNING_RATE)
        path = args.out / "top_layers.json"
        trained: dict[int, dict[str, Any]] = {}
        results = harness.run_arms(
            arms, lambda arm: measure(arm, config, data, Path(folder) / "cache", trained),
            save=lambda done: harness.write_json(path, {**head, "arms": done}))
    rows = []
    for name, r in results.items():
        whole = results[f"top {r['layers']}, whole encoder"]["seconds"]
        rows.append({"arm": name, **r, "speed-up": whole / r["seconds"]})
    print(harness.table(rows, [Column("arm", "arm"), Column("round s", "seconds", ".1f"),
                               Column("keep s", "keep_seconds", ".1f"),
                               Column("speed-up", "speed-up", ".2f"),
                               Column("max |Δw|", "max_weight_difference", ".1e"),
                               Column("loss", "loss", ".4f")], markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
