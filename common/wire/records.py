"""The wire format shared by both Flower apps: named numpy arrays <-> ArrayRecord."""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(a))
                                   for name, a in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def history_to_json(history: list[tuple[float, float, int]]) -> str:
    return json.dumps([[float(s), float(q), int(n)] for s, q, n in history])


def history_from_json(text: str) -> list[tuple[float, float, int]]:
    return [(float(s), float(q), int(n)) for s, q, n in json.loads(text)]
