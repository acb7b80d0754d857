"""A progress bar over a partner's local training steps (tqdm, on stderr).

Shown only where someone watches: when stderr is a terminal, unless ``CONSORTIUM_PROGRESS=0``;
``CONSORTIUM_PROGRESS=1`` forces it on (e.g. under a log collector). Never on stdout.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

ENV = "CONSORTIUM_PROGRESS"
T = TypeVar("T")


def progress_enabled() -> bool:
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    return sys.stderr.isatty()


class RoundProgress:
    """One bar per round, advanced once per optimizer step across every local epoch."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc or "local training", unit="step", file=sys.stderr,
                        disable=not progress_enabled(), leave=False, dynamic_ncols=True)

    def over(self, batches: Iterable[T]) -> Iterator[T]:
        """Yield each batch; count a step once the caller has finished it."""
        for batch in batches:
            yield batch
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
