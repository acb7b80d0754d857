"""An exponential moving average (EMA) of the trainable weights over a round's optimizer steps.

Under DP-SGD every step moves each weight by about the learning rate in the noise's random
direction, so the last iterate sits one noisy step away from where the run was heading. An
average of the recent iterates cancels part of that jitter (De et al. 2022, "Unlocking
high-accuracy differentially private image classification through scale", use it at every scale).
It is post-processing of the iterates DP-SGD already releases: σ, q, the steps and the
accountant are unchanged, so ε is too (tested in tests/test_averaging.py).

The average starts at the first step's weights (as ``torch.optim.swa_utils.AveragedModel``
does), then ``avg ← decay·avg + (1 − decay)·weights`` after every step; at the end of the round
the weights become the average. Only trainable tensors are averaged: AveragedModel would copy
the whole model, frozen encoder included, which a LoRA or head round never changes.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """The EMA of ``model``'s trainable parameters; ``decay`` 0 = the last iterate (off)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average: list[torch.Tensor] | None = None
        self.updates = 0

    def update(self) -> None:
        """Fold the weights after one optimizer step into the average."""
        if self.decay == 0.0:
            return
        with torch.no_grad():
            if self.average is None:
                self.average = [p.detach().clone() for p in self.params]
            else:
                for average, param in zip(self.average, self.params):
                    average.lerp_(param.detach(), 1.0 - self.decay)
        self.updates += 1

    def apply(self) -> None:
        """Write the average into the model's weights (nothing to do with no steps, or off)."""
        if self.average is None:
            return
        with torch.no_grad():
            for param, value in zip(self.params, self.average):
                param.copy_(value)
