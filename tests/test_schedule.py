"""The learning rate over a run (common.training.schedule): its maths, that the optimizer steps at
it in a DP round, that it costs no ε, and that a partner's later rounds run its later steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from client.data import PartnerSettings
from client.partner import train_round
from common.config import RunConfig
from common.errors import ConfigError
from common.privacy.planner import plan_dp
from common.training.schedule import LRSchedule, lr_factor
from common.training.loop import DPSettings, TrainSettings, train_dp
from tests.test_partner_round import shared_start, tiny_config


def test_the_factors_of_each_schedule() -> None:
    assert [lr_factor("constant", s, 10) for s in range(10)] == [1.0] * 10
    assert [lr_factor("linear", s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    cosine = [lr_factor("cosine", s, 8) for s in range(8)]
    assert cosine[0] == 1.0 and cosine[4] == pytest.approx(0.5) and cosine[7] > 0
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    # warm-up: rises linearly over its steps, then the decay runs over the steps left
    assert [lr_factor("linear", s, 6, warmup_steps=2) for s in range(6)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])
    assert lr_factor("constant", 0, 10, warmup_steps=4) == 0.2


def test_rounds_continue_the_run_schedule() -> None:
    """Round r's local steps are the run's steps (r − 1)·T … r·T − 1: three rounds of 5 steps
    give the one-run sequence of 15."""
    run = [lr_factor("cosine", s, 15, 3) for s in range(15)]
    rounds = [LRSchedule.for_round("cosine", r, 3, 5, warmup=0.2).factor(s)
              for r in (1, 2, 3) for s in range(5)]
    assert rounds == run
    assert LRSchedule.for_round("constant", 2, 3, 5).constant


@pytest.mark.parametrize("kind, step, total, warmup", [("step", 0, 5, 0), ("linear", -1, 5, 0),
                                                       ("linear", 0, 0, 0), ("cosine", 0, 5, 5)])
def test_a_schedule_that_is_not_one_is_refused(kind: str, step: int, total: int,
                                               warmup: int) -> None:
    with pytest.raises(ValueError, match="lr schedule"):
        lr_factor(kind, step, total, warmup)


@pytest.mark.parametrize("change, message", [({"lr-schedule": "exponential"}, "lr-schedule"),
                                             ({"lr-warmup": 1.0}, "lr-warmup")])
def test_bad_schedule_config_names_the_key(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(change)


def _dp_round(schedule: LRSchedule, lrs: list[float]) -> list:
    """One DP round of a linear head at lr 0.1; ``lrs`` collects AdamW's lr at each step."""
    torch.manual_seed(0)
    head, n = nn.Linear(6, 3), 120
    data = TensorDataset(torch.randn(n, 6), torch.randint(0, 3, (n,)))
    plan = plan_dp(n, 8.0, 1e-5, 2, 2, 21, 1.0, batch_size=20, check=False)

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if type(optimizer) is torch.optim.AdamW:
            lrs.append(optimizer.param_groups[0]["lr"])

    settings = TrainSettings(0.1, plan.batch_size, 2, 0, seed=3, plan=plan, schedule=schedule)
    hook = register_optimizer_step_pre_hook(record)
    try:
        _, history = train_dp(head, data, settings, DPSettings(plan.noise_multiplier, 1.0), [])
    finally:
        hook.remove()
    assert len(lrs) == plan.steps_per_round == 12
    return history


def test_a_dp_round_steps_at_the_schedule_and_spends_the_same_epsilon() -> None:
    constant, decayed = [], []
    schedule = LRSchedule.for_round("cosine", 2, 2, 12, warmup=0.1)
    history = _dp_round(schedule, decayed)
    assert decayed == pytest.approx([0.1 * schedule.factor(s) for s in range(12)])
    assert max(decayed) < 0.1 and decayed[-1] < 0.01  # round 2 of 2: the decay's second half
    # σ, q and the steps are the plan's either way: the accountant's history is the same
    assert history == _dp_round(LRSchedule(), constant) and constant == [0.1] * 12


def _update_norm(config: RunConfig) -> tuple[float, float]:
    shared, fingerprint = shared_start(config)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 2, "r")
    norm = math.sqrt(sum(np.sum((reply.arrays[k] - shared[k]).astype(np.float64) ** 2)
                         for k in shared))
    return norm, reply.metrics["epsilon"]


def test_a_partners_last_round_under_linear_decay_moves_the_weights_less(
        tiny_bert: str, tmp_path: Path) -> None:
    """Round 2 of 2 at linear decay runs at 0 … 0.5 × the learning rate: the same seeded round
    at a constant lr moves the weights about 3 × as far, for the same ε."""
    norms = {}
    for kind in ("constant", "linear"):
        config = tiny_config(tiny_bert, tmp_path / kind, num_rounds=2, lr_schedule=kind,
                             update_clip_norm=0.0, learning_rate=0.05)
        norms[kind] = _update_norm(config)
    assert norms["linear"][1] == norms["constant"][1]
    assert 0 < norms["linear"][0] < 0.5 * norms["constant"][0]
