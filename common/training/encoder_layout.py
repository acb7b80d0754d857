"""Where a transformers encoder keeps its layers, and which of them are frozen below LoRA
adapters placed in the top layers only (lora-layers). No torch maths: common.training.features puts
the frozen ones in eval mode, common.training.top_layers caches their output."""

from __future__ import annotations

from torch import nn


def encoder_layers(encoder: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """(the plain transformers model under any PEFT wrapper, its list of encoder layers), or
    None for a layout other than BERT's ``embeddings`` + ``encoder.layer``."""
    base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(base, "embeddings"):
        return None
    return base, layers


def first_adapted_layer(encoder: nn.Module) -> int:
    """Index of the lowest encoder layer holding a LoRA weight: 0 when every layer (or an
    unknown layout) has adapters, so nothing below it can be cached."""
    found = encoder_layers(encoder)
    if found is None:
        return 0
    for index, layer in enumerate(found[1]):
        if any("lora_" in name for name, _ in layer.named_parameters()):
            return index
    return 0


def frozen_below(encoder: nn.Module) -> list[nn.Module]:
    """The embeddings and the layers below the first adapted one: frozen, so run in eval mode
    (no dropout) in training, as the cache computes them. Empty when every layer adapts."""
    first = first_adapted_layer(encoder)
    if not first:
        return []
    base, layers = encoder_layers(encoder)
    return [base.embeddings, *layers[:first]]
