"""Where a partner's examples come from: its own file, a slice of a simulated file, or the
embedded synthetic set. No flwr here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common import synthetic_ner
from common.config import TOKEN_TASK, RunConfig, check_device
from common.data import TextDataset, load_text_dataset, split_train_test
from common.errors import ConfigError, PrivacyError
from common.sources import token_keys
from common.synthetic import LABELS as SYNTHETIC_LABELS
from common.synthetic import synthetic_partner_data
from common.tokens import TokenDataset, entity_types, load_token_dataset


@dataclass(frozen=True)
class PartnerSettings:
    """What only the partner decides (from its node config), never the coordinator."""

    name: str
    partition_id: int = 0
    num_partitions: int = 1
    data_path: str = ""  # the partner's own file; empty = simulated from the run config
    text_column: str = ""
    label_column: str = ""
    ledger_dir: str = ""
    max_epsilon: float = math.inf
    delta: float = 0.0  # the δ this partner accounts its budget at; 0 = the run's
    allowed_base_models: tuple[str, ...] = ()  # empty = any
    device: str = ""  # where this partner trains (auto, cpu, cuda, cuda:N); empty = the run's

    @property
    def has_own_data(self) -> bool:
        return bool(self.data_path)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PartnerSettings:
        known = {"partition-id", "num-partitions", "data-path", "text-column", "label-column",
                 "ledger-dir", "max-epsilon", "partner-name", "delta", "allowed-base-models",
                 "device"}
        unknown = sorted(set(node_config) - known)
        if unknown:
            raise ConfigError(f"unknown node-config key(s) {unknown}; known: {sorted(known)}")
        pid = int(node_config.get("partition-id", 0))
        settings = cls(
            name=str(node_config.get("partner-name", f"partner-{pid}")),
            partition_id=pid,
            num_partitions=int(node_config.get("num-partitions", 1)),
            data_path=str(node_config.get("data-path", "")),
            text_column=str(node_config.get("text-column", "")),
            label_column=str(node_config.get("label-column", "")),
            ledger_dir=str(node_config.get("ledger-dir", "")),
            max_epsilon=float(node_config.get("max-epsilon", math.inf)),
            delta=float(node_config.get("delta", 0.0)),
            device=str(node_config.get("device", "")),
            allowed_base_models=tuple(
                m.strip() for m in str(node_config.get("allowed-base-models", "")).split(",")
                if m.strip()),
        )
        if settings.device:
            check_device(settings.device, "node-config device")
        if not settings.max_epsilon > 0:
            raise ConfigError(f"node-config max-epsilon = {settings.max_epsilon} must be > 0")
        return settings

    def ledger_root(self, config: RunConfig) -> Path:
        return Path(self.ledger_dir or config.ledger_dir or Path(config.out_dir) / "ledgers")

    def ledger_path(self, config: RunConfig, fingerprint: str) -> Path:
        return self.ledger_root(config) / f"{self.name}-{fingerprint[:16]}.json"

    def check_policy(self, config: RunConfig) -> None:
        """Refuse a run that asks more than this partner allows."""
        if self.delta and config.delta > self.delta:
            raise PrivacyError(f"the run asks delta = {config.delta:g}; {self.name} allows at "
                               f"most {self.delta:g}")
        if self.allowed_base_models and config.base_model not in self.allowed_base_models:
            raise PrivacyError(f"base-model {config.base_model or '(bundled MiniLM)'!r} is not "
                               f"in {self.name}'s allowed list {list(self.allowed_base_models)}")
        if not config.dp and math.isfinite(self.max_epsilon):
            raise PrivacyError(f"the run has dp = false; {self.name} has a privacy budget and "
                               "trains only with DP")


def partner_dataset(config: RunConfig, partner: PartnerSettings,
                    labels: tuple[str, ...]) -> tuple[TextDataset, TextDataset]:
    """(train, held-out test) of this partner."""
    if config.task == TOKEN_TASK:
        tokens = _token_dataset(config, partner, labels)
        return split_train_test(tokens, config.test_fraction, config.seed)  # type: ignore
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
    return split_train_test(data, config.test_fraction, config.seed)


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
