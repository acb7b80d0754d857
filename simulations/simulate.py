"""`consortium simulate`: check everything up front, then run the Flower App with `flwr run`.

The App is the repository itself (pyproject.toml beside these packages), so this is exactly what
`flwr run .` does, plus a preflight that fails fast with one clear line, a private Flower home,
and stopping the local SuperLink daemon `flwr run` leaves behind.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import synthetic_ner
from common.config import TOKEN_TASK, RunConfig, parse_partition
from common.data import infer_labels, load_text_dataset
from common.errors import ConfigError, ConsortiumError
from common.synthetic import LABELS as SYNTHETIC_LABELS
from common.sources import run_labels, token_keys
from common.tokens import infer_entity_types, load_token_dataset, tag_names
from server.checkpoint import check_same_config, latest_checkpoint
from server.held_out import read_held_out
from simulations.partition import partition_indices
from simulations.processes import RUN_TAG, Stopped, StopOnSignal, new_tag, stop_tagged

logger = logging.getLogger(__name__)

# Flower's local SuperLink listens on these ports; Flower's own environment variables move them,
# e.g. to run two simulations on one machine at once (the test suite gives each worker its own)
LOCAL_PORT_VARIABLES = (("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", 39091),
                        ("FLWR_LOCAL_CONTROL_API_PORT", 39093))
APP_DIR = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # else the SuperLink `uv sync`s the dependencies and may replace the pinned CPU torch
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "RAY_DEDUP_LOGS": "1",
}


@dataclass(frozen=True)
class Federation:
    partners: int
    num_cpus: int = 1
    num_gpus: float = 0.0


def preflight(config: RunConfig, federation: Federation) -> RunConfig:
    """Validate data, labels, partitioning and out-dir before anything starts or is written.

    Returns the config with the label set declared, so every partner maps labels identically.
    """
    if federation.partners < config.min_partners:
        raise ConfigError(f"--partners {federation.partners} is below min-partners "
                          f"{config.min_partners}")
    if config.device.startswith("cuda") and federation.num_gpus <= 0:
        raise ConfigError(f"device = {config.device!r} needs --num-gpus > 0 (each partner's GPU "
                          "share): Ray hides the GPUs from partners that reserve none")
    if config.task == TOKEN_TASK:
        config = _preflight_tokens(config, federation)
    elif config.data:
        data_path = Path(config.data).resolve()
        config = config.replace(data=str(data_path))
        labels = config.label_list or infer_labels(data_path, config.label_column)
        config = config.replace(labels=",".join(labels))
        scheme, arg = parse_partition(config.partition)
        full = load_text_dataset(data_path, config.text_column, config.label_column, labels,
                                 group_column=str(arg) if scheme == "column" else None)
        partition_indices(full, federation.partners, config.partition, config.seed)
    elif config.label_list and config.label_list != SYNTHETIC_LABELS:
        raise ConfigError(f"--labels {config.labels}: the embedded data set has labels "
                          f"{','.join(SYNTHETIC_LABELS)}; pass --data to use your own")
    if config.server_eval_data:  # the coordinator's own set: an absolute path, read once now
        path, _ = read_held_out(config, run_labels(config))
        config = config.replace(server_eval_data=str(path))
    out = Path(config.out_dir).resolve()
    config = config.replace(out_dir=str(out))
    has_run = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if has_run and not config.resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose "
                          "another --out")
    if config.resume:
        ckpt = latest_checkpoint(out / "checkpoints") if has_run else None
        if ckpt is None:
            raise ConfigError(f"--resume: {out} holds no usable checkpoint to resume from")
        check_same_config(ckpt.state["config"], config.to_mapping())
    return config


def _preflight_tokens(config: RunConfig, federation: Federation) -> RunConfig:
    """Token-classification: entity types declared (or read from `data`), every tag checked."""
    if not config.data:
        if config.label_list and config.label_list != synthetic_ner.ENTITY_TYPES:
            raise ConfigError(f"--labels {config.labels}: the embedded NER data set has entity "
                              f"types {','.join(synthetic_ner.ENTITY_TYPES)}; pass --data to use "
                              "your own")
        return config
    data_path = Path(config.data).resolve()
    config = config.replace(data=str(data_path))
    keys = token_keys(config)
    types = config.label_list or infer_entity_types(data_path, config.tag_column, *keys)
    config = config.replace(labels=",".join(types))
    full = load_token_dataset(data_path, tag_names(types), config.tag_column, *keys)
    partition_indices(full, federation.partners, config.partition,  # type: ignore[arg-type]
                      config.seed)
    return config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_run_config(config: RunConfig, path: Path) -> None:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.to_mapping().items()))


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def local_superlink_ports() -> list[tuple[str, int]]:
    """(variable, port) of the local SuperLink's HTTP and Control APIs, as `flwr run` reads them."""
    ports = []
    for name, default in LOCAL_PORT_VARIABLES:
        value = os.environ.get(name, str(default))
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ConfigError(f"environment variable {name}={value!r}: give a port number "
                              "(1-65535) or unset it")
        ports.append((name, int(value)))
    return ports


def run_simulation(config: RunConfig, federation: Federation) -> Path:
    """Run the App on Flower's simulation engine; returns the output directory."""
    config = preflight(config, federation)
    for name, port in local_superlink_ports():
        if _port_in_use(port):
            raise ConsortiumError(
                f"127.0.0.1:{port} ({name}) is taken: a Flower SuperLink left by an earlier "
                "`flwr run`? Find its PID (`pgrep -af flower-superlink`) and stop that one "
                "process (`kill PID`), or set "
                f"{name} to a free port")
    out = Path(config.out_dir)
    with tempfile.TemporaryDirectory(prefix="consortium-flwr-") as home:
        flwr_home = Path(home)
        run_config = flwr_home / "run_config.toml"
        write_run_config(config, run_config)
        command = [
            str(Path(sys.executable).with_name("flwr")), "run", str(APP_DIR), "--stream",
            "--run-config", str(run_config),
            "--federation-config",
            f"num-supernodes={federation.partners} "
            f"client-resources-num-cpus={federation.num_cpus} "
            f"client-resources-num-gpus={federation.num_gpus}",
        ]
        tag = new_tag()
        env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home), RUN_TAG: tag}
        logger.info("simulating %d partners x %d rounds -> %s", federation.partners,
                    config.num_rounds, out)
        try:
            with StopOnSignal():
                proc = subprocess.run(command, env=env, cwd=APP_DIR)
        except Stopped as stop:
            stopped = stop_tagged(tag)
            raise ConsortiumError(
                f"stopped by {stop}: {len(stopped)} process(es) this run started (SuperLink, "
                f"simulation, Ray) are stopped; {_resume_hint(out)}") from None
        finally:  # the detached SuperLink and all it started (Ray's too) carry the tag
            stop_tagged(tag)
    check_finished(out, proc.returncode)
    return out


def _resume_hint(out: Path) -> str:
    if any((out / "checkpoints").glob("round-*.json")):
        return f"the checkpoints in {out} let you finish it: rerun the command with --resume"
    return "no round had finished; rerun the command to start again"


def check_finished(out: Path, returncode: int) -> None:
    """`flwr run` exits 0 even when the ServerApp failed: the exported model is the proof."""
    if returncode != 0 or not (out / "model" / "config.json").exists():
        hint = f"; {_resume_hint(out)}" if (out / "checkpoints").is_dir() else ""
        raise ConsortiumError(f"the run did not finish (flwr exit code {returncode}); see the "
                              f"log above{hint}")
