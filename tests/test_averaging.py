"""The EMA of the weights (common.training.averaging): its maths, and that a DP round with it runs
the same DP-SGD (the same noisy iterates, σ, q, steps: the same ε) and ends at the iterates'
average."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import TensorDataset

from common.training import loop as training
from common.training.averaging import WeightAverage
from common.config import RunConfig
from common.errors import ConfigError
from common.privacy.ledger import epsilon_of
from common.training.loop import DPSettings, TrainSettings, train_dp, train_plain


def test_the_average_is_the_ema_of_the_iterates_from_the_first() -> None:
    layer = nn.Linear(3, 2)
    layer.bias.requires_grad_(False)  # frozen tensors are left alone
    bias = layer.bias.detach().clone()
    average = WeightAverage(layer, decay=0.8)
    iterates = [torch.full((2, 3), float(v)) for v in (1.0, 2.0, 4.0)]
    for value in iterates:
        with torch.no_grad():
            layer.weight.copy_(value)
        average.update()
    average.apply()
    expected = 0.8 * (0.8 * 1.0 + 0.2 * 2.0) + 0.2 * 4.0  # starts at the first iterate
    assert torch.allclose(layer.weight, torch.full((2, 3), expected))
    assert torch.equal(layer.bias, bias)
    assert average.updates == 3


def test_decay_zero_keeps_the_last_iterate_and_bad_decays_are_refused() -> None:
    layer = nn.Linear(2, 1)
    average = WeightAverage(layer, 0.0)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    average.update()
    average.apply()
    assert torch.all(layer.weight == 3.0)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="EMA decay"):
            WeightAverage(layer, bad)


def _data(n: int = 80) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _round(decay: float, dp: bool, monkeypatch: pytest.MonkeyPatch
           ) -> tuple[nn.Linear, list[torch.Tensor], list]:
    """One round of a linear head; returns it, the weights after every optimizer step, and the
    accountant's history."""
    torch.manual_seed(0)
    head = nn.Linear(6, 2)
    iterates: list[torch.Tensor] = []
    make = training.make_optimizer

    def recording(model: nn.Module, lr: float, scale: float = 1.0) -> torch.optim.Optimizer:
        optimizer = make(model, lr, scale)
        optimizer.register_step_post_hook(
            lambda *_: iterates.append(head.weight.detach().clone()))
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", recording)
    settings = TrainSettings(5e-2, 16, 2, 0, seed=7, ema_decay=decay)
    history: list = []
    if dp:
        _, history = train_dp(head, _data(), settings, DPSettings(1.1, 1.0), [(0.9, 0.2, 3)])
    else:
        train_plain(head, _data(), settings)
    return head, iterates, history


@pytest.mark.parametrize("dp", [True, False])
def test_a_round_with_the_ema_runs_the_same_steps_and_ends_at_their_average(
        dp: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    last, last_iterates, last_history = _round(0.0, dp, monkeypatch)
    ema, ema_iterates, ema_history = _round(0.9, dp, monkeypatch)
    assert len(ema_iterates) == 10  # 2 epochs × 5 batches (Poisson: 5 expected)
    for a, b in zip(last_iterates, ema_iterates):  # the same noisy trajectory, step by step
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(last.weight, last_iterates[-1])
    expected = ema_iterates[0].clone()
    for w in ema_iterates[1:]:
        expected = 0.9 * expected + 0.1 * w
    torch.testing.assert_close(ema.weight, expected)
    assert not torch.allclose(ema.weight, last.weight)
    if dp:  # the accountant counts the same (σ, q, steps): the same ε, as Opacus computes it
        assert ema_history == last_history == [(0.9, 0.2, 3), (1.1, 1 / 5, 10)]
        accountant = RDPAccountant()
        accountant.history = list(ema_history)
        assert epsilon_of(ema_history, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5),
                                                              rel=1e-12)


@pytest.mark.parametrize("value", [1.0, -0.5, "high"])
def test_a_bad_ema_decay_in_the_run_config_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="ema-decay"):
        RunConfig.from_mapping({"ema-decay": value})
    assert RunConfig.from_mapping({"ema-decay": 0.9}).ema_decay == 0.9
