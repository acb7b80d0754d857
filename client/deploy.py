"""The partner node: `consortium partner keygen | start`.

`start` runs the partner's runner (client.runner), which runs Flower's `flower-supernode` with
TLS and this partner's node key, in process-isolation mode, and answers its Messages itself: it
checks each run's code before any of it is installed or imported, and keeps a warm worker. The
partner's policy (its data, columns, privacy budget, δ, allowed base models, ledger) is passed
as the SuperNode's node config: it lives only at the partner, and no run config can override it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.infra.keys import check_partner_name, check_private_key_file
from client.policy import PartnerSettings
from common.config import check_device
from common.data.text import filled_value, read_rows
from common.errors import ConfigError, DataError


@dataclass(frozen=True)
class PartnerPolicy:
    name: str
    data: Path
    max_epsilon: float
    delta: float
    ledger_dir: Path
    text_column: str = "text"
    label_column: str = "label"
    allowed_base_models: str = ""  # comma-separated; empty = any
    device: str = ""  # auto, cpu, cuda, cuda:N; empty = the run's
    extra: tuple[tuple[str, Any], ...] = ()  # further node-config policy keys (client.policy)

    def __post_init__(self) -> None:
        check_partner_name(self.name)
        if self.device:
            check_device(self.device, "--device")
        if not (self.max_epsilon > 0 and math.isfinite(self.max_epsilon)):
            raise ConfigError(f"--max-epsilon {self.max_epsilon} must be a positive number")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta {self.delta} must be in (0, 1)")
        PartnerSettings.from_node_config(dict(self.extra))  # every policy error, now

    def node_config(self) -> str:
        values = {"partner-name": self.name, "data-path": str(self.data.resolve()),
                  "text-column": self.text_column, "label-column": self.label_column,
                  "max-epsilon": float(self.max_epsilon), "delta": float(self.delta),
                  "ledger-dir": str(self.ledger_dir.resolve()),
                  "allowed-base-models": self.allowed_base_models,
                  **({"device": self.device} if self.device else {}), **dict(self.extra)}
        return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def check_partner_data(policy: PartnerPolicy) -> int:
    """Fail now, not at round 1, if the data file is unreadable or lacks its columns."""
    rows = read_rows(policy.data)
    for column in (policy.text_column, policy.label_column):
        if column not in rows[0][1]:
            raise DataError(f"{policy.data}:{rows[0][0]}: no column {column!r}; columns are "
                            f"{sorted(rows[0][1])}")
    extra = dict(policy.extra)
    if extra.get("deidentify"):
        from common.deid.deidentify import check_installed

        check_installed()  # a partner that asks for masking must not start without it
    if extra.get("corrections"):
        read_rows(Path(str(extra["corrections"])))  # readable now, not at round 1
    for key, role in (("person-column", "person"), ("group-column", "group")):
        if extra.get(key):  # every row names its person / group: checked now, not at round 1
            for number, row in rows:
                filled_value(Path(policy.data), number, row, str(extra[key]), role)
    return len(rows)


def supernode_command(policy: PartnerPolicy, coordinator: str, ca: Path | None, key: Path | None,
                      port: int, insecure: bool = False) -> list[str]:
    """The flower-supernode command line for this partner: process isolation, so that no
    ClientApp is started by Flower; the runner (``runner_command``) answers instead."""
    host, _, link_port = coordinator.rpartition(":")
    if not host or not link_port.isdigit():
        raise ConfigError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    command = [str(Path(sys.executable).with_name("flower-supernode")), "--superlink",
               coordinator, "--port", str(port), "--isolation", "process",
               "--node-config", policy.node_config()]
    if insecure:
        return command + ["--insecure"]
    for flag, path in (("--ca", ca), ("--key", key)):
        if path is None or not path.is_file():
            raise ConfigError(f"{flag} {path}: file not found (needed for TLS and node auth)")
        if flag == "--key":
            check_private_key_file(path, flag)
    return command + ["--root-certificates", str(ca), "--auth-supernode-private-key", str(key)]


def runner_command(policy: PartnerPolicy, supernode: list[str], port: int) -> list[str]:
    """The partner's runner (client.runner), which starts ``supernode`` (process isolation, its
    Runtime API on 127.0.0.1:``port``) and answers its Messages."""
    allowed = str(dict(policy.extra).get("allowed-code", ""))
    # -P: the directory `partner start` was run from is not put on the import path
    return [sys.executable, "-P", "-m", "client.runner", "--address", f"127.0.0.1:{port}",
            "--name", policy.name, "--allowed-code", allowed, "--", *supernode]


def supernode_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The runner's and SuperNode's environment: ``environ`` with Flower's telemetry and update
    check off."""
    return {**environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
