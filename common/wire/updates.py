"""Pure numpy maths on model updates: norms and clipping of (new − old)."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def update_norm(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm of ``new − old`` over all tensors."""
    total = sum(float(np.sum((new[k].astype(np.float64) - old[k]) ** 2)) for k in old)
    return math.sqrt(total)


def clip_update(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray],
                bound: float) -> tuple[dict[str, np.ndarray], float, bool]:
    """Scale ``new − old`` to L2 norm ≤ ``bound`` (0 = no bound).

    Returns (old + clipped update, norm before clipping, whether it was clipped).
    """
    norm = update_norm(old, new)
    if bound <= 0 or norm <= bound:
        return {k: np.asarray(new[k]).copy() for k in old}, norm, False
    scale = bound / norm
    clipped = {k: (old[k] + (new[k] - old[k]) * scale).astype(old[k].dtype) for k in old}
    return clipped, norm, True
