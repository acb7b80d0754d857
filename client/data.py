"""Where a partner's examples come from: its own file, a slice of a simulated file, or the
embedded synthetic set. No flwr here."""

from __future__ import annotations

from client.policy import PartnerSettings
from common import synthetic_ner
from common.config import TOKEN_TASK, RunConfig
from common.data import TextDataset, load_text_dataset, split_held_out
from common.errors import ConfigError
from common.sources import token_keys
from common.synthetic import LABELS as SYNTHETIC_LABELS
from common.synthetic import synthetic_partner_data
from common.tokens import TokenDataset, entity_types, load_token_dataset


def partner_dataset(config: RunConfig, partner: PartnerSettings,
                    labels: tuple[str, ...]) -> tuple[TextDataset, TextDataset]:
    """(train, held-out test) of this partner; the held-out rows are chosen by each row's
    text at the partner's own fraction (common.data.split_held_out), the same in every run."""
    if config.task == TOKEN_TASK:
        tokens = _token_dataset(config, partner, labels)
        return split_held_out(tokens, partner.held_out_fraction(config))  # type: ignore
    if partner.has_own_data:
        data = load_text_dataset(partner.data_path, partner.text_column or config.text_column,
                                 partner.label_column or config.label_column, labels)
    elif config.data:
        scheme = config.partition.split(":", 1)
        group = scheme[1] if scheme[0] == "column" else None
        full = load_text_dataset(config.data, config.text_column, config.label_column, labels,
                                 group_column=group)
        from simulations.partition import partition_indices  # simulated partners only: its
        # flwr-datasets import costs a real partner's ClientApp ~1-2 s per message
        parts = partition_indices(full, partner.num_partitions, config.partition, config.seed)
        data = full.subset(parts[partner.partition_id])
    else:
        if tuple(labels) != SYNTHETIC_LABELS:
            raise ConfigError(f"labels {list(labels)} do not match the embedded data set's "
                              f"{list(SYNTHETIC_LABELS)}; leave labels empty, or set data")
        data = synthetic_partner_data(partner.partition_id, config.examples_per_partner,
                                      config.seed)
    return split_held_out(data, partner.held_out_fraction(config))


def _token_dataset(config: RunConfig, partner: PartnerSettings,
                   tags: tuple[str, ...]) -> TokenDataset:
    """Sentences of this partner for token-classification: its own CoNLL / JSONL file, its
    slice of the simulated file, or the embedded NER set."""
    if partner.has_own_data:
        keys = token_keys(config, partner.text_column, partner.label_column)
        return load_token_dataset(partner.data_path, tags, config.tag_column, *keys)
    if config.data:
        full = load_token_dataset(config.data, tags, config.tag_column, *token_keys(config))
        from simulations.partition import partition_indices  # simulated partners only

        parts = partition_indices(full, partner.num_partitions,  # type: ignore[arg-type]
                                  config.partition, config.seed)
        return full.subset(parts[partner.partition_id])
    if tuple(tags) != synthetic_ner.TAGS:
        raise ConfigError(f"labels {list(entity_types(tags))} do not match the embedded NER data "
                          f"set's entity types {list(synthetic_ner.ENTITY_TYPES)}; leave labels "
                          "empty, or set data")
    return synthetic_ner.synthetic_ner_data(partner.partition_id, config.examples_per_partner,
                                            config.seed)
