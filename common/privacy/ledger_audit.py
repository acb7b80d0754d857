"""A ledger checked against the partner's audit log: a ledger that holds less than the log says
was spent from it (an older copy restored, an edit) or that is gone while the log names it is
refused until the partner acknowledges it, in the same log.

Each round a partner trains, its audit log (``LEDGER-DIR/audit.jsonl``) gets the ledger's file
name and ε after the round (client.partner). ``check_not_rolled_back`` compares the ledger with
the last such line; ``acknowledge`` writes a line that makes the ledger's present ε (0 for a
missing one) the new reference, so the partner's choice is on the record. No flwr here.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterator

from common.errors import PrivacyError
from common.infra.storage import append_jsonl, read_sealed_json

AUDIT_LOG = "audit.jsonl"  # as client.pinning.AUDIT_LOG: the partner's audit log, in LEDGER-DIR
ACKNOWLEDGED = "ledger-acknowledged"  # an audit line's event: the partner accepted a lower ε
LEDGER_KEY = "ledger"  # an audit line's field: the ledger's file name (NAME@SOURCE.json)
_SLACK = 1e-9  # relative: ε recomputed from the same history is bit-identical


def audit_lines(root: str | Path) -> Iterator[dict[str, Any]]:
    """The audit log's lines, oldest first; a line cut short by a crash is skipped."""
    path = Path(root) / AUDIT_LOG
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                yield entry


def _spent(entry: dict[str, Any]) -> bool:
    value = entry.get("epsilon")
    return isinstance(value, (int, float)) and isinstance(entry.get(LEDGER_KEY), str)


def audit_names_ledgers(root: str | Path) -> bool:
    """Whether the audit log records ε of any ledger (written since ledgers are recognised by
    content, under the partner's secret)."""
    return any(_spent(entry) for entry in audit_lines(root))


def last_recorded(root: str | Path) -> dict[str, dict[str, Any]]:
    """Ledger file name -> the audit log's last line that records its ε."""
    return {entry[LEDGER_KEY]: entry for entry in audit_lines(root) if _spent(entry)}


def ledger_epsilon(path: Path, delta: float) -> float | None:
    """ε of the ledger at ``path`` at ``delta`` (Opacus' accountant over its whole history);
    None when there is no such file."""
    from common.privacy.ledger import epsilon_of

    if not path.exists():
        return None
    body = read_sealed_json(path)
    return epsilon_of([(r["noise_multiplier"], r["sample_rate"], r["steps"])
                       for r in body["releases"]], delta)


def behind(path: Path, entry: dict[str, Any]) -> tuple[bool, float | None]:
    """(whether the ledger at ``path`` is missing or below the ε ``entry`` recorded, its ε now:
    None when missing)."""
    recorded = float(entry["epsilon"])
    now = ledger_epsilon(path, float(entry.get("delta") or 0.0))
    if now is None:
        return recorded > 0, None
    return now < recorded * (1 - _SLACK), now


def check_not_rolled_back(root: str | Path, ledger: Path) -> None:
    """PrivacyError (nothing spent) when ``ledger`` is missing while the audit log records ε
    spent from it, or holds a lower ε than the log's last line for it, unless acknowledged."""
    entry = last_recorded(root).get(ledger.name)
    if entry is None:
        return
    lower, now = behind(ledger, entry)
    if not lower:
        return
    fix = (f"restore the latest copy from its backup, or, to go on from a lower ε knowingly, "
           f"run `consortium partner acknowledge-ledger --ledger-dir {root}` (it is written to "
           "the audit log). Refused; nothing was spent")
    when = f"run {entry.get('run_id', '?')} round {entry.get('round', '?')}"
    if now is None:
        raise PrivacyError(f"{ledger} is missing, but its audit log records ε = "
                           f"{entry['epsilon']:.4f} spent from it ({when}): {fix}")
    raise PrivacyError(f"{ledger} holds ε = {now:.4f}, below the ε = {entry['epsilon']:.4f} "
                       f"its audit log records ({when}): an older copy or an edited ledger; "
                       f"{fix}")


def acknowledge(root: str | Path) -> list[dict[str, Any]]:
    """Accept every ledger of ``root`` that is missing or below its audit log's last ε: one
    audit line each, whose ε (the ledger's now, 0 when missing) is the new reference. Returns
    the lines written (none when every ledger agrees with the log)."""
    written = []
    for name, entry in sorted(last_recorded(root).items()):
        lower, now = behind(Path(root) / name, entry)
        if not lower:
            continue
        line = {"time": dt.datetime.now(dt.timezone.utc).isoformat(), "event": ACKNOWLEDGED,
                LEDGER_KEY: name, "epsilon": 0.0 if now is None else now,
                "delta": entry.get("delta"), "recorded_before": entry["epsilon"],
                "missing": now is None}
        append_jsonl(Path(root) / AUDIT_LOG, line)
        written.append(line)
    return written
