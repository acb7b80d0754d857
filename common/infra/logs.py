"""Logging set-up, done once at each entry point."""

from __future__ import annotations

import logging
import os
import sys
import warnings

PACKAGES = ("common", "client", "server", "simulations")


def quiet_libraries() -> None:
    """Silence load reports, progress bars and known-harmless warnings of the libraries."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # datasets (1.4 s to import) reads this when a partitioner first imports it
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # already imported: its setting is fixed, so switch it off
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Optimal order is the (largest|smallest) alpha.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    warnings.filterwarnings("ignore", message=".*Using a non-full backward hook.*")


def configure_logging(level: int = logging.INFO) -> None:
    """Our packages log to stderr, one line per event (Flower's own logger is left alone)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    quiet_libraries()
