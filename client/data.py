"""Where a partner's examples come from: its own file, a slice of a simulated file, or the
embedded synthetic set. No flwr here."""

from __future__ import annotations

from client.policy import PartnerSettings
from common.config import RunConfig
from common.data import split_held_out
from common.tasks import LabelledData, get_task


def partner_dataset(config: RunConfig, partner: PartnerSettings,
                    labels: tuple[str, ...]) -> tuple[LabelledData, LabelledData]:
    """(train, held-out test) of this partner, read by the run's task from its own file, its
    slice of the simulated file, or the embedded demo data; the held-out rows are chosen by each
    row's text at the partner's own fraction (common.data.split_held_out), the same in every
    run."""
    task = get_task(config.task)
    if partner.has_own_data:
        data = task.read(partner.data_path, config, labels, partner.text_column,
                         partner.label_column)
    elif config.data:
        scheme = config.partition.split(":", 1)
        group = scheme[1] if scheme[0] == "column" else None
        full = task.read(config.data, config, labels, group_column=group)
        from common.partition import partition_indices  # simulated partners only: its
        # flwr-datasets import costs a real partner's ClientApp ~1-2 s per message
        parts = partition_indices(full, partner.num_partitions, config.partition, config.seed)
        data = full.subset(parts[partner.partition_id])
    else:
        data = task.demo_data(partner.partition_id, config, labels)
    return split_held_out(data, partner.held_out_fraction(config))  # type: ignore[arg-type]

