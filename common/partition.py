"""Splitting one data set across simulated partners, with flwr-datasets' partitioners."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from common.config import parse_partition
from common.data.text import TextDataset
from common.errors import ConfigError, DataError


def partition_indices(data: TextDataset, num_partitions: int, spec: str,
                      seed: int) -> list[list[int]]:
    """Row indices of every partition, deterministic for a given seed."""
    scheme, arg = parse_partition(spec)
    if num_partitions < 1:
        raise ConfigError(f"num-partitions = {num_partitions} must be >= 1")
    table = {"row": list(range(len(data))), "label": list(data.labels)}
    if scheme == "column":
        if not data.groups:
            raise ConfigError(f"partition={spec!r} needs the column {arg!r} loaded as groups")
        table["group"] = list(data.groups)
    dataset = Dataset.from_dict(table)
    if scheme == "iid":  # IidPartitioner shards contiguously: shuffle first
        dataset = dataset.select(np.random.default_rng(seed).permutation(len(data)))
        partitioner = IidPartitioner(num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions, partition_by="label", alpha=float(arg),
                                           min_partition_size=min(10, len(data) // num_partitions),
                                           self_balancing=True, seed=seed)
    else:
        groups = sorted(set(data.groups))
        if len(groups) != num_partitions:
            raise ConfigError(f"partition={spec!r}: column {arg!r} has {len(groups)} values "
                              f"{groups[:10]}, so it needs exactly {len(groups)} partners, "
                              f"not {num_partitions}")
        partitioner = NaturalIdPartitioner(partition_by="group")
    partitioner.dataset = dataset
    try:
        parts = [list(partitioner.load_partition(i)["row"]) for i in range(num_partitions)]
    except ValueError as exc:
        raise DataError(f"cannot split {len(data)} examples into {num_partitions} partitions "
                        f"with {spec!r}: {exc}") from exc
    if scheme == "column":  # NaturalIdPartitioner numbers groups by first appearance
        parts.sort(key=lambda rows: data.groups[rows[0]])
    for i, rows in enumerate(parts):
        if len(rows) < 2:
            raise DataError(f"partition {i} of {spec!r} holds {len(rows)} example(s); use fewer "
                            "partners or a larger alpha")
    return parts
