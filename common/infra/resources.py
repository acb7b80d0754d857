"""Will a round fit in this machine's (or its GPU's) memory? Checked before training, not found
out by the kernel's OOM killer or a CUDA out-of-memory error mid-round. The estimate is
deliberately on the high side (float32)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from common.errors import ResourceError

BYTES = 4  # float32


def available_memory(device: torch.device | None = None) -> int | None:
    """Free bytes on a CUDA ``device`` (the driver's count), else MemAvailable from
    /proc/meminfo; None where it cannot be read."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def training_memory(model: nn.Module, batch_size: int, max_length: int, dp: bool) -> int:
    """Bytes one DP-SGD (or plain) step needs: weights, optimizer, per-sample gradients and
    activations of the largest batch Poisson sampling will plausibly draw."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 768)
    layers = getattr(config, "num_hidden_layers", 12)
    heads = getattr(config, "num_attention_heads", 12)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = batch_size + 4 * math.sqrt(batch_size)  # Poisson: mean + 4 standard deviations
    weights = total * BYTES
    optimizer = trainable * BYTES * 4  # grad, Adam's two moments, DP's summed grad
    per_sample = trainable * BYTES * batch if dp else 0
    activations = batch * layers * (max_length * hidden * 16
                                    + heads * max_length * max_length * 3) * BYTES
    return int(weights + optimizer + per_sample + activations)


def check_fits(model: nn.Module, batch_size: int, max_length: int, dp: bool,
               who: str, device: torch.device | None = None,
               available: int | None = None) -> None:
    """Raise ResourceError, with the numbers and what to change, when a round would not fit in
    the memory of ``device`` (a CUDA GPU, else this machine's RAM)."""
    available = available_memory(device) if available is None else available
    place = f"GPU {device}" if device is not None and device.type == "cuda" else "this machine"
    if available is None:
        return
    need = training_memory(model, batch_size, max_length, dp)
    if need > 0.9 * available:
        raise ResourceError(
            f"{who}: a round needs about {need / 2**30:.1f} GiB (batch-size {batch_size}, "
            f"max-length {max_length}), {place} has {available / 2**30:.1f} GiB available; "
            "lower batch-size or max-length, or use finetune = \"lora\" / \"head\"")
