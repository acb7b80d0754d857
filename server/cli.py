"""`consortium coordinator ...` and `consortium run`: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common.config import RunConfig, epsilon_keys
from common.infra.keys import load_node_public_key
from common.errors import ConsortiumError
from common.model.release import check_against_model, monitoring_config, read_release
from common.sources import run_labels
from common.infra.console import LOG_FILE, ConsoleFilter, node_console
from common.infra.processes import run_tagged
from server import deploy
from server.flwr_run import check_finished, log_size, staged_app, write_run_config


def add_parsers(sub: argparse._SubParsersAction) -> None:
    coord = sub.add_parser("coordinator", help="the coordinator node (TLS, enrolled partners)")
    csub = coord.add_subparsers(dest="action", required=True)
    p = csub.add_parser("init", help="create the CA, server certificate and federation config")
    p.add_argument("dir", type=Path)
    p.add_argument("--host", action="append", default=[], help="DNS name or IP partners use to "
                   "reach the coordinator (repeatable; localhost and 127.0.0.1 are always in)")
    p.add_argument("--port", type=int, default=9092)
    p = csub.add_parser("start", help="run the SuperLink with TLS and node authentication")
    p.add_argument("dir", type=Path)
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--insecure", action="store_true",
                   help="plain HTTP, no node authentication: for a local trial only")
    p.add_argument("--verbose", action="store_true", help="show Flower's own lines too "
                   "(always in DIR/superlink.log)")
    p = csub.add_parser("enroll", help="register a partner's node public key")
    p.add_argument("public_key", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--dir", type=Path, default=Path("."))
    p = csub.add_parser("revoke", help="unregister a partner: its key can no longer connect")
    p.add_argument("--name", required=True)
    p.add_argument("--dir", type=Path, default=Path("."))
    run = sub.add_parser("run", help="submit a training run to the coordinator and stream it")
    run.add_argument("--coordinator", type=Path, required=True, help="federation directory")
    runs = sub.add_parser("runs", help="list the runs of the coordinator's SuperLink (`flwr ls` "
                                       "for this federation)")
    runs.add_argument("--coordinator", type=Path, required=True, help="federation directory")
    runs.add_argument("--run-id", type=int, help="only this run")
    run.add_argument("--rounds", type=int)
    run.add_argument("--epsilon", type=float, help="target ε per partner over the run; inf = "
                     "no DP (default: the run config's epsilon)")
    run.add_argument("--labels", help="comma-separated label set every partner maps to")
    run.add_argument("--out", type=Path, help="output directory on the coordinator")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint (same config)")
    run.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                     help="start from this release (an earlier run's OUT/model on the "
                          "coordinator) instead of the base model's initial weights")
    run.add_argument("--monitor", type=Path, metavar="MODEL_DIR",
                     help="train nothing: partners whose policy allows it score this release "
                          "on their new data and send counts; drift is flagged in "
                          "OUT/monitoring.md")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--verbose", action="store_true",
                     help="show Flower's own log lines too (always in OUT/flwr.log)")


def handle(args: argparse.Namespace, overrides: dict) -> int:
    if args.command == "run":
        return _submit_run(args, overrides)
    if args.command == "runs":
        return _list_runs(args)
    if args.action == "init":
        directory = deploy.init_federation(args.dir, args.host, args.port)
        print(f"federation created in {directory}; give partners {directory / 'ca.crt'} and the "
              f"address {args.host[0] if args.host else '127.0.0.1'}:{args.port}")
    elif args.action == "start":
        if args.insecure:
            print("WARNING: --insecure: no TLS, no node authentication; anyone who can reach "
                  "this port can join and read the model. Never use it across sites.")
        command = deploy.superlink_command(args.dir.resolve(), args.bind, args.insecure)
        print(f"coordinator {args.dir}: SuperLink on {args.bind}, "
              f"{'NO TLS (--insecure)' if args.insecure else 'TLS + enrolled partners only'}; "
              f"Flower's log in {args.dir / 'superlink.log'}", flush=True)
        return run_tagged(command, deploy.flwr_env(args.dir.resolve()),
                          "the SuperLink and the ServerApps it ran",
                          lambda: f"start it again with `consortium coordinator start {args.dir}`;"
                                  " a stopped run continues from its last checkpoint with "
                                  "`consortium run ... --resume`",
                          console=node_console(args.verbose),
                          log=args.dir / "superlink.log")
    elif args.action == "enroll":
        node_id = deploy.enroll(args.dir.resolve(), args.public_key, args.name)
        print(f"enrolled {args.name} as node {node_id}, key fingerprint "
              f"{load_node_public_key(args.public_key)}: check it with the partner by phone "
              "(its `partner keygen` printed it)")
    elif args.action == "revoke":
        deploy.revoke(args.dir.resolve(), args.name)
        print(f"revoked {args.name}")
    return 0


def continue_release(config: RunConfig) -> RunConfig:
    """``init-from``: the release (on this machine, the coordinator's) read and checked against
    the run's model before it is submitted; its labels when --labels is not given. The partners'
    ledgers are their own (node config ledger-dir): they simply continue."""
    if not config.init_from:
        return config
    release = read_release(config.init_from)
    config = config.replace(init_from=str(release.path),
                            labels=config.labels or str(release.run_config.get("labels", "")))
    check_against_model(release, config, run_labels(config, partner_has_own_data=True))
    return config


def monitor_release(config: RunConfig) -> RunConfig:
    """``monitor``: the release (on the coordinator's machine) read, its model settings and
    labels taken, and its weights checked against that model before the run is submitted."""
    if not config.monitor:
        return config
    release = read_release(config.monitor)
    config = monitoring_config(config, release)
    check_against_model(release, config, run_labels(config, partner_has_own_data=True))
    return config


def run_config(args: argparse.Namespace, overrides: dict) -> RunConfig:
    """The run config `consortium run` submits: --set values, then the flags."""
    flags = {"num-rounds": args.rounds, "labels": args.labels,
             "out-dir": str(args.out.resolve()) if args.out else None,
             "init-from": str(args.init_from) if args.init_from else None,
             "monitor": str(args.monitor) if args.monitor else None}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.epsilon is not None:
        overrides.update(epsilon_keys(args.epsilon))
    if args.resume:
        overrides["resume"] = True
    config = monitor_release(continue_release(RunConfig.from_mapping(overrides)))
    if not config.label_list:
        raise ConsortiumError("--labels is required: partners read their own files, so the run "
                              "declares the label set")
    return config.replace(out_dir=str(Path(config.out_dir).resolve()))


def _list_runs(args: argparse.Namespace) -> int:
    """One line per run; `fab-hash` is SHA-256 of the FAB file Flower shipped, not the code
    hash `partner approve` prints for allowed-code (docs/deployment.md, pinning)."""
    for run in deploy.list_runs(args.coordinator.resolve(), args.run_id):
        print(f"run {run.get('run-id')}: {run.get('status')}, {run.get('fab-name')} "
              f"{run.get('fab-version')}, fab-hash {run.get('fab-hash')}, "
              f"pending at {run.get('pending-at')}, elapsed {run.get('elapsed')}")
    return 0


def _submit_run(args: argparse.Namespace, overrides: dict) -> int:
    config = run_config(args, overrides)
    model = Path(config.out_dir) / "model" / "config.json"
    if model.exists() and not config.resume and not config.monitor:
        raise ConsortiumError(f"{config.out_dir} already holds a finished run; choose another "
                              "--out")
    started, log_from = time.time(), log_size(Path(config.out_dir))
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "run_config.toml"
        write_run_config(config, toml)
        command = deploy.run_command(args.coordinator.resolve(),
                                     staged_app(Path(tmp) / "app"), toml)
        returncode = run_tagged(
            command, deploy.flwr_env(args.coordinator.resolve()), "`flwr run` on this machine",
            lambda: "the ServerApp may still run on the coordinator (`flwr ls`, `flwr stop "
                    "RUN_ID`); after it stops, `consortium run ... --resume` finishes the run",
            console=None if args.verbose else ConsoleFilter(),
            log=Path(config.out_dir) / LOG_FILE)
    check_finished(Path(config.out_dir), returncode, bool(config.monitor), started, log_from)
    print(f"done: {config.out_dir}/" + ("monitoring.md, monitoring.json" if config.monitor else
                                        "model, metrics.jsonl, privacy_report.json"))
    return 0
