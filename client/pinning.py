"""The partner's code check (node-config ``allowed-code``), run for every Message before any
other module of the App is imported.

Flower's flwr-clientapp installs the FAB, puts its root first on the import path and imports
``client.app``. That module, this one and common.code_hash (with the two packages' docstring-only
``__init__``) are all that runs before the check: they import the standard library and Flower,
nothing else of the App. Only an App whose hash (every file it holds, common.code_hash) is in
``allowed-code``, and that holds no compiled code its sources do not vouch for, goes on to
import the rest (client.handlers).

It stops an App that differs from a reviewed one in any file (a shadow ``opacus/`` at its root, a
changed module, an extension module, a planted ``.pyc``) before that file can run. It cannot stop
an App whose check itself was changed to skip it (client/app.py, this file, common/code_hash.py):
that needs a runner outside the App, which hashes the FAB before importing any of it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from common.code_hash import AppCode, app_code, app_root

logger = logging.getLogger(__name__)

# The refusal's keys, spelled out here: common.protocol is App code that must not run before
# the check (tests/test_code_pinning.py keeps them equal to its)
CONFIG, ROUND = "config", "server-round"
PARTNER, PARTNER_NAME, REFUSAL = "partner", "name", "refusal"
AUDIT_LOG = "audit.jsonl"  # the partner's audit log, in its ledger directory (client.partner)


def allowed_code(node_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The code hashes the partner approved (comma-separated); empty = any code runs."""
    return tuple(v.strip() for v in str(node_config.get("allowed-code") or "").split(",")
                 if v.strip())


def unapproved(node_config: Mapping[str, Any], root: Path | None = None) -> str:
    """Why the App under ``root`` (this process's) may not run at this partner; '' when it
    may: the partner pins no code, or the App is one it approved."""
    allowed = allowed_code(node_config)
    if not allowed:
        return ""
    return verdict(partner_name(node_config), allowed, app_code(root or app_root()))


def verdict(name: str, allowed: tuple[str, ...], code: AppCode) -> str:
    """Why App ``code`` may not run at partner ``name``, which approved ``allowed`` (not
    empty); '' when it may."""
    if code.foreign:
        shown = ", ".join(code.foreign[:5]) + (", …" if len(code.foreign) > 5 else "")
        return (f"the run's App holds compiled code that none of its sources vouches for "
                f"({shown}); {name} runs only code it reviewed")
    if code.sha256 not in allowed:
        return (f"the run's code {code.sha256[:16]}… is not in {name}'s allowed-code list; "
                "review it and run `consortium partner approve`")
    return ""


def refusal(msg: Message, context: Context) -> Message | None:
    """The reply refusing ``msg`` when the App is not approved (logged and audited), or None
    when it may go on. A check that fails refuses too, and keeps its reason in the log."""
    node = context.node_config
    try:
        reason = unapproved(node)
    except Exception:  # noqa: BLE001 - whatever broke, unchecked code must not run
        logger.exception("%s could not check the run's code", partner_name(node))
        reason = f"{partner_name(node)} could not check the run's code; its own log says why"
    return refuse(msg, context, reason) if reason else None


def refuse(msg: Message, context: Context, reason: str) -> Message:
    """The reply refusing ``msg`` for ``reason``, logged and audited (client.runner refuses a
    FAB with it before any of the FAB is installed)."""
    node = context.node_config
    what = describe(msg)
    logger.error("%s refuses %s %d: %s", partner_name(node), *what, reason)
    audit(context, {"round": what[1], "refused": reason, "message": what[0], "bytes_sent": 0})
    return Message(RecordDict({PARTNER: ConfigRecord(
        {PARTNER_NAME: partner_name(node), REFUSAL: reason})}), reply_to=msg)


def describe(msg: Message) -> tuple[str, int]:
    """("round" or "evaluation", the server round) of a Message, as audit lines name it."""
    what = "round" if msg.metadata.message_type == MessageType.TRAIN else "evaluation"
    server_round = int(msg.content.config_records[CONFIG].get(ROUND, 0)) \
        if msg.has_content() and CONFIG in msg.content.config_records else 0
    return what, server_round


def audit(context: Context, entry: dict[str, Any]) -> None:
    """One line in the partner's audit log (partner name and run id added); only the log line
    the caller wrote when the partner has no ledger directory of its own."""
    root = ledger_root(context.node_config, context.run_config)
    if root is not None:  # else the log line is all: no run-chosen place to write to
        _audit(root / AUDIT_LOG, {"partner": partner_name(context.node_config),
                                  "run_id": str(context.run_id), **entry})


def partner_name(node_config: Mapping[str, Any]) -> str:
    """As client.policy.PartnerSettings names a partner."""
    return str(node_config.get("partner-name", f"partner-{node_config.get('partition-id', 0)}"))


def ledger_root(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Path | None:
    """As client.policy.PartnerSettings.ledger_root: the node's ledger-dir; for a simulated
    partner (no data of its own) else the run's; None for a partner with its own data that
    names none (the run config never places a real partner's files)."""
    if node_config.get("ledger-dir"):
        return Path(str(node_config["ledger-dir"]))
    if node_config.get("data-path"):
        return None
    return Path(str(run_config.get("ledger-dir") or
                    Path(str(run_config.get("out-dir") or "runs/latest")) / "ledgers"))


def _audit(path: Path, entry: dict[str, Any]) -> None:
    """One fsynced JSON line, as client.partner.append_audit writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": dt.datetime.now(dt.timezone.utc).isoformat(), **entry})
                     + "\n")
        handle.flush()
        os.fsync(handle.fileno())
