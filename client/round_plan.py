"""What a partner's round trains and with which schedule: the DP plan (common.privacy.planner) from
public quantities only (n, ε, δ, rounds, d), and, for pooled-head and head, the head on cached
features.

No flwr here; client/partner.py calls these before any ε is spent.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from torch import nn
from torch.utils.data import TensorDataset

from common.config import AUTO, RunConfig
from common.errors import UnlearnablePlanError
from common.training.features import FEATURE_BATCH, PooledHeadClassifier, cached_pooled_features
from common.training.head_features import cached_head_inputs, trainable_head
from common.model.factory import trainable_size
from common.training.top_layers import cached_top_inputs
from common.privacy.planner import (NON_PRIVATE_BATCH, DPPlan, default_learning_rate, plan_dp,
                             update_clip_note)
from common.training.schedule import LRSchedule
from common.training.loop import clipping_for

logger = logging.getLogger(__name__)


def round_plan(config: RunConfig, who: str, model: nn.Module, examples: int,
               unit: str = "example", check: bool | None = None) -> DPPlan | None:
    """The DP plan of this partner's round, logged in one line; None without DP. Raises
    UnlearnablePlanError (nothing spent) when it predicts no learning and ``check`` is on
    (None: the run's dp-plan-check; a partner passes its policy's, PartnerSettings.plan_check).
    ``unit`` = person: ``examples`` counts persons (per-person DP samples persons)."""
    if not config.dp:
        return None
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    labels = _num_labels(model)
    check = config.dp_plan_check if check is None else check
    try:
        plan = plan_dp(examples, config.epsilon, config.delta, config.num_rounds,
                       config.local_epochs, trainable_size(model), config.max_grad_norm,
                       batch_size=None if config.batch_size == AUTO else int(config.batch_size),
                       learning_rate=None if config.learning_rate == AUTO
                       else float(config.learning_rate),
                       finetune=config.finetune, noise_multiplier=config.noise_multiplier,
                       check=check,
                       pooled_head_dims=hidden * labels + labels if hidden and labels else None,
                       unit=unit)
    except UnlearnablePlanError as exc:
        if config.dp_plan_check:
            raise
        raise UnlearnablePlanError(str(exc).replace(  # the run's dp-plan-check is not its say
            "set dp-plan-check = false to run it anyway",
            f"{who} refuses such a round whatever the run's dp-plan-check says, unless its "
            "policy sets allow-unlearnable-rounds")) from exc
    logger.info("%s DP plan: %s", who, plan.describe())
    advice = update_clip_note(plan, config.update_clip_norm)
    if advice:
        logger.info("%s: %s", who, advice)  # a default (NER's head) may be better cut
    return plan


def batch_and_learning_rate(config: RunConfig, plan: DPPlan | None) -> tuple[int, float]:
    """The plan's batch and learning rate, or, without DP, the configured or default ones."""
    if plan is not None:
        return plan.batch_size, plan.learning_rate
    batch = NON_PRIVATE_BATCH if config.batch_size == AUTO else int(config.batch_size)
    lr = (default_learning_rate(config.finetune, False) if config.learning_rate == AUTO
          else float(config.learning_rate))
    return batch, lr


def lr_schedule(config: RunConfig, plan: DPPlan | None, server_round: int, examples: int,
                batch: int) -> LRSchedule:
    """This round's part of the run's lr schedule (common.training.schedule): T = the plan's steps
    per round under DP, the data loader's (⌈n / batch⌉ per epoch) without."""
    steps = (plan.steps_per_round if plan is not None
             else config.local_epochs * math.ceil(examples / batch))
    return LRSchedule.for_round(config.lr_schedule, server_round, config.num_rounds, steps,
                                config.lr_warmup)


def memory_batch(config: RunConfig, batch: int, per_person: bool = False) -> tuple[int, bool]:
    """(batch, per-sample gradients?) whose memory the encoder must hold: pooled-head runs the
    encoder only in no-grad feature passes; head's encoder never needs gradients (its inputs
    are cached, or, past common.training.head_features.MAX_CACHED_BYTES, computed per step); the
    head's DP step is small. A DP step with per-sample hooks runs its batch in pieces of at most
    ``batch-tokens`` padded tokens (common.training.batching), so it holds at most that many texts
    of ``max-length`` at once. A per-person step (common.training.person_dp; ``batch`` = expected
    persons) runs whole: up to ``max-rows-per-person`` rows of each sampled person. Ghost
    clipping holds no per-sample gradient (their norms come from activations and output
    gradients: 1.1 × a non-private step's memory for full fine-tuning, BENCHMARKS.md P1)."""
    if config.finetune == "pooled-head":
        return FEATURE_BATCH, False
    per_sample = config.dp and config.finetune != "head"
    if per_person and per_sample:
        return batch * config.max_rows_per_person, True
    hooks = clipping_for(config.clipping, config.finetune) == "hooks"
    if per_sample and hooks and config.batch_tokens > 0:
        return min(batch, max(1, config.batch_tokens // config.max_length)), True
    return batch, per_sample and hooks


def trainable_view(model: nn.Module, data: TensorDataset,
                   cache: Path | None = None) -> tuple[nn.Module, TensorDataset]:
    """What DP-SGD runs on: the model and encoded texts; for pooled-head, its head and the
    frozen features; for head, the classifier and its inputs; for pooled-lora with adapters in
    the top layers only, those layers and their inputs. Each is computed once per text and
    kept in ``cache`` (the partner's own disk)."""
    started = time.perf_counter()
    if isinstance(model, PooledHeadClassifier):
        if model.adapters:
            top = cached_top_inputs(model, data, cache)
            if top is None:
                return model, data
            trained, inputs = top
        else:
            trained, inputs = model.head, cached_pooled_features(model, data, cache)
    else:
        head = trainable_head(model)
        cached = cached_head_inputs(model, head, data, cache) if head is not None else None
        if cached is None:
            return model, data
        trained, inputs = head, cached
    logger.info("features of %d texts in %.1f s", len(inputs), time.perf_counter() - started)
    return trained, inputs


def _num_labels(model: nn.Module) -> int | None:
    if isinstance(model, PooledHeadClassifier):
        return model.head.out_features
    return getattr(getattr(model, "config", None), "num_labels", None)
