"""Simulated partners dropping out, through the real round loop and ClientApp handlers in process
(simulations.local_grid, whose ClientApp exceptions become error replies as in Flower's engines;
the same path through `flwr run` is tests/test_secagg.py's simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import RunConfig


def test_dropouts_are_survived_and_recorded(tiny_bert: str, tmp_path: Path) -> None:
    """5 partners, 30 % dropping at random after training, 3 rounds: the run completes, each
    drop is in metrics.jsonl with its reason, and every trained round is in the ledger."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    out = tmp_path / "drop"
    config = RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                       batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=3,
                       dropout_rate=0.3, min_partners=1, out_dir=str(out),
                       ledger_dir=str(out / "ledgers"))
    run_federation(LocalGrid(config, 5, errors_as_replies=True), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    dropped_any = False
    for line in lines:
        expected = {f"partner-{p}" for p in range(5)
                    if np.random.default_rng([42, line["round"], p]).random() < 0.3}
        dropped = {f["partner"] for f in line["failures"] if "dropped out" in f["reason"]}
        assert dropped == expected and not set(line["partners_replied"]) & expected
        assert len(line["partners_replied"]) == 5 - len(expected)
        dropped_any |= bool(expected)
    assert dropped_any
    for p in range(5):
        ledger = json.loads(next((out / "ledgers").glob(f"partner-{p}@*.json")).read_text())
        assert len(ledger["body"]["releases"]) == 3  # dropped rounds are spent too
