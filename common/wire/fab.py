"""Which files a FAB carries: Flower's own `flwr build` rules (``flwr.cli``), reused so that the
code hash of a checkout (common.code_hash) cannot drift from what a FAB of it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def fab_paths(files: Mapping[str, Path], pyproject: Mapping[str, Any]) -> list[str]:
    """Of ``files`` (relative POSIX path -> path), those `flwr build` puts into the FAB."""
    from flwr.cli.build import get_filtered_fab_paths
    from flwr.cli.utils import filter_paths_for_publish

    return list(get_filtered_fab_paths(filter_paths_for_publish(dict(files)), dict(pyproject)))
