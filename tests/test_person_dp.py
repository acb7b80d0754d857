"""Per-person DP-SGD (common.training.person_dp) against a slow, obviously correct reference: each
person's mean gradient computed on its own, clipped, summed; noise of the right scale; ε per person
by Opacus' RDP accountant at the persons' sampling rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.training import loop as training
from common.training.person_dp import Persons, step_rows, train_dp_persons
from common.privacy.planner import plan_dp
from common.privacy.ledger import epsilon_of
from common.training.loop import DPSettings, TrainSettings

C = 0.05  # small enough that most persons are clipped, so clipping is tested, not skipped


def _people(seed: int = 0) -> tuple[nn.Linear, TensorDataset, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(60, 16, generator=gen)
    labels = torch.randint(0, 3, (60,), generator=gen)
    rows_each = [1, 2, 3, 5, 8, 1, 4, 6, 2, 7, 3, 9, 5, 4]  # 14 persons, 60 rows
    ids = [f"p{i}" for i, k in enumerate(rows_each) for _ in range(k)]
    order = torch.randperm(60, generator=gen)  # a person's rows are scattered over the file
    ids = [ids[i] for i in order.tolist()]
    torch.manual_seed(seed)
    return nn.Linear(16, 3), TensorDataset(features, labels), ids


def _settings(persons: int, sigma: float, batch: int | None = None, epochs: int = 1,
              seed: int = 7) -> TrainSettings:
    plan = plan_dp(persons, 8.0, 1e-3, 1, epochs, 51, C, batch_size=batch or persons,
                   learning_rate=1.0, noise_multiplier=sigma or 1.0, check=False)
    return TrainSettings(learning_rate=1.0, batch_size=plan.batch_size, local_epochs=epochs,
                         max_length=8, seed=seed, plan=plan)


def _sgd(monkeypatch) -> None:
    """Plain SGD at lr 1: the weights move by exactly the private gradient."""
    monkeypatch.setattr(training, "make_optimizer", lambda model, lr, *_: torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr))
    import common.training.person_dp as person_dp
    monkeypatch.setattr(person_dp, "make_optimizer", training.make_optimizer)


def _reference_sum(model: nn.Linear, data: TensorDataset, persons: Persons) -> torch.Tensor:
    """Σ over persons of clip_C(∇ mean loss over the person's rows), one person at a time."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()))
    for rows in persons.rows:
        model.zero_grad()
        x, y = data.tensors[0][rows], data.tensors[1][rows]
        nn.functional.cross_entropy(model(x), y).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        total += grad * min(1.0, C / (grad.norm().item() + 1e-6))
    return total


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _step(monkeypatch, sigma: float, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(weights moved, reference clipped mean, persons) of one full-batch step (q = 1)."""
    _sgd(monkeypatch)
    model, data, ids = _people()
    persons = Persons.of(ids)
    reference = _reference_sum(model, data, persons) / len(persons)
    before = _flat(model)
    train_dp_persons(model, data, persons, _settings(len(persons), sigma, seed=seed),
                     DPSettings(sigma, C), max_rows=100, history=[])
    return before - _flat(model), reference, len(persons)


def test_the_step_is_the_reference_clipped_sum_per_person(monkeypatch):
    moved, reference, _ = _step(monkeypatch, sigma=0.0)
    assert torch.allclose(moved, reference, atol=1e-6), (moved - reference).abs().max()
    # a per-example clip (every row clipped on its own) would differ: the unit matters
    model, data, ids = _people()
    rows_as_persons = Persons.of([str(i) for i in range(len(ids))])
    per_row = _reference_sum(model, data, rows_as_persons) / len(rows_as_persons)
    assert not torch.allclose(per_row, reference, atol=1e-4)


def test_the_noise_has_scale_sigma_c_over_the_expected_persons(monkeypatch):
    sigma = 3.0
    moved, reference, count = _step(monkeypatch, sigma=sigma, seed=11)
    noise = moved - reference
    expected = sigma * C / count
    assert abs(noise.std().item() / expected - 1) < 0.25  # 51 coordinates
    stds = [(_step(monkeypatch, sigma, seed=s)[0] - reference).std().item() for s in range(8)]
    assert abs(np.mean(stds) / expected - 1) < 0.08  # 408 coordinates


def test_epsilon_is_per_person_at_the_persons_rate():
    from opacus.accountants import RDPAccountant

    model, data, ids = _people()
    persons = Persons.of(ids)
    settings = _settings(len(persons), 1.1, batch=4, epochs=2)
    stats, history = train_dp_persons(model, data, persons, settings, DPSettings(1.1, C),
                                      max_rows=3, history=[(0.9, 0.5, 3)])
    q = settings.plan.sample_rate
    assert q == pytest.approx(1 / 4)  # 14 persons, 4 per step on average: q = 1/ceil(14/4)
    assert stats.sample_rate == q and stats.steps == 2 * int(1 / q)
    assert history == [(0.9, 0.5, 3), (1.1, q, stats.steps)]
    fresh = RDPAccountant()
    fresh.history = [(0.9, 0.5, 3), (1.1, q, stats.steps)]
    assert epsilon_of(history, 1e-5) == pytest.approx(fresh.get_epsilon(1e-5), rel=0.01)
    assert stats.examples_seen <= stats.steps * 3 * len(persons)


def test_a_step_takes_at_most_max_rows_of_a_person():
    persons = Persons.of(["a"] * 10 + ["b"] * 2)
    rows, owner = step_rows(persons, [0, 1], max_rows=3, rng=np.random.default_rng(0))
    assert (owner == 0).sum() == 3 and (owner == 1).sum() == 2
    assert set(rows[owner == 0]) <= set(range(10)) and len(set(rows[owner == 0])) == 3
    assert step_rows(persons, [], 3, np.random.default_rng(0))[0].size == 0


def test_ghost_clipping_is_refused_for_persons():
    from common.errors import PrivacyError

    model, data, ids = _people()
    persons = Persons.of(ids)
    with pytest.raises(PrivacyError, match="hooks"):
        train_dp_persons(model, data, persons, _settings(len(persons), 1.0),
                         DPSettings(1.0, C, clipping="ghost"), 4, [])
