"""The coordinator node: `consortium coordinator init | enroll | revoke | start` and `run`.

Flower's deployment engine does the work (flower-superlink, `flwr supernode register`, `flwr run`);
this module only prepares certificates and configuration and calls those commands with TLS and
SuperNode authentication on. Files of a federation directory:

    ca.key ca.crt server.key server.pem   certificates (keys 0600)
    federation.json                       address and host names
    flwr-home/config.toml                 the Flower CLI connection "consortium"
    partners.json                         enrolled partners: node id, key fingerprint, status
    state.db superlink.log                the SuperLink's database and log
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.infra.keys import check_partner_name, load_node_public_key
from common.errors import ConfigError, ConsortiumError
from common.infra.storage import atomic_write_bytes, atomic_write_json
from server.certificates import create_ca_and_server_cert

logger = logging.getLogger(__name__)

CONNECTION = "consortium"
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def flwr_env(directory: Path) -> dict[str, str]:
    return {**os.environ, **FLWR_ENV, "FLWR_HOME": str(directory / "flwr-home")}


def _federation(directory: Path) -> dict[str, Any]:
    path = directory / "federation.json"
    if not path.exists():
        raise ConfigError(f"{directory} is not a federation directory (no federation.json); "
                          "create one with `consortium coordinator init`")
    return json.loads(path.read_text())


def init_federation(directory: Path, hosts: list[str], port: int) -> Path:
    """Create the CA, the server certificate, federation.json and the Flower CLI connection."""
    directory = directory.resolve()
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port")
    create_ca_and_server_cert(directory, hosts)
    address = f"{hosts[0] if hosts else '127.0.0.1'}:{port}"
    atomic_write_json(directory / "federation.json", {
        "address": address, "hosts": hosts, "port": port,
        "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    control = f"127.0.0.1:{port}"  # the operator's CLI talks to its own SuperLink locally
    atomic_write_bytes(directory / "flwr-home" / "config.toml", (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{control}"\nroot-certificates = "{directory / "ca.crt"}"\n').encode())
    atomic_write_json(directory / "partners.json", {})
    return directory


def superlink_command(directory: Path, host: str, insecure: bool = False) -> list[str]:
    """The flower-superlink command line: TLS and SuperNode authentication on."""
    port = _federation(directory)["port"]
    command = [_bin("flower-superlink"), "--host", host, "--port", str(port),
               "--database", str(directory / "state.db"),
               "--disable-runtime-dependency-installation"]
    if insecure:
        return command + ["--insecure"]
    return command + ["--ssl-ca-certfile", str(directory / "ca.crt"),
                      "--ssl-certfile", str(directory / "server.pem"),
                      "--ssl-keyfile", str(directory / "server.key"),
                      "--enable-supernode-auth"]


def _flwr_json(directory: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([_bin("flwr"), *args, CONNECTION, "--format", "json"],
                          env=flwr_env(directory), capture_output=True, text=True, timeout=120)
    try:
        reply = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ConsortiumError(f"`flwr {' '.join(args)}` failed: "
                              f"{(proc.stderr or proc.stdout).strip()[-500:]}") from exc
    if not reply.get("success"):
        message = reply.get("error-message", "").strip().splitlines()
        raise ConsortiumError(f"`flwr {args[0]} {args[1]}` refused: "
                              f"{message[-1] if message else reply}")
    return reply


def list_runs(directory: Path, run_id: int | None = None) -> list[dict[str, Any]]:
    """The runs the federation's SuperLink knows (`flwr ls` with this federation's Flower home,
    so no `~/.flwr` and no local SuperLink is made): id, status, FAB name and hash, times."""
    args = ["ls", *(["--run-id", str(run_id)] if run_id is not None else [])]
    return list(_flwr_json(directory, *args).get("runs", []))


def _partners(directory: Path) -> dict[str, Any]:
    _federation(directory)
    return json.loads((directory / "partners.json").read_text())


def enroll(directory: Path, public_key: Path, name: str) -> int:
    """Register a partner's node key with the running SuperLink; returns its node id."""
    check_partner_name(name)
    fingerprint = load_node_public_key(public_key)
    partners = _partners(directory)
    if name in partners and partners[name]["status"] == "enrolled":
        raise ConfigError(f"partner {name!r} is already enrolled (node "
                          f"{partners[name]['node_id']}); revoke it first to replace its key")
    reply = _flwr_json(directory, "supernode", "register", str(public_key), "--name", name)
    partners[name] = {"node_id": int(reply["node-id"]), "key_fingerprint": fingerprint,
                      "status": "enrolled",
                      "enrolled_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    atomic_write_json(directory / "partners.json", partners)
    return int(reply["node-id"])


def revoke(directory: Path, name: str) -> None:
    """Unregister a partner's node: its key can no longer connect (nor be enrolled again)."""
    partners = _partners(directory)
    if partners.get(name, {}).get("status") != "enrolled":
        raise ConfigError(f"no enrolled partner named {name!r}; enrolled: "
                          f"{sorted(n for n, p in partners.items() if p['status'] == 'enrolled')}")
    _flwr_json(directory, "supernode", "unregister", str(partners[name]["node_id"]))
    partners[name].update(status="revoked",
                          revoked_at=dt.datetime.now(dt.timezone.utc).isoformat())
    atomic_write_json(directory / "partners.json", partners)


def run_command(directory: Path, app_dir: Path, run_config: Path) -> list[str]:
    """`flwr run` of this App against the federation's SuperLink, streaming its logs."""
    _federation(directory)
    return [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream",
            "--run-config", str(run_config)]
