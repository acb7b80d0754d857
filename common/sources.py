"""Which label set a run uses, decided the same way at the coordinator and at every partner."""

from __future__ import annotations

from common.config import RunConfig
from common.data import infer_labels
from common.errors import ConfigError
from common.synthetic import LABELS as SYNTHETIC_LABELS


def run_labels(config: RunConfig, partner_has_own_data: bool = False) -> tuple[str, ...]:
    """Declared labels, else those of the embedded data, else those of the simulated file."""
    if config.label_list:
        return config.label_list
    if partner_has_own_data:
        raise ConfigError("labels is empty but partners read their own files: declare the label "
                          "set in the run config, e.g. labels=\"negative,positive\"")
    if not config.data:
        return SYNTHETIC_LABELS
    return infer_labels(config.data, config.label_column)
