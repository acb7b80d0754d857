"""Which label set a run uses, decided the same way at the coordinator and at every partner."""

from __future__ import annotations

from common.config import RunConfig
from common.tasks import get_task


def run_labels(config: RunConfig, partner_has_own_data: bool = False) -> tuple[str, ...]:
    """Declared labels, else those of the embedded data, else those of the simulated file, as
    the run's task names them (for token-classification the tags O, B-T, I-T, ...)."""
    return get_task(config.task).run_labels(config, partner_has_own_data)
