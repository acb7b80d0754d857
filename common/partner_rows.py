"""Where a partner's rows come from (its own file, its slice of the run's file, or the embedded
demo data), read the same way for training and for recognising which ledger the rows belong to
(``source_digests``: their keyed digests, common.privacy.partner_secret). No flwr here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig, parse_partition
from common.privacy.partner_secret import row_digests
from common.sources import run_labels
from common.tasks import LabelledData, get_task


@dataclass(frozen=True)
class RowSource:
    """A partner's rows, as its policy names them (client.policy.PartnerSettings.row_source)."""

    data_path: str = ""  # its own file; empty = a slice of the run's data (or the demo data)
    text_column: str = ""
    label_column: str = ""
    partition_id: int = 0
    num_partitions: int = 1


def partner_rows(config: RunConfig, source: RowSource, labels: tuple[str, ...],
                 person_column: str | None = None,
                 subgroup_column: str | None = None) -> LabelledData:
    """Every row of the partner, read by the run's task."""
    task = get_task(config.task)
    columns = {"person_column": person_column, "subgroup_column": subgroup_column}
    if source.data_path:
        return task.read(source.data_path, config, labels, source.text_column,
                         source.label_column, **columns)
    if config.data:
        return simulated_slice(config, source, labels, **columns)
    return task.demo_data(source.partition_id, config, labels)


def simulated_slice(config: RunConfig, source: RowSource, labels: tuple[str, ...],
                    **columns: str | None) -> LabelledData:
    """A simulated partner's slice of the run's ``data`` file, split as ``partition`` says."""
    from common.partition import partition_indices  # simulated partners only: its
    # flwr-datasets import costs a real partner's ClientApp ~1-2 s per message

    scheme, arg = parse_partition(config.partition)
    full = get_task(config.task).read(config.data, config, labels, **columns,
                                      group_column=str(arg) if scheme == "column" else None)
    parts = partition_indices(full, source.num_partitions, config.partition,  # type: ignore
                              config.seed)
    return full.subset(parts[source.partition_id])


def source_digests(config: RunConfig, source: RowSource, secret: bytes) -> frozenset[str]:
    """The keyed digests of every row of the partner (both splits): what its ledger remembers
    of them. Read once per process for the same file, size and modification time."""
    return _digests(config, source, _file_state(source.data_path or config.data), secret)


def _file_state(path: str) -> tuple:
    if not path or not Path(path).exists():
        return ()  # the embedded demo data; or a missing file, which reading reports
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _digests(config: RunConfig, source: RowSource, state: tuple, secret: bytes,
             ) -> frozenset[str]:
    data = partner_rows(config, source, run_labels(config, bool(source.data_path)))
    return row_digests(secret, data.texts)
