"""What a measurement ran on: the machine and the versions of the packages that matter. Written
into every benchmark's and audit's JSON, so a number always travels with its setting."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PACKAGES = ("torch", "flwr", "opacus", "transformers", "peft", "cryptography")


def cuda_devices() -> list[str] | None:
    """The visible CUDA devices' names; None without torch or without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine(load_key: str = "load_average", **extra: Any) -> dict[str, Any]:
    """Platform, processor, Python, CPUs, the load average now (under ``load_key``) and the CUDA
    devices, then ``extra``."""
    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            load_key: os.getloadavg(), "cuda_devices": cuda_devices(), **extra}


def versions(*packages: str) -> dict[str, str]:
    """The installed version of each of ``packages`` (default PACKAGES); those absent are left
    out."""
    found = {}
    for name in packages or PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
