"""The learning rate over a whole run: constant, or a warm-up and then a linear or cosine decay
towards 0 over the run's planned steps.

Under DP-SGD with AdamW, each step moves every weight by about the learning rate in the noise's
random direction. A decay lets the later rounds settle instead of jittering at the level the
first rounds needed. Round r of a partner runs the run's steps (r − 1)·T … r·T − 1, so the
schedule goes on across rounds, restarts and resumes. It is computed from public quantities (the
round, the planned rounds, the steps per round) and costs no ε: σ, q and the steps are unchanged.
Pure maths; the optimizers take it through torch's LambdaLR (common.training.loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(kind: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate's multiplier at ``step`` (0-based) of a run of ``total_steps``: a linear
    warm-up over the first ``warmup_steps``, then 1 (constant), or a decay from 1 that would
    reach 0 just after the last step (linear, cosine)."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {kind!r} is not one of {LR_SCHEDULES}")
    if step < 0 or total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(f"lr schedule: step {step}, total {total_steps} and warm-up "
                         f"{warmup_steps} do not make a schedule")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """One partner-round's part of the run's schedule: its local step s is the run's step
    ``first_step + s``."""

    kind: str = "constant"
    first_step: int = 0
    total_steps: int = 1
    warmup_steps: int = 0

    @classmethod
    def for_round(cls, kind: str, server_round: int, rounds: int, steps_per_round: int,
                  warmup: float = 0.0) -> LRSchedule:
        """Round ``server_round`` (1-based) of ``rounds`` planned, ``steps_per_round`` each;
        ``warmup`` = the share of the run's steps spent warming up."""
        total = max(1, rounds * steps_per_round)
        return cls(kind, (min(server_round, rounds) - 1) * steps_per_round, total,
                   min(total - 1, int(warmup * total)))

    @property
    def constant(self) -> bool:
        return self.kind == "constant" and self.warmup_steps == 0

    def factor(self, local_step: int) -> float:
        return lr_factor(self.kind, min(self.first_step + local_step, self.total_steps - 1),
                         self.total_steps, self.warmup_steps)
