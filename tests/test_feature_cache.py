"""Issue 33 item 14: cached features (the frozen encoder's invertible embeddings of a partner's
texts) expire after the partner's ``feature-cache-days`` and `consortium partner purge-cache`
removes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from client.partner import train_round
from client.policy import PartnerSettings
from common.config import RunConfig
from common.training.feature_cache import DAY, purge
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.sources import run_labels
from simulations.cli import main


def _round(tiny_bert: str, tmp_path: Path, **policy: object) -> Path:
    config = RunConfig(base_model=tiny_bert, finetune="pooled-head", examples_per_partner=40,
                       max_length=16, batch_size=8, local_epochs=1, num_rounds=1,
                       noise_multiplier=1.0, dp_plan_check=False, out_dir=str(tmp_path / "out"))
    partner = PartnerSettings.from_node_config({"ledger-dir": str(tmp_path / "ledgers"),
                                                **policy})
    model = build_model(config, run_labels(config))
    train_round(config, partner, trainable_state(model), frozen_fingerprint(model), 1, "r")
    return tmp_path / "ledgers" / "cache"


def test_features_expire_with_the_policy_and_purge_removes_them(tiny_bert: str,
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "ledgers" / "cache"
    cache.mkdir(parents=True)
    old = cache / "features-written-ten-days-ago.pt"
    old.write_bytes(b"embeddings")
    os.utime(old, (time.time() - 10 * DAY,) * 2)
    _round(tiny_bert, tmp_path)  # the default policy keeps features 7 days
    kept = sorted(p.name for p in cache.iterdir())
    assert old.name not in kept and any(name.startswith("features-") for name in kept)
    assert purge(cache, older_than_days=1) == (0, 0)  # a fresh file is not a day old
    assert main(["partner", "purge-cache", "--ledger-dir", str(tmp_path / "ledgers")]) == 0
    assert not list(cache.iterdir())


def test_a_policy_of_zero_days_keeps_no_features(tiny_bert: str, tmp_path: Path) -> None:
    cache = _round(tiny_bert, tmp_path, **{"feature-cache-days": 0})
    assert not cache.exists() or not list(cache.iterdir())
