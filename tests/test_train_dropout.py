"""train-dropout: 0 turns off every dropout of the model while it trains (attention's too), auto
keeps the base model's; evaluation never drops either way."""

from __future__ import annotations

import pytest
import torch

from common.config import RunConfig
from common.data.synthetic import LABELS
from common.model.factory import build_model


def _two_train_passes(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 90, (4, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=ids).logits


@pytest.mark.parametrize("finetune", ["bias", "lora"])
def test_no_dropout_makes_training_passes_deterministic(tiny_bert: str, finetune: str) -> None:
    drops = build_model(RunConfig(base_model=tiny_bert, finetune=finetune), LABELS)
    first, second = _two_train_passes(drops)
    assert not torch.allclose(first, second)  # the base model drops 0.1 by default
    still = build_model(RunConfig(base_model=tiny_bert, finetune=finetune, train_dropout=0.0),
                        LABELS)
    first, second = _two_train_passes(still)
    assert torch.equal(first, second)
    assert all(m.p == 0.0 for m in still.modules() if isinstance(m, torch.nn.Dropout))
