"""Which label set a run uses, decided the same way at the coordinator and at every partner."""

from __future__ import annotations

from typing import Callable

from common import synthetic_ner
from common.config import TOKEN_TASK, RunConfig
from common.data import infer_labels
from common.errors import ConfigError
from common.synthetic import LABELS as SYNTHETIC_LABELS
from common.tokens import infer_entity_types, tag_names


def run_labels(config: RunConfig, partner_has_own_data: bool = False) -> tuple[str, ...]:
    """Declared labels, else those of the embedded data, else those of the simulated file.

    For token-classification: the tags (O, B-T, I-T, ...) derived from the entity types."""
    if config.task != TOKEN_TASK:
        return _resolve(config, partner_has_own_data, "the label set", "negative,positive",
                        SYNTHETIC_LABELS, lambda: infer_labels(config.data, config.label_column))
    return tag_names(_resolve(
        config, partner_has_own_data, "the entity types", "PER,ORG,LOC", synthetic_ner.ENTITY_TYPES,
        lambda: infer_entity_types(config.data, config.tag_column, *token_keys(config))))


def _resolve(config: RunConfig, partner_has_own_data: bool, what: str, example: str,
             embedded: tuple[str, ...], infer: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
    if config.label_list:
        return config.label_list
    if partner_has_own_data:
        raise ConfigError("labels is empty but partners read their own files: declare "
                          f"{what} in the run config, e.g. labels=\"{example}\"")
    return infer() if config.data else embedded


def token_keys(config: RunConfig, text_column: str = "", label_column: str = "") -> tuple[str, str]:
    """The JSONL keys of a sentence's words and tags: ``tokens`` / ``tags`` unless text-column /
    label-column (or the partner's own) are set away from their defaults."""
    text, label = text_column or config.text_column, label_column or config.label_column
    return ("tokens" if text == "text" else text), ("tags" if label == "label" else label)
