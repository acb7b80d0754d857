"""Ghost clipping against Opacus' per-sample-gradient hooks (the slow, obviously right reference):
with no noise, the same Poisson batches and a bound that clips every example, one round of each
must move a tiny BERT to the same weights, in every fine-tuning mode."""

from __future__ import annotations

import numpy as np
import pytest

from client.data import PartnerSettings, partner_dataset
from common.config import RunConfig
from common.errors import PrivacyError
from common.model.factory import build_model, load_tokenizer, trainable_state
from common.data.synthetic import LABELS
from common.training.loop import DPSettings, TrainSettings, clipping_for, encode, train_dp


def _round(config: RunConfig, clipping: str, bound: float) -> tuple[dict, object]:
    train, _ = partner_dataset(config, PartnerSettings(name="p0"), LABELS)
    data = encode(load_tokenizer(config), train, config.max_length)
    model = build_model(config, LABELS)
    stats, _ = train_dp(model, data, TrainSettings(1e-2, 8, 1, config.max_length, seed=3),
                        DPSettings(0.0, bound, clipping), [])
    return trainable_state(model), stats


@pytest.mark.parametrize("finetune", ["lora", "full", "head", "bias"])
def test_ghost_matches_hooks(tiny_bert: str, finetune: str) -> None:
    config = RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                       finetune=finetune)
    hooks, hooks_stats = _round(config, "hooks", 0.05)
    ghost, ghost_stats = _round(config, "ghost", 0.05)
    before = trainable_state(build_model(config, LABELS))
    assert max(float(np.abs(hooks[k] - before[k]).max()) for k in hooks) > 1e-3  # it trained
    for k in hooks:
        np.testing.assert_allclose(ghost[k], hooks[k], atol=1e-5, err_msg=k)  # 0.1 % of a step
    assert ghost_stats.steps == hooks_stats.steps
    assert ghost_stats.loss == pytest.approx(hooks_stats.loss, rel=1e-5)
    assert ghost_stats.clipped_fraction == hooks_stats.clipped_fraction == 1.0


def test_clipping_choice(tiny_bert: str) -> None:
    assert clipping_for("hooks", "full") == "hooks"
    assert clipping_for("ghost", "lora") == "ghost"
    assert {clipping_for("auto", m) for m in ("lora", "full", "head")} <= {"hooks", "ghost"}
    with pytest.raises(PrivacyError, match="clipping 'fast' is not valid"):
        clipping_for("fast", "lora")
    with pytest.raises(PrivacyError, match="clipping 'fast' is not valid"):
        _round(RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16),
               "fast", 1.0)


def test_config_rejects_unknown_clipping() -> None:
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="clipping"):
        RunConfig(clipping="fast")
    assert RunConfig().clipping == "auto"

