"""Where a partner trains: the CPU or a CUDA GPU (run config ``device``, a partner's node config
``device`` overriding it, since the hardware is the partner's).

``auto`` takes the first visible CUDA GPU and the CPU where none is visible; in a Ray simulation
with ``--num-gpus F`` Ray makes each partner's GPU share visible to it. After a round the model
is dropped and the cached blocks are handed back to the driver, so partners that share one GPU
round after round do not see each other's leftovers as taken memory.
"""

from __future__ import annotations

import gc

import torch

from common import protocol as P
from common.config import check_device
from common.errors import ConfigError


def resolve_device(setting: str, where: str = "run config") -> torch.device:
    """The torch device for ``setting``; a GPU that was asked for and is not there is an error
    naming what this process sees, never a quiet fall-back to the CPU."""
    check_device(setting, f"{where} device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(setting.partition(":")[2] or 0)
    if index >= visible:
        raise ConfigError(
            f"{where} device = {setting!r}, but this process sees {visible} CUDA GPU(s) (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU build'}); "
            "use device = \"auto\" or \"cpu\", or give the process a GPU (Ray: --num-gpus)")
    return torch.device(setting)


def free_cached(device: torch.device) -> None:
    """Return a finished round's cached GPU memory (no-op on the CPU). Call it once the round's
    model is no longer referenced; Opacus' hooks form reference cycles, hence the collect."""
    if device.type != "cuda":
        return
    gc.collect()
    torch.cuda.empty_cache()


def gpu_memory(device: torch.device) -> dict[str, float]:
    """This process' peak allocated GPU bytes since the last call and the bytes still reserved
    now (after ``free_cached``: what leaks into the next round), for the round's metrics; empty
    on the CPU."""
    if device.type != "cuda":
        return {}
    peak = float(torch.cuda.max_memory_allocated(device))
    reserved = float(torch.cuda.memory_reserved(device))
    torch.cuda.reset_peak_memory_stats(device)
    return {P.GPU_PEAK_BYTES: peak, P.GPU_RESERVED_BYTES: reserved}
