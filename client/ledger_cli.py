"""`consortium partner acknowledge-ledger | purge-cache`: what a partner's operator does to its
own ledger directory, on its own machine. Argument parsing and dispatch only; nothing is sent."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.training.feature_cache import CACHE_DIR, purge
from common.privacy.ledger_audit import acknowledge, audit_names_ledgers
from common.privacy.partner_secret import SECRET_FILE, partner_secret

ACTIONS = ("acknowledge-ledger", "purge-cache")


def add_parsers(psub: argparse._SubParsersAction) -> None:
    p = psub.add_parser("acknowledge-ledger", help="accept, on the record, a ledger that is "
                        "missing or holds less ε than the audit log says (a restored backup)")
    _ledger_dir(p)
    p = psub.add_parser("purge-cache", help="remove the cached features of this partner's "
                        "texts (the encoder computes them again when needed)")
    _ledger_dir(p)
    p.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                   help="only files written more than DAYS ago (default: all)")


def _ledger_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger-dir", type=Path, help="the partner's ledger directory (default: "
                   "~/.consortium/NAME)")
    p.add_argument("--name", help="the partner's name, for the default --ledger-dir")


def handle(args: argparse.Namespace) -> int:
    root = args.ledger_dir or (Path.home() / ".consortium" / args.name if args.name else None)
    if root is None:
        raise SystemExit(f"consortium: error: partner {args.action} needs --ledger-dir or --name")
    if args.action == "purge-cache":
        files, size = purge(root / CACHE_DIR, args.older_than)
        print(f"removed {files} cached feature file(s), {size / 1e6:.1f} MB, from "
              f"{root / CACHE_DIR}")
        return 0
    lost_secret = not (root / SECRET_FILE).exists() and audit_names_ledgers(root)
    partner_secret(root, replace_lost=True)
    if lost_secret:
        print(f"{root / SECRET_FILE}: a new partner secret (the held-out split is drawn anew, "
              "and ledgers kept under the old one are no longer recognised by content)")
    lines = acknowledge(root)
    for line in lines:
        now = "missing (ε starts again from 0)" if line["missing"] else f"ε = {line['epsilon']:.4f}"
        print(f"acknowledged {line['ledger']}: {now}, where the audit log recorded ε = "
              f"{line['recorded_before']:.4f}; written to {root / 'audit.jsonl'}")
    if not lines:
        print(f"every ledger in {root} holds at least the ε its audit log records; nothing to "
              "acknowledge")
    return 0
