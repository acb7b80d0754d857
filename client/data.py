"""Where a partner's examples come from: its own file, a slice of a simulated file, or the
embedded synthetic set. No flwr here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from client.policy import PartnerSettings
from common.config import RunConfig
from common.data.text import apply_corrections, split_held_out
from common.errors import ConfigError
from common.partner_rows import partner_rows as rows_of, simulated_slice as common_slice
from common.privacy.partner_secret import partner_secret
from common.tasks import LabelledData, get_task


@dataclass(frozen=True)
class PartnerData:
    train: LabelledData
    test: LabelledData
    masked: dict[str, int]  # de-identification: spans masked per entity type (counts only)
    corrected: dict[str, int] = field(default_factory=dict)  # corrections folded in (counts)


def partner_data(config: RunConfig, partner: PartnerSettings,
                 labels: tuple[str, ...]) -> PartnerData:
    """``partner_dataset``; then the partner's reviewed ``corrections`` folded in
    (common.data.text.apply_corrections: they keep the split); then, when the partner or run asks
    (``deidentify``), personal data masked in both splits before anything is tokenized
    (common.deid.deidentify). The held-out split is chosen on the original texts, the same with
    masking on or off."""
    train, test = partner_dataset(config, partner, labels)
    corrected: dict[str, int] = {}
    if partner.corrections:
        train, test, corrected = corrections_applied(config, partner, labels, train, test)
    if not partner.masks_text(config):
        return PartnerData(train, test, {}, corrected)
    train, in_train = deidentified(train, config.task)
    test, in_test = deidentified(test, config.task)
    return PartnerData(train, test, dict(Counter(in_train) + Counter(in_test)), corrected)


def corrections_applied(config: RunConfig, partner: PartnerSettings, labels: tuple[str, ...],
                        train: LabelledData, test: LabelledData):
    """The partner's corrections file, read with its data's columns, folded into its splits."""
    task = get_task(config.task)
    if not task.one_label_per_text:
        raise ConfigError(f"node-config corrections: task = {config.task!r} has no single "
                          "label per text to correct; not supported")
    fixes = task.read(partner.corrections, config, labels, partner.text_column,
                      partner.label_column, person_column=partner.person_key(config) or None,
                      subgroup_column=partner.group_key(config) or None)
    return apply_corrections(train, test, fixes,  # type: ignore[arg-type]
                             partner.held_out_fraction(config), held_out_key(config, partner))


def deidentified(data: LabelledData, task: str) -> tuple[LabelledData, dict[str, int]]:
    """``data`` with its texts masked, and the spans masked per type; computed once per process
    for the same texts (a partner's rounds re-read the same file)."""
    if not get_task(task).maskable_text:
        raise ConfigError(f"deidentify = true masks whole texts; task = {task!r} tags words one "
                          "by one (masking a name would erase its tag): not supported, "
                          "de-identify such files before labelling")
    key = hashlib.sha256(json.dumps(data.texts).encode()).hexdigest()
    if key not in _MASKED:
        if len(_MASKED) >= 4:  # a partner's splits (train, held-out, monitoring): bounded
            _MASKED.clear()
        _MASKED[key] = _deidentifier().mask(data.texts)
    texts, counts = _MASKED[key]
    return dataclasses.replace(data, texts=texts), dict(counts)


_MASKED: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {}


@functools.lru_cache(maxsize=1)
def _deidentifier():  # built once per process (~3-5 s): Presidio, spaCy, the name list
    from common.deid.deidentify import Deidentifier

    return Deidentifier()


def partner_dataset(config: RunConfig, partner: PartnerSettings,
                    labels: tuple[str, ...]) -> tuple[LabelledData, LabelledData]:
    """(train, held-out test) of this partner (``partner_rows``); the held-out rows are chosen
    by each row's text (person) at the partner's own fraction, hashed with its secret
    (common.data.text.split_held_out): the same in every run, and not computable by the
    coordinator."""
    data = partner_rows(config, partner, labels)
    return split_held_out(data, partner.held_out_fraction(config),  # type: ignore[arg-type]
                          held_out_key(config, partner))


def held_out_key(config: RunConfig, partner: PartnerSettings) -> bytes | None:
    """The key of the partner's held-out split: its secret, kept beside its ledger. None for a
    simulated partner, the run author's own: its split is the public SHA-256 of each row, so
    research runs replay exactly wherever their ledgers are."""
    return partner_secret(partner.ledger_root(config)) if partner.has_own_data else None


def partner_rows(config: RunConfig, partner: PartnerSettings,
                 labels: tuple[str, ...]) -> LabelledData:
    """Every row of this partner, read by the run's task from its own file, its slice of the
    simulated file, or the embedded demo data (common.partner_rows)."""
    columns = {"person_column": partner.person_key(config) or None,
               "subgroup_column": partner.group_key(config) or None}
    if not partner.has_own_data and not config.data and any(columns.values()):
        raise ConfigError("person-column and group-column name columns of `data`; the "
                          "embedded demo data has none: set data to a file that has them")
    return rows_of(config, partner.row_source(), labels, **columns)


def simulated_slice(config: RunConfig, partner: PartnerSettings, labels: tuple[str, ...],
                    **columns: str | None) -> LabelledData:
    """A simulated partner's slice of the run's ``data`` file, split as ``partition`` says."""
    return common_slice(config, partner.row_source(), labels, **columns)
