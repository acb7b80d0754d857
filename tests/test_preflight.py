"""The Opacus preflight: every reason per-sample gradients would break, found before training."""

from __future__ import annotations

import pytest
from torch import nn

from common.config import RunConfig
from common.errors import PrivacyError
from common.model.factory import build_model
from common.data.synthetic import LABELS
from common.training.loop import validate_for_dp


class BrokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)  # mixes examples of a batch: no per-sample gradient
        self.norm2 = nn.BatchNorm1d(4)


def test_eval_mode_is_refused(tiny_bert: str) -> None:
    model = build_model(RunConfig(base_model=tiny_bert), LABELS).eval()
    with pytest.raises(PrivacyError, match="eval mode"):
        validate_for_dp(model)


def test_every_unsupported_module_is_listed_at_once() -> None:
    with pytest.raises(PrivacyError) as info:
        validate_for_dp(BrokenModel().train())
    message = str(info.value)
    assert "norm" in message and "norm2" in message and "BatchNorm" in message


def test_the_built_models_pass(tiny_bert: str) -> None:
    for mode in ("lora", "full", "head"):
        validate_for_dp(build_model(RunConfig(base_model=tiny_bert, finetune=mode), LABELS))
