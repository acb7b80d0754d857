"""finetune = "head" on cached inputs: when the model's only trainable module is its classifier,
everything below it is frozen, so the classifier's input is computed once per example (an
eval-mode pass: no dropout) and kept on the partner's disk, and DP-SGD runs over the classifier
alone on those inputs. The same Opacus mechanism and accounting as running the whole model: the
classifier's weights, their per-example gradients and the sampled examples are the same; only
the frozen forward pass is not repeated in every step of every round.

Works for any transformers classifier whose head is one module named ``classifier`` (BERT's
sequence and token classifiers take the pooled or per-token output; RoBERTa's head takes the
token outputs and reads the first). The input is captured by a forward pre-hook on the head, so
it is exactly what the head sees in evaluation and in the exported model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.errors import ModelError
from common.training.features import FEATURE_BATCH, cached_tensor, feature_key
from common.training.loop import model_logits

logger = logging.getLogger(__name__)

HEAD = "classifier"  # transformers' name of a *For{Sequence,Token}Classification model's head
MAX_CACHED_BYTES = 4 * 2**30  # above this the inputs are not kept: the encoder runs per step


def trainable_head(model: nn.Module) -> nn.Module | None:
    """The model's classifier when it holds every trainable parameter (finetune = head), else
    None (LoRA, full fine-tuning, or no such module)."""
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module):
        return None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    in_head = {f"{HEAD}.{name}" for name, p in head.named_parameters() if p.requires_grad}
    return head if trainable and trainable == in_head else None


def cached_head_inputs(model: nn.Module, head: nn.Module, data: TensorDataset,
                       cache: Path | None, kind: str = "head-inputs") -> TensorDataset | None:
    """(the head's inputs, labels), kept in ``cache`` (the partner's own disk, 0600) as
    ``kind-KEY.pt``, keyed by the frozen weights and the encoded texts; None when they would
    exceed ``MAX_CACHED_BYTES`` (logged: the encoder then runs in every step). ``head`` may be
    any frozen-below module: common.training.top_layers caches the first adapted layer's inputs."""
    first = head_inputs(model, head, data[:1])  # one row: the shape of the whole set's inputs
    longest = max(1, int(data.tensors[1].sum(dim=1).max()))
    shape = ((len(data), longest, *first.shape[2:]) if first.dim() >= 3  # per token, padded
             else (len(data), *first.shape[1:]))
    size = math.prod(shape) * 4  # float32
    if size > MAX_CACHED_BYTES:
        logger.info("the %s for %d texts would take %.1f GiB (over %.0f): the frozen "
                    "encoder runs in every step instead", kind, len(data), size / 2**30,
                    MAX_CACHED_BYTES / 2**30)
        return None
    inputs = cached_tensor(cache, kind, feature_key(model, data), shape,
                           lambda: head_inputs(model, head, data))
    return TensorDataset(inputs, data.tensors[2])


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Module, data: TensorDataset | tuple,
                batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """What ``head`` receives for each encoded (input_ids, mask, ...) row, in eval mode, in
    length-sorted batches; rows keep ``data``'s order, per-token inputs are zero-padded to the
    longest text (their labels there are ignored, as in a padded batch)."""
    input_ids, mask = (data.tensors if isinstance(data, TensorDataset) else data)[:2]
    lengths = mask.sum(dim=1)
    longest = max(1, int(lengths.max()))
    order = torch.argsort(lengths, stable=True)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0]) if args else None)
    was_training, out = model.training, None
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            seen.clear()
            model_logits(model, [input_ids[rows], mask[rows]])
            if not seen:
                raise ModelError(f"{type(model).__name__} did not pass a tensor to its "
                                 f"{HEAD!r} positionally, so its inputs cannot be cached; "
                                 'use finetune = "lora" or "full"')
            part = seen[0].float().cpu()
            if out is None:
                tail = (longest, *part.shape[2:]) if part.dim() >= 3 else part.shape[1:]
                out = torch.zeros(len(input_ids), *tail)
            out[rows, :part.shape[1]] = part  # per token: this batch's length; else all
    finally:
        hook.remove()
        model.train(was_training)
    return out
