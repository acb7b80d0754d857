"""The coordinator's own held-out set (run config ``server-eval-data``): a labelled file it holds,
on which it scores the shared model each round, beside the partners' evaluations.

Read once at the start of the run, so a missing or malformed file stops the run before round 1
with the file and row named (the loaders' DataError), not after hours of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from common.config import RunConfig
from common.model.device import resolve_device
from common.errors import ConfigError
from common.model.factory import build_model, load_tokenizer, load_trainable_state
from common.tasks import LabelledData, get_task


def read_held_out(config: RunConfig, labels: tuple[str, ...]) -> tuple[Path, LabelledData]:
    """The file of ``server-eval-data``, read by the run's task with the run's columns and label
    set."""
    path = Path(config.server_eval_data).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"server-eval-data = {config.server_eval_data!r}: no such file at "
                          "the coordinator; give a labelled file's path or leave it empty")
    return path, get_task(config.task).read(path, config, labels)


@dataclass
class HeldOutSet:
    config: RunConfig
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    data: LabelledData
    path: Path

    @classmethod
    def load(cls, config: RunConfig, labels: tuple[str, ...]) -> HeldOutSet | None:
        """None when ``server-eval-data`` is empty; the data, model and tokenizer otherwise."""
        if not config.server_eval_data:
            return None
        path, data = read_held_out(config, labels)
        model = build_model(config, labels).to(resolve_device("auto"))  # a GPU if it has one
        return cls(config, model, load_tokenizer(config), data, path)

    def evaluate(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The same metrics a partner reports, for the shared weights ``arrays``."""
        load_trainable_state(self.model, arrays)
        return get_task(self.config.task).evaluate(self.model, self.tokenizer, self.data,
                                                   self.config.max_length)
