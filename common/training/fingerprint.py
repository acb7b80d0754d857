"""Which frozen weights a model holds: partners refuse an update for a base they do not hold,
and the feature cache keys on it."""

from __future__ import annotations

import hashlib

from torch import nn


def frozen_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of the frozen parameters and buffers."""
    digest = hashlib.sha256()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    for name, tensor in frozen + list(model.named_buffers()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
