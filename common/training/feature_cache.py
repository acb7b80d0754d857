"""How long a partner keeps cached features: the frozen encoder's outputs for its texts
(common.training.features, common.training.head_features, common.training.top_layers) are embeddings
that can be inverted towards the texts, so they are kept only for the partner's
``feature-cache-days`` (counted from when each file was written, not from its last use), and
``consortium partner purge-cache`` removes them at once. No flwr here.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"  # LEDGER-DIR/cache: the partner's cached features
DAY = 86_400.0


def purge(cache: str | Path, older_than_days: float = 0.0,
          now: float | None = None) -> tuple[int, int]:
    """Remove the files of ``cache`` written more than ``older_than_days`` ago (0: every one,
    half-written ones too). Returns (files, bytes) removed."""
    cache = Path(cache)
    if not cache.is_dir():
        return 0, 0
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    files = size = 0
    for path in sorted(cache.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        stat = path.stat()
        if older_than_days and stat.st_mtime > cutoff:
            continue
        path.unlink(missing_ok=True)
        files, size = files + 1, size + stat.st_size
    if files:
        logger.info("removed %d cached feature file(s), %.1f MB, from %s", files, size / 1e6,
                    cache)
    return files, size


def feature_cache(cache: str | Path, max_age_days: float) -> Path | None:
    """Where a round may keep features: ``cache`` with its files older than ``max_age_days``
    removed first; None (nothing kept, the encoder runs every round) when the policy keeps
    none (0). ``inf`` keeps them until ``purge``."""
    if max_age_days <= 0:
        purge(cache)
        return None
    if math.isfinite(max_age_days):
        purge(cache, max_age_days)
    return Path(cache)
