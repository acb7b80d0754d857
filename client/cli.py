"""`consortium partner ...`: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from client.deploy import PartnerPolicy, check_partner_data, supernode_command
from client.keys import generate_node_keys


def add_parsers(sub: argparse._SubParsersAction) -> None:
    partner = sub.add_parser("partner", help="a partner node next to its private data")
    psub = partner.add_subparsers(dest="action", required=True)
    p = psub.add_parser("keygen", help="create this partner's node key pair")
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True)
    p = psub.add_parser("start", help="join the coordinator and train when asked")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--ca", type=Path, help="the coordinator's ca.crt")
    p.add_argument("--key", type=Path, help="this partner's private node key")
    p.add_argument("--data", type=Path, required=True, help="CSV / TSV / JSONL, stays here")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-epsilon", type=float, required=True,
                   help="this partner's privacy budget over all runs on this data")
    p.add_argument("--delta", type=float, default=1e-5, help="δ the budget is counted at")
    p.add_argument("--name", help="partner name (default: the key file's name)")
    p.add_argument("--ledger-dir", type=Path, help="privacy ledger and audit log "
                   "(default: ~/.consortium/NAME)")
    p.add_argument("--allowed-base-models", default="", help="comma-separated; empty = any")
    p.add_argument("--device", default="", help="where to train: auto, cpu, cuda or cuda:N "
                   "(default: the run's device, auto = a visible GPU, else the CPU)")
    p.add_argument("--port", type=int, default=9094, help="local port of the SuperNode")
    p.add_argument("--max-wait-time", type=float, help="give up after this many seconds "
                   "without the coordinator (default: keep retrying with back-off)")
    p.add_argument("--insecure", action="store_true", help="no TLS: local trials only")


def handle(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        private, public = generate_node_keys(args.dir, args.name)
        print(f"private key {private} (keep it here, 0600); send {public} to the coordinator")
        return 0
    name = args.name or (args.key.name if args.key else None)
    if not name:
        raise SystemExit("consortium: error: --name is required without --key")
    policy = PartnerPolicy(
        name=name, data=args.data, max_epsilon=args.max_epsilon, delta=args.delta,
        ledger_dir=args.ledger_dir or Path.home() / ".consortium" / name,
        text_column=args.text_column, label_column=args.label_column,
        allowed_base_models=args.allowed_base_models, device=args.device)
    rows = check_partner_data(policy)
    command = supernode_command(policy, args.coordinator, args.ca, args.key, args.port,
                                args.insecure)
    if args.max_wait_time:
        command += ["--max-wait-time", str(args.max_wait_time)]
    if args.insecure:
        print("WARNING: --insecure: the connection is not encrypted. Local trials only.")
    print(f"{name}: {rows} rows in {args.data}; budget ε ≤ {args.max_epsilon:g} at "
          f"δ = {args.delta:g}; ledger in {policy.ledger_dir}")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    os.execve(command[0], command, env)
