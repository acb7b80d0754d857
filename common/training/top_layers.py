"""pooled-lora with adapters in the top encoder layers only (``lora-layers`` = k): everything
below the first adapted layer is frozen, so what that layer receives is computed once per text
(an eval-mode pass: no dropout) and kept on the partner's disk, and DP-SGD runs the top k
layers, the mean pooling and the head on it.

The same Opacus mechanism and accounting as running the whole model: the trainable weights,
their per-example gradients and the sampled examples are the same, and the frozen layers run
in eval mode in both paths (``frozen_below``), so the logits are the model's own. Only the
frozen layers' forward pass is not repeated in every step of every round.

Works for BERT-family encoders (transformers' ``encoder.layer`` list and its bidirectional
attention mask); for any other layout the whole encoder runs in every step, and the log says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset
from transformers.masking_utils import create_bidirectional_mask

from common.training.encoder_layout import encoder_layers, first_adapted_layer
from common.training.features import PooledHeadClassifier, mean_pool
from common.training.head_features import cached_head_inputs

logger = logging.getLogger(__name__)


class TopLayers(nn.Module):
    """The top layers of a pooled-lora model (the same modules: training them trains the
    model), mean pooling and the head, on the cached input of the first adapted layer;
    forward(hidden, mask) returns logits."""

    def __init__(self, model: PooledHeadClassifier) -> None:
        super().__init__()
        first = first_adapted_layer(model.encoder)
        if not first:
            raise ValueError("no frozen layer below the adapters: nothing to cache")
        base, layers = encoder_layers(model.encoder)
        self.first = first
        self.layers = nn.ModuleList(layers[first:])
        self.head = model.head
        self.config = base.config

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not len(hidden):  # an empty Poisson batch: one padding row runs so every per-sample
            # hook fires, and none of its output is kept (its gradient is 0: DP-SGD adds noise)
            empty = self.forward(hidden.new_zeros(1, 1, hidden.shape[-1]), mask.new_ones(1, 1))
            return empty[:0]
        length = max(1, int(mask.sum(dim=1).max()))  # the batch's longest text
        hidden, mask = hidden[:, :length], mask[:, :length]
        attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden,
                                              attention_mask=mask)
        for layer in self.layers:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.head(mean_pool(hidden, mask))


def can_cache(model: nn.Module) -> bool:
    """A pooled-lora model whose adapters sit above at least one frozen layer."""
    return (isinstance(model, PooledHeadClassifier) and model.adapters
            and first_adapted_layer(model.encoder) > 0)


def cached_top_inputs(model: PooledHeadClassifier, data: TensorDataset, cache: Path | None
                      ) -> tuple[TopLayers, TensorDataset] | None:
    """(the top layers, (their cached inputs, masks, labels)), kept in ``cache`` (the partner's
    own disk, 0600) and keyed by the frozen weights and the encoded texts; None when the model
    has no frozen layer below its adapters, or when the inputs would not fit the cache (logged:
    the whole encoder then runs in every step)."""
    if (isinstance(model, PooledHeadClassifier) and model.adapters
            and encoder_layers(model.encoder) is None):
        logger.info("%s has no BERT-style encoder.layer list: the layers below the adapters "
                    "run in every step", type(model.encoder).__name__)
    if not can_cache(model):
        return None  # no adapters, an unknown layout, or adapters in every layer
    top = TopLayers(model)
    kept = cached_head_inputs(model, top.layers[0], data, cache, kind=f"layer{top.first}-inputs")
    if kept is None:
        return None
    hidden = kept.tensors[0]
    logger.info("layers below %d frozen: DP-SGD runs the top %d on their kept output for %d "
                "texts", top.first, len(top.layers), len(hidden))
    return top, TensorDataset(hidden, data.tensors[1][:, :hidden.shape[1]], data.tensors[2])
