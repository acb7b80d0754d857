"""Local training and evaluation at a partner: DP-SGD with Opacus, or plain AdamW as a baseline.

Phases of a DP round: encode -> validate the model -> wrap with Opacus (Poisson sampling,
per-sample clipping, Gaussian noise; the accountant restored from the ledger) -> train -> unwrap.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerBase

from common.data import TextDataset
from common.errors import PrivacyError
from common.metrics import accuracy, macro_f1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float
    batch_size: int
    local_epochs: int
    max_length: int
    seed: int | None  # None = fresh OS entropy: DP noise and sampling nobody else can replay


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class TrainStats:
    loss: float
    steps: int
    examples_seen: int
    sample_rate: float  # 0 without DP
    clipped_fraction: float  # share of per-sample gradients clipped (nan without DP)


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    macro_f1: float
    num_examples: int
    predictions: tuple[int, ...]


def encode(tokenizer: PreTrainedTokenizerBase, data: TextDataset, max_length: int) -> TensorDataset:
    enc = tokenizer(list(data.texts), truncation=True, max_length=max_length,
                    padding="max_length", return_tensors="pt")
    return TensorDataset(enc["input_ids"], enc["attention_mask"],
                         torch.tensor(data.labels, dtype=torch.long))


def _forward(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits for a batch trimmed to its longest text, with explicit contiguous position and
    token-type ids: BERT's broadcast default ``position_ids`` breaks Opacus' per-sample hooks."""
    length = max(1, int(mask.sum(dim=1).max())) if len(mask) else 1
    input_ids, mask = input_ids[:, :length], mask[:, :length]
    positions = torch.arange(length).unsqueeze(0).repeat(len(input_ids), 1)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                 token_type_ids=torch.zeros_like(input_ids)).logits


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def validate_for_dp(model: nn.Module) -> None:
    """Collect every reason Opacus cannot compute per-sample gradients, then fail once, naming
    each offending module."""
    if not model.training:
        raise PrivacyError("the model is in eval mode; call model.train() before DP training")
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
    validate_for_dp(model)
    torch.manual_seed(_seed(settings))
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(history)
    loader = DataLoader(data, batch_size=settings.batch_size)
    private, optimizer, private_loader = engine.make_private(
        module=model, optimizer=_optimizer(model, settings.learning_rate), data_loader=loader,
        noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True, grad_sample_mode="hooks")
    loss_fn = nn.CrossEntropyLoss()
    losses, clipped, seen, steps = [], [], 0, 0
    try:
        for _ in range(settings.local_epochs):
            for input_ids, mask, labels in private_loader:
                logits = _forward(private, input_ids, mask)
                loss = loss_fn(logits, labels) if len(labels) else logits.sum() * 0.0
                loss.backward()
                if len(labels):
                    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1)
                                         for g in optimizer.grad_samples], dim=1).norm(2, dim=1)
                    clipped.append((norms > dp.max_grad_norm).float().mean().item())
                    losses.append(loss.item())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seen += len(labels)
                steps += 1
    finally:
        private._close()  # remove Opacus hooks so the plain model can be evaluated and exported
    sample_rate = 1.0 / len(loader)
    stats = TrainStats(loss=_mean(losses), steps=steps, examples_seen=seen,
                       sample_rate=sample_rate, clipped_fraction=_mean(clipped))
    return stats, list(engine.accountant.history)


def train_plain(model: nn.Module, data: TensorDataset, settings: TrainSettings) -> TrainStats:
    """The non-private baseline: shuffled mini-batches, no clipping, no noise."""
    generator = torch.Generator().manual_seed(_seed(settings))
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=generator)
    optimizer = _optimizer(model, settings.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    losses, seen, steps = [], 0, 0
    model.train()
    for _ in range(settings.local_epochs):
        for input_ids, mask, labels in loader:
            loss = loss_fn(_forward(model, input_ids, mask), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seen += len(labels)
            steps += 1
    return TrainStats(loss=_mean(losses), steps=steps, examples_seen=seen, sample_rate=0.0,
                      clipped_fraction=math.nan)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 64) -> EvalStats:
    was_training = model.training
    model.eval()
    losses, preds, labels_all = [], [], []
    try:
        for input_ids, mask, labels in DataLoader(data, batch_size=batch_size):
            logits = _forward(model, input_ids, mask)
            losses.append(nn.functional.cross_entropy(logits, labels, reduction="sum").item())
            preds.append(logits.argmax(dim=-1).numpy())
            labels_all.append(labels.numpy())
    finally:
        model.train(was_training)
    y_pred, y_true = np.concatenate(preds), np.concatenate(labels_all)
    return EvalStats(loss=sum(losses) / len(y_true), accuracy=accuracy(y_true, y_pred),
                     macro_f1=macro_f1(y_true, y_pred), num_examples=len(y_true),
                     predictions=tuple(int(p) for p in y_pred))


def _seed(settings: TrainSettings) -> int:
    """The seed of Poisson sampling and DP noise: given (reproducible simulation) or drawn from
    the OS. A seed the coordinator knows would let it replay and subtract the noise."""
    if settings.seed is not None:
        return settings.seed
    return int.from_bytes(os.urandom(8), "little") >> 1


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
