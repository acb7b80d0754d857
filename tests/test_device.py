"""Where partners train: the device setting, its errors, and (on a CUDA machine) a GPU round
that hands its memory back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from client.data import PartnerSettings
from client.partner import evaluate_round, train_round
from common import protocol as P
from common.config import RunConfig
from common.model.device import free_cached, gpu_memory, resolve_device
from common.errors import ConfigError
from server.messaging import gpu_line
from tests.test_partner_round import shared_start, tiny_config

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:0 "])
def test_unknown_device_names_the_key_and_the_choices(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"config key 'device' = .* auto, cpu, cuda, cuda:N"):
        RunConfig(device=bad)
    with pytest.raises(ConfigError, match="node-config device"):
        PartnerSettings.from_node_config({"device": bad})


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert PartnerSettings.from_node_config({"device": "cuda:1"}).device == "cuda:1"


@pytest.mark.skipif(CUDA, reason="checks the error a CPU-only machine gives")
def test_missing_gpu_is_an_error_not_a_cpu_fallback() -> None:
    with pytest.raises(ConfigError, match=r"device = 'cuda:0', but this process sees 0 CUDA"):
        resolve_device("cuda:0")


@pytest.mark.skipif(CUDA, reason="checks the error a CPU-only machine gives")
def test_partner_asking_for_a_missing_gpu_spends_nothing(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path)
    shared, fingerprint = shared_start(config)
    with pytest.raises(ConfigError, match="p0's node config device = 'cuda'"):
        train_round(config, PartnerSettings(name="p0", device="cuda"), shared, fingerprint, 1,
                    "r")
    assert not (tmp_path / "ledgers").exists()  # refused before the ledger was opened


def test_cpu_round_reports_no_gpu_memory(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, device="cpu")
    shared, fingerprint = shared_start(config)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert P.GPU_PEAK_BYTES not in reply.metrics and P.GPU_RESERVED_BYTES not in reply.metrics
    assert gpu_memory(torch.device("cpu")) == {}
    free_cached(torch.device("cpu"))  # a no-op, not an error


def test_gpu_line_keeps_only_cuda_partners() -> None:
    replies = {"a": {P.GPU_PEAK_BYTES: 5.0, P.GPU_RESERVED_BYTES: 2.0}, "b": {P.STEPS: 3.0},
               "c": {P.GPU_PEAK_BYTES: 7.0}}
    line = gpu_line(replies)["partner_gpu_bytes"]
    assert line["a"] == {"peak": 5.0, "reserved": 2.0} and "b" not in line
    assert math.isnan(line["c"]["reserved"])
    assert gpu_line({"b": {P.STEPS: 3.0}}) == {}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_rounds_train_on_cuda_and_do_not_keep_memory(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, device="cuda")
    shared, fingerprint = shared_start(config)
    reserved = []
    for rnd in (1, 2, 3):
        reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, rnd, "r")
        assert reply.metrics[P.GPU_PEAK_BYTES] > 0 and math.isfinite(reply.metrics[P.EPSILON])
        reserved.append(reply.metrics[P.GPU_RESERVED_BYTES])
        shared = reply.arrays
    assert reserved[2] <= reserved[0]  # nothing piles up round over round
    metrics = evaluate_round(config, PartnerSettings(name="p0"), shared, fingerprint, 3, "r")
    assert 0.0 <= metrics[P.ACCURACY] <= 1.0


def test_simulation_asking_for_cuda_needs_a_gpu_share(tmp_path: Path) -> None:
    from simulations.simulate import Federation, preflight

    config = RunConfig(device="cuda", out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"device = 'cuda' needs --num-gpus > 0"):
        preflight(config, Federation(partners=2))
    assert preflight(config, Federation(partners=2, num_gpus=0.5)).device == "cuda"
    assert not (tmp_path / "out").exists()


def test_leak_check_reads_the_reserved_bytes_round_over_round() -> None:
    from benchmarks.overhead import LEAK_SLACK, leak_check

    def rows(*reserved: float) -> list[dict]:
        return [{"partner_gpu_bytes": {"p0": {"peak": 9e9, "reserved": r},
                                       "p1": {"peak": 9e9, "reserved": r / 2}}}
                for r in reserved]

    assert leak_check([{"partner_gpu_bytes": None}] * 3) is None  # a CPU run
    steady = leak_check(rows(2e6, 2e6, 2e6))
    assert steady["no_leak"] and steady["max_reserved_after_round"] == [2e6] * 3
    assert not leak_check(rows(2e6, 2e6 + LEAK_SLACK, 2e6 + 2 * LEAK_SLACK))["no_leak"]
    with pytest.raises(SystemExit, match="mixed CPU / GPU"):
        leak_check(rows(2e6) + [{"partner_gpu_bytes": None}])
