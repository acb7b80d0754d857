"""Local training at a partner: DP-SGD with Opacus, or plain AdamW as a baseline (evaluation:
common.evaluation.scoring).

Phases of a DP round: encode -> validate the model -> wrap with Opacus (Poisson sampling,
per-sample clipping, Gaussian noise; the accountant restored from the ledger) -> train -> unwrap.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerBase

from common.training.averaging import WeightAverage
from common.training.batching import TOKEN_BUDGET, micro_batches
from common.data.text import TextDataset
from common.errors import PrivacyError
from common.privacy.planner import DPPlan
from common.training.progress import RoundProgress
from common.training.schedule import LRSchedule

logger = logging.getLogger(__name__)
PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> shape (batch,)


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float
    batch_size: int
    local_epochs: int
    max_length: int
    seed: int | None  # None = fresh OS entropy: DP noise and sampling nobody else can replay
    desc: str = ""  # the progress bar's label, e.g. "partner-0 round 3"
    head_lr_scale: float = 1.0  # with LoRA adapters: the head's lr = learning_rate × this
    schedule: LRSchedule = LRSchedule()  # the lr over the run (common.training.schedule): constant
    plan: DPPlan | None = None  # DP-SGD's q, steps and σ (common.privacy.planner); None without DP
    # padded tokens per encoder pass (common.training.batching); 0 = each batch in one pass
    token_budget: int = TOKEN_BUDGET
    # the round's weights = the EMA of its iterates (common.training.averaging)
    ema_decay: float = 0.0
    # the task's loss per example, whose gradient DP-SGD clips; None = by the labels' shape
    per_example_loss: PerExampleLoss | None = None

    def loss_per_example(self) -> PerExampleLoss:
        return self.per_example_loss or _per_sample_loss

    def require_plan(self) -> DPPlan:
        """The DP plan this round runs; a DP round without one is refused, never improvised."""
        if self.plan is None:
            raise PrivacyError("a DP round needs a plan from common.privacy.planner.plan_dp (q, "
                               "steps, sigma); none was given, so nothing is trained")
        return self.plan


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float
    clipping: str = "hooks"  # per-sample clipping: hooks (Opacus per-sample grads) or ghost


@dataclass(frozen=True)
class TrainStats:
    loss: float
    steps: int
    examples_seen: int
    sample_rate: float  # 0 without DP
    clipped_fraction: float  # share of per-sample gradients clipped (nan without DP)


def encode(tokenizer: PreTrainedTokenizerBase, data: TextDataset, max_length: int) -> TensorDataset:
    enc = tokenizer(list(data.texts), truncation=True, max_length=max_length,
                    padding="max_length", return_tensors="pt")
    return TensorDataset(enc["input_ids"], enc["attention_mask"],
                         torch.tensor(data.labels, dtype=torch.long))


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: batches are moved there, results come back to the CPU."""
    return next(model.parameters()).device


def _forward(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits for a batch trimmed to its longest text, with explicit contiguous position and
    token-type ids: BERT's broadcast default ``position_ids`` breaks Opacus' per-sample hooks."""
    if not len(input_ids):  # an empty Poisson batch: transformers cannot reshape 0 rows, so one
        # padding row runs and none of its output is kept (its gradient is 0: DP-SGD adds noise)
        logits = _forward(model, torch.zeros(1, 1, dtype=input_ids.dtype),
                          torch.ones(1, 1, dtype=mask.dtype))
        return logits[:0]
    length = max(1, int(mask.sum(dim=1).max()))
    device = device_of(model)
    input_ids, mask = input_ids[:, :length].to(device), mask[:, :length].to(device)
    positions = torch.arange(length, device=device).unsqueeze(0).repeat(len(input_ids), 1)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                 token_type_ids=torch.zeros_like(input_ids)).logits


def model_logits(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Logits of a training batch: (input_ids, mask) texts through ``_forward``; one tensor of
    precomputed features (finetune = pooled-head) through a head that returns logits; or
    cached hidden states and their mask (common.training.top_layers) through the top layers."""
    if len(inputs) == 1 or inputs[0].is_floating_point():
        return model(*(t.to(device_of(model)) for t in inputs))
    return _forward(model, *inputs)


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per text, shape (batch,)."""
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sentence, shape (batch,): the mean over its labelled words (IGNORE =
    -100 skipped), so a sentence's per-sample gradient depends on that sentence alone, as
    DP-SGD's clipping needs."""
    labels = labels[:, : logits.shape[1]]  # _forward trims the batch to its longest text
    per_token = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                            reduction="none")
    words = (labels != -100).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / words


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, mean over the batch of ``_per_sample_loss``."""
    return _per_sample_loss(logits, labels).mean()


def _per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One loss per example, by the labels' shape: a label per text (batch,) or a tag per word
    (batch, length). The default of TrainSettings; a task passes its own."""
    return (sequence_loss if labels.dim() == 1 else token_loss)(logits, labels)


class _Criterion(nn.Module):
    """A per-example loss as a criterion Opacus' ghost clipping can wrap: it sets
    ``reduction`` to "none" to get one loss per example, then runs the two backward passes
    itself; otherwise the batch mean."""

    reduction = "mean"

    def __init__(self, per_example: PerExampleLoss) -> None:
        super().__init__()
        self.per_example = per_example

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_sample = self.per_example(logits, labels)
        return per_sample if self.reduction == "none" else per_sample.mean()


def make_optimizer(model: nn.Module, lr: float, head_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters. With LoRA adapters in the model and ``head_scale``
    ≠ 1, the other trainable parameters (the head) get lr × ``head_scale``: a head that starts
    from zero or random weights can learn faster than the adapters that refine the encoder."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for n, p in named if "lora_" in n]
    if head_scale == 1.0 or not adapters:
        return torch.optim.AdamW([p for _, p in named], lr=lr)
    head = [p for n, p in named if "lora_" not in n]
    return torch.optim.AdamW([{"params": adapters, "lr": lr},
                              {"params": head, "lr": lr * head_scale}], lr=lr)


def scheduled(optimizer: torch.optim.Optimizer, schedule: LRSchedule
              ) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's lr schedule on ``optimizer`` (the one Opacus wraps: they share param groups);
    call ``.step()`` after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


CLIPPINGS = ("hooks", "ghost")
# clipping = "auto": the faster per fine-tuning mode, measured by benchmarks/train.py on
# the bundled MiniLM, 2-core CPU (BENCHMARKS.md, P1): LoRA hooks 0.93 × non-private vs ghost 0.62
# (ghost's 2nd backward pass costs more than LoRA's tiny per-sample grads); full ghost 0.50 and
# 1.1 × memory vs hooks 0.23 and 3.3 × (per-sample grads of every weight). head: hooks, untimed.
AUTO_CLIPPING = {"lora": "hooks", "pooled-lora": "hooks", "full": "ghost", "head": "hooks",
                 "bias": "hooks"}  # bias: per-sample grads of d ≈ 30 k numbers, one backward


def clipping_for(setting: str, finetune: str) -> str:
    """The per-sample clipping to run: ``hooks``/``ghost`` as asked, or the measured faster one
    for ``auto``."""
    choice = AUTO_CLIPPING.get(finetune, "hooks") if setting == "auto" else setting
    if choice not in CLIPPINGS:
        raise PrivacyError(f"clipping {setting!r} is not valid; pick auto, hooks or ghost")
    return choice


def validate_for_dp(model: nn.Module) -> None:
    """Collect every reason Opacus cannot compute per-sample gradients, then fail once, naming
    each offending module."""
    if not model.training:
        raise PrivacyError("the model is in eval mode; call model.train() before DP training")
    from opacus.utils.module_utils import trainable_modules  # opacus: imported when used
    from opacus.validators import ModuleValidator

    problems = []  # Opacus' own rules (ModuleValidator.validate), with the module's name
    for name, module in trainable_modules(model):
        rule = ModuleValidator.VALIDATORS.get(type(module))
        for error in rule(module) if rule else []:
            problems.append(f"{name} ({type(module).__name__}): {str(error).split('. ')[0]}")
    if problems:
        raise PrivacyError("the model cannot be trained with per-sample clipping: "
                           + "; ".join(problems) + ". Replace these modules (Opacus' "
                           "ModuleValidator.fix swaps BatchNorm for GroupNorm)")


def train_dp(model: nn.Module, data: TensorDataset, settings: TrainSettings, dp: DPSettings,
             history: list[tuple[float, float, int]]) -> tuple[TrainStats, list]:
    """One round of DP-SGD. Returns the stats and the accountant history after the round."""
    from opacus import PrivacyEngine

    validate_for_dp(model)
    torch.manual_seed(training_seed(settings))
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(history)
    loader = DataLoader(data, batch_size=settings.batch_size)
    if dp.clipping not in CLIPPINGS:
        raise PrivacyError(f"clipping {dp.clipping!r} is not valid; pick hooks or ghost")
    ghost = dp.clipping == "ghost"  # norms without per-sample grads, then a 2nd backward pass
    criterion = _Criterion(settings.loss_per_example())
    adamw = make_optimizer(model, settings.learning_rate, settings.head_lr_scale)
    schedule = scheduled(adamw, settings.schedule)
    wrapped = engine.make_private(
        module=model, optimizer=adamw, data_loader=loader,
        criterion=criterion, noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm, poisson_sampling=True, grad_sample_mode=dp.clipping)
    private, optimizer, criterion, private_loader = (
        wrapped if ghost else (wrapped[0], wrapped[1], criterion, wrapped[2]))
    losses, clipped, seen, steps = [], [], 0, 0
    average = WeightAverage(model, settings.ema_decay)
    bar = RoundProgress(settings.local_epochs * len(private_loader), settings.desc)
    try:
        for _ in range(settings.local_epochs):
            for *inputs, labels in bar.over(private_loader):
                loss_sum, over = _dp_batch(private, optimizer, criterion, inputs, labels, dp,
                                           settings.token_budget if not ghost else 0)
                if len(labels):
                    clipped.append(over / len(labels))
                    losses.append(loss_sum / len(labels))
                schedule.step()
                average.update()
                seen += len(labels)
                steps += 1
    finally:
        bar.close()
        private._close()  # remove Opacus hooks so the plain model can be evaluated and exported
    average.apply()  # post-processing of the released iterates: no ε
    sample_rate = 1.0 / len(loader)
    stats = TrainStats(loss=mean_or_nan(losses), steps=steps, examples_seen=seen,
                       sample_rate=sample_rate, clipped_fraction=mean_or_nan(clipped))
    return stats, list(engine.accountant.history)


def _pieces(inputs: list[torch.Tensor], labels: torch.Tensor, token_budget: int
            ) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """A batch's (inputs, labels) as length-sorted pieces of at most ``token_budget`` padded
    tokens (common.training.batching); cached features (one input tensor) stay whole."""
    texts = len(inputs) == 2  # (input_ids, mask)
    pieces = micro_batches(inputs[1], token_budget) if texts and token_budget else []
    if len(pieces) <= 1:
        return [(inputs, labels)]
    return [([t[rows] for t in inputs], labels[rows]) for rows in pieces]


def _dp_batch(private: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              inputs: list[torch.Tensor], labels: torch.Tensor, dp: DPSettings,
              token_budget: int) -> tuple[float, int]:
    """One DP-SGD step on one Poisson batch, run as length-sorted pieces (common.training.batching):
    every piece's per-sample gradients are clipped and summed, and only the last piece's
    ``optimizer.step()`` adds the noise and steps (Opacus' skip-step, as its BatchMemoryManager
    does), so the step, its noise and the accountant's count are those of the whole batch.
    Returns the batch's summed loss and how many of its per-sample gradients were clipped."""
    runs = _pieces(inputs, labels, token_budget)
    loss_sum, over = 0.0, 0
    for index, (part, y) in enumerate(runs):
        logits = model_logits(private, part)
        y = y.to(logits.device)
        loss = criterion(logits, y) if len(y) else logits.sum() * 0.0
        loss.backward()
        if len(y):
            norms = (private.per_sample_gradient_norms if dp.clipping == "ghost" else torch.stack(
                [g.reshape(len(g), -1).norm(2, dim=-1) for g in optimizer.grad_samples],
                dim=1).norm(2, dim=1))
            over += int((norms > dp.max_grad_norm).sum())
            loss_sum += loss.item() * len(y)
        if index < len(runs) - 1:
            optimizer.signal_skip_step(do_skip=True)  # clip and keep the sum; no noise, no step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss_sum, over


def train_plain(model: nn.Module, data: TensorDataset, settings: TrainSettings) -> TrainStats:
    """The non-private baseline: shuffled mini-batches, no clipping, no noise; each batch's
    gradient accumulated over its length-sorted pieces (``settings.token_budget``)."""
    generator = torch.Generator().manual_seed(training_seed(settings))
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=generator)
    optimizer = make_optimizer(model, settings.learning_rate, settings.head_lr_scale)
    schedule = scheduled(optimizer, settings.schedule)
    per_example = settings.loss_per_example()
    losses, seen, steps = [], 0, 0
    average = WeightAverage(model, settings.ema_decay)
    model.train()
    bar = RoundProgress(settings.local_epochs * len(loader), settings.desc)
    for _ in range(settings.local_epochs):
        for *inputs, labels in bar.over(loader):
            loss_sum = 0.0
            for part, y in _pieces(inputs, labels, settings.token_budget):  # the batch mean,
                logits = model_logits(model, part)  # accumulated piece by piece
                loss = per_example(logits, y.to(logits.device)).sum() / len(labels)
                loss.backward()
                loss_sum += loss.item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            average.update()
            losses.append(loss_sum)
            seen += len(labels)
            steps += 1
    bar.close()
    average.apply()
    return TrainStats(loss=mean_or_nan(losses), steps=steps, examples_seen=seen, sample_rate=0.0,
                      clipped_fraction=math.nan)


def training_seed(settings: TrainSettings) -> int:
    """The seed of Poisson sampling and DP noise: given (reproducible simulation) or drawn from
    the OS. A seed the coordinator knows would let it replay and subtract the noise."""
    if settings.seed is not None:
        return settings.seed
    return int.from_bytes(os.urandom(8), "little") >> 1


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
