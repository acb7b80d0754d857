"""The model a Message brings to a partner, built once: the base model with the shared weights
loaded, the partner's data and the tokenizer. A TRAIN Message's weights are first evaluated (the
aggregate of the previous round) and then trained from, in one process, on one build. No flwr here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from client.data import partner_data
from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import ModelError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_tokenizer, load_trainable_state
from common.sources import run_labels
from common.tasks import LabelledData, Task, get_task


@dataclass
class Prepared:
    task: Task
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    train: LabelledData
    test: LabelledData
    masked: dict[str, int] = field(default_factory=dict)  # de-identified spans per type
    corrected: dict[str, int] = field(default_factory=dict)  # reviewed corrections folded in


def prepare(config: RunConfig, partner: PartnerSettings, shared: Mapping[str, np.ndarray],
            fingerprint: str, device: torch.device) -> Prepared:
    """The partner's model with ``shared`` loaded, on ``device``; ModelError when its frozen
    weights do not hash to the coordinator's ``fingerprint``."""
    labels = run_labels(config, partner.has_own_data)
    data = partner_data(config, partner, labels)
    tokenizer = load_tokenizer(config, offline=not partner.allow_hub)
    model = shared_model(config, partner, labels, shared, fingerprint)
    return Prepared(get_task(config.task), model.to(device), tokenizer, data.train, data.test,
                    data.masked, data.corrected)


def shared_model(config: RunConfig, partner: PartnerSettings, labels: tuple[str, ...],
                 shared: Mapping[str, np.ndarray], fingerprint: str,
                 whose: str = "the coordinator's") -> nn.Module:
    """The base model with ``shared`` loaded; ModelError when its frozen weights do not hash to
    ``fingerprint`` (``whose``: the coordinator's, or a release's). Loaded from the partner's
    own disk unless its policy allows the hub (``allow-hub``)."""
    model = build_model(config, labels, offline=not partner.allow_hub)
    if fingerprint and frozen_fingerprint(model) != fingerprint:
        raise ModelError(f"{partner.name}: the frozen weights of base-model "
                         f"{config.base_model or '(bundled MiniLM)'} differ from {whose}; "
                         "install the same model version at every partner")
    load_trainable_state(model, shared)
    return model


@dataclass
class ReceivedModel:
    """One Message's weights (and the coordinator's fingerprint of the frozen base), built on
    first use and kept for the next: evaluation leaves the weights as they were, training
    changes them, so an evaluation must come first."""

    shared: Mapping[str, np.ndarray]
    fingerprint: str
    _built: Prepared | None = field(default=None, repr=False)

    def build(self, config: RunConfig, partner: PartnerSettings,
              device: torch.device) -> Prepared:
        if self._built is None:
            self._built = prepare(config, partner, self.shared, self.fingerprint, device)
        return self._built
