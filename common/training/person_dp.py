"""Per-person DP-SGD: persons are sampled, and each person's gradient is clipped as one unit.

A patient with 40 notes is protected only at about 40 ε by per-example DP-SGD. Here the unit is
the person (the partner's ``person-column``):

1. Opacus' ``UniformWithReplacementSampler`` draws each *person* with probability q per step
   (Poisson sampling over persons; q from common.privacy.planner, planned in persons).
2. Each drawn person contributes at most ``max_rows`` of its rows, drawn at random.
3. Opacus' ``GradSampleModule`` computes per-row gradients (hooks); each row's is weighted by
   1/k (k = the person's rows this step) and summed per person: the person's mean gradient.
4. Opacus' ``DPOptimizer`` then sees one "sample" per person: it clips each to C, adds
   N(0, σ²C²) and divides by the expected persons per step, q·P. Its step hook steps Opacus' RDP
   accountant at rate q, so ε is per person.

A step that draws nobody still adds the noise (one all-zero person). Changing one person's rows
changes one clipped term of norm ≤ C, exactly the sensitivity of per-example DP-SGD with persons
as examples, which is what the accountant assumes. No flwr here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.training.averaging import WeightAverage
from common.errors import PrivacyError
from common.training.progress import RoundProgress
from common.training.loop import (DPSettings, TrainSettings, TrainStats, make_optimizer,
                             mean_or_nan, model_logits, scheduled, training_seed, validate_for_dp)


@dataclass(frozen=True)
class Persons:
    """The row indices of each person, in order of first appearance."""

    rows: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, ids: Sequence[str]) -> Persons:
        found: dict[str, list[int]] = {}
        for row, person in enumerate(ids):
            found.setdefault(person, []).append(row)
        return cls(tuple(np.asarray(r, dtype=np.int64) for r in found.values()))

    def __len__(self) -> int:
        return len(self.rows)


def step_rows(persons: Persons, picked: Sequence[int], max_rows: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, owner): the rows one step uses, at most ``max_rows`` per picked person (drawn
    without replacement), and for each row the position of its person in ``picked``."""
    rows, owner = [], []
    for position, person in enumerate(picked):
        mine = persons.rows[person]
        if len(mine) > max_rows:
            mine = rng.choice(mine, size=max_rows, replace=False)
        rows.append(mine)
        owner.append(np.full(len(mine), position, dtype=np.int64))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(owner)


def row_weights(owner: torch.Tensor, count: int) -> torch.Tensor:
    """1/k for each row of a person with k rows this step: per-person sums become means."""
    rows_per_person = torch.bincount(owner, minlength=count).clamp(min=1)
    return 1.0 / rows_per_person[owner].to(torch.float32)


def sum_per_person(params: Sequence[nn.Parameter], owner: torch.Tensor, count: int) -> None:
    """Replace each parameter's per-row ``grad_sample`` (rows, ...) by per-person sums
    (count, ...); with nobody drawn, one all-zero person, so the step still adds its noise."""
    for p in params:
        if count == 0:
            p.grad_sample = torch.zeros((1, *p.shape), dtype=p.dtype, device=p.device)
            continue
        if p.grad_sample is None:
            raise PrivacyError(f"a trainable parameter of shape {tuple(p.shape)} got no "
                               "per-sample gradient; it is not used by the model's forward")
        rows = p.grad_sample
        p.grad_sample = torch.zeros((count, *rows.shape[1:]), dtype=rows.dtype,
                                    device=rows.device).index_add_(0, owner.to(rows.device),
                                                                   rows)


def person_norms(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The L2 norm of each person's whole gradient, before clipping."""
    flat = [p.grad_sample.reshape(len(p.grad_sample), -1).norm(2, dim=1) for p in params]
    return torch.stack(flat, dim=1).norm(2, dim=1)


def person_sampler(count: int, sample_rate: float, generator: torch.Generator | None = None):
    """Opacus' Poisson sampler over ``count`` persons: int(1/q) steps per epoch, as Opacus'
    DPDataLoader runs over examples (common.privacy.ledger.poisson_schedule)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    return UniformWithReplacementSampler(num_samples=count, sample_rate=sample_rate,
                                         generator=generator)


def rows_of(data: TensorDataset, rows: np.ndarray) -> list[torch.Tensor]:
    index = torch.as_tensor(rows, dtype=torch.long)
    return [t[index] for t in data.tensors]


def epoch_batches(persons: Persons, sample_rate: float, max_rows: int, rng: np.random.Generator,
                  generator: torch.Generator | None = None):
    """One epoch of (rows, owner, number of persons drawn) per step."""
    for picked in person_sampler(len(persons), sample_rate, generator):
        rows, owner = step_rows(persons, picked, max_rows, rng)
        yield rows, owner, len(picked)


def train_dp_persons(model: nn.Module, data: TensorDataset, persons: Persons,
                     settings: TrainSettings, dp: DPSettings, max_rows: int,
                     history: list[tuple[float, float, int]]) -> tuple[TrainStats, list]:
    """One round of per-person DP-SGD (module docstring); ``persons`` indexes ``data``'s rows.
    Returns the stats (``sample_rate`` is the persons' q) and the accountant's history."""
    from opacus.accountants import RDPAccountant
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if dp.clipping != "hooks":
        raise PrivacyError(f"per-person DP needs per-sample gradients to sum per person; "
                           f"clipping = {dp.clipping!r} computes only their norms: use hooks")
    validate_for_dp(model)
    seed = training_seed(settings)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    plan = settings.require_plan()
    q = plan.sample_rate
    private = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    adamw = make_optimizer(model, settings.learning_rate, settings.head_lr_scale)
    schedule = scheduled(adamw, settings.schedule)
    optimizer = DPOptimizer(adamw, noise_multiplier=dp.noise_multiplier,
                            max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=max(1, int(len(persons) * q)),
                            loss_reduction="mean")
    accountant = RDPAccountant()
    accountant.history = list(history)
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
    per_example = settings.loss_per_example()
    losses, clipped, seen, steps = [], [], 0, 0
    average = WeightAverage(model, settings.ema_decay)
    bar = RoundProgress(settings.local_epochs * int(1 / q), settings.desc)
    try:
        for _ in range(settings.local_epochs):
            for rows, owner, drawn in bar.over(epoch_batches(persons, q, max_rows, rng)):
                owner_t = torch.as_tensor(owner)
                if drawn:
                    *inputs, labels = rows_of(data, rows)
                    logits = model_logits(private, inputs)
                    per_row = per_example(logits, labels.to(logits.device))
                    (per_row * row_weights(owner_t, drawn).to(per_row.device)).sum().backward()
                    losses.append(per_row.mean().item())
                sum_per_person(optimizer.params, owner_t, drawn)
                if drawn:
                    norms = person_norms(optimizer.params)
                    clipped.append((norms > dp.max_grad_norm).float().mean().item())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                average.update()
                seen += len(rows)
                steps += 1
    finally:
        bar.close()
        private._close()  # remove Opacus' hooks: the plain model is evaluated and exported
    average.apply()  # post-processing of the released iterates: no ε
    stats = TrainStats(loss=mean_or_nan(losses), steps=steps, examples_seen=seen,
                       sample_rate=q, clipped_fraction=mean_or_nan(clipped))
    return stats, list(accountant.history)
