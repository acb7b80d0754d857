"""`consortium simulate`: check everything up front, then run the Flower App with `flwr run`.

The App is the repository itself (pyproject.toml beside these packages), so this is exactly what
`flwr run .` does, plus a preflight that fails fast with one clear line, a private Flower home,
and stopping the local SuperLink daemon `flwr run` leaves behind.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig, parse_partition
from common.errors import ConfigError, ConsortiumError
from common.model.release import Release, check_against_model, monitoring_config, read_release
from common.sources import run_labels
from common.tasks import get_task
from common.model.warm_start import check_disjoint
from server.checkpoint import check_same_config, latest_checkpoint
from server.held_out import read_held_out
from server.tracking import check_tracking
from common.partition import partition_indices
from common.infra.console import LOG_FILE, ConsoleFilter
from common.infra.processes import run_tagged
from server.flwr_run import (APP_DIR, check_finished, log_size, resume_hint, staged_app,
                             write_run_config)

logger = logging.getLogger(__name__)

# Flower's local SuperLink listens on these ports; Flower's own environment variables move them,
# e.g. to run two simulations on one machine at once (the test suite gives each worker its own)
LOCAL_PORT_VARIABLES = (("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", 39091),
                        ("FLWR_LOCAL_CONTROL_API_PORT", 39093))
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # else the SuperLink `uv sync`s the dependencies and may replace the pinned CPU torch
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "RAY_DEDUP_LOGS": "0",  # every partner's progress line, not one of each kind
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
    check_tracking(config)
    if config.device.startswith("cuda") and federation.num_gpus <= 0:
        raise ConfigError(f"device = {config.device!r} needs --num-gpus > 0 (each partner's GPU "
                          "share): Ray hides the GPUs from partners that reserve none")
    task = get_task(config.task)
    if config.deidentify:
        from common.deid.deidentify import check_installed

        check_installed()
        if not task.maskable_text:
            raise ConfigError(f"deidentify = true masks whole texts; task = {config.task!r} "
                              "tags words one by one (masking would erase tags): not supported")
    release = read_release(config.init_from) if config.init_from else None
    if release is not None:
        config = continue_from(config, release)
    elif config.monitor:  # a monitoring run: the release's model settings and labels
        release = read_release(config.monitor)
        config = monitoring_config(config, release)
    if config.data:  # labels declared (or read from the file), every row checked, split
        data_path = Path(config.data).resolve()
        config = config.replace(data=str(data_path))
        declared = config.label_list or task.infer_labels(config)
        config = config.replace(labels=",".join(declared))
        scheme, arg = parse_partition(config.partition)
        full = task.read(data_path, config, task.label_names(declared),
                         group_column=str(arg) if scheme == "column" else None,
                         person_column=config.person_column or None,
                         subgroup_column=config.group_column or None)
        partition_indices(full, federation.partners, config.partition,  # type: ignore[arg-type]
                          config.seed)
        check_disjoint(config.base_model, str(data_path), full.texts)  # public ≠ private
    else:
        task.check_demo_labels(config)
        if config.person_column or config.group_column:
            raise ConfigError("person-column and group-column name columns of --data; the "
                              "embedded demo data has none")
    if config.server_eval_data:  # the coordinator's own set: an absolute path, read once now
        path, _ = read_held_out(config, run_labels(config))
        config = config.replace(server_eval_data=str(path))
    if release is not None:  # settings, trainable layout and base weights, before any write
        check_against_model(release, config, run_labels(config))
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


def continue_from(config: RunConfig, release: Release) -> RunConfig:
    """``init-from`` in a simulation: the release's directory, absolute; its labels when none
    are declared (so ids keep their order); and, when ledger-dir is empty, the ledger directory
    of the release's run, so each simulated partner's ledger continues. (A ledger is kept per
    partner and data source: the same data file, rows appended or not, continues it; another
    file starts a new one.) A ledger directory that is gone is an error, not a fresh start."""
    parent = release.run_config
    changes: dict[str, str] = {"init_from": str(release.path)}
    if not config.label_list and parent.get("labels"):
        changes["labels"] = str(parent["labels"])
    if not config.ledger_dir:
        ledgers = Path(parent.get("ledger-dir") or Path(str(parent.get("out-dir"))) / "ledgers")
        if not ledgers.is_dir():
            raise ConfigError(f"init-from {release.path}: its run's partner ledgers ({ledgers}) "
                              "are not there; set ledger-dir to where they are (an empty one "
                              "would count ε from zero)")
        changes["ledger_dir"] = str(ledgers.resolve())
    logger.info("continuing release %s; partners' ledgers in %s", release.release_id,
                changes.get("ledger_dir", config.ledger_dir))
    return config.replace(**changes)


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


def run_simulation(config: RunConfig, federation: Federation, verbose: bool = False) -> Path:
    """Run the App on Flower's simulation engine; returns the output directory. The console
    shows one line per round, partners' progress and errors; OUT/flwr.log has everything
    (``verbose``: the console too)."""
    config = preflight(config, federation)
    for name, port in local_superlink_ports():
        if _port_in_use(port):
            raise ConsortiumError(
                f"127.0.0.1:{port} ({name}) is taken: a Flower SuperLink left by an earlier "
                "`flwr run`? Find its PID (`pgrep -af flower-superlink`) and stop that one "
                "process (`kill PID`), or set "
                f"{name} to a free port")
    out, started = Path(config.out_dir), time.time()
    log_from = log_size(out)
    with tempfile.TemporaryDirectory(prefix="consortium-flwr-") as home:
        flwr_home = Path(home)
        run_config = flwr_home / "run_config.toml"
        write_run_config(config, run_config)
        command = [
            str(Path(sys.executable).with_name("flwr")), "run",
            str(staged_app(flwr_home / "app")), "--stream",
            "--run-config", str(run_config),
            "--federation-config",
            f"num-supernodes={federation.partners} "
            f"client-resources-num-cpus={federation.num_cpus} "
            f"client-resources-num-gpus={federation.num_gpus}",
        ]
        env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home)}
        logger.info("simulating %d partners, %s -> %s", federation.partners,
                    "monitoring" if config.monitor else f"{config.num_rounds} rounds", out)
        returncode = run_tagged(command, env, "the SuperLink, simulation and Ray processes "
                                "this run started", lambda: resume_hint(out), cwd=APP_DIR,
                                console=None if verbose else ConsoleFilter(),
                                log=out / LOG_FILE)
    check_finished(out, returncode, bool(config.monitor), started, log_from)
    return out
