"""The memory preflight: a round that would not fit is refused before training, clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

import common.infra.resources as resources
from client.data import PartnerSettings
from client.partner import train_round
from common.config import RunConfig
from common.errors import ResourceError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS


def test_estimate_grows_with_batch_length_and_dp(tiny_bert: str) -> None:
    model = build_model(RunConfig(base_model=tiny_bert), LABELS)
    small = resources.training_memory(model, 8, 16, dp=True)
    assert resources.training_memory(model, 64, 16, dp=True) > small
    assert resources.training_memory(model, 8, 64, dp=True) > small
    assert resources.training_memory(model, 8, 16, dp=False) < small
    assert small > sum(p.numel() for p in model.parameters()) * 4  # at least the weights


def test_check_fits_names_the_numbers_and_the_fix(tiny_bert: str) -> None:
    model = build_model(RunConfig(base_model=tiny_bert), LABELS)
    resources.check_fits(model, 8, 16, True, "p0", available=2**34)  # 16 GiB: fits
    with pytest.raises(ResourceError, match=r"p0: a round needs about .* GiB \(batch-size 8, "
                                            r"max-length 16\).*lower batch-size"):
        resources.check_fits(model, 8, 16, True, "p0", available=2**20)


def test_round_that_does_not_fit_is_refused_before_training(tiny_bert: str, tmp_path: Path,
                                                             monkeypatch) -> None:
    config = RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                       batch_size=8, finetune="lora", dp_plan_check=False,
                       out_dir=str(tmp_path / "out"))
    model = build_model(config, LABELS)
    monkeypatch.setattr(resources, "available_memory", lambda device=None: 2**20)
    with pytest.raises(ResourceError):
        train_round(config, PartnerSettings(name="p0"), trainable_state(model),
                    frozen_fingerprint(model), 1, "r")
    assert not (tmp_path / "out" / "ledgers").exists()  # nothing spent, nothing written
