"""Which ledger a partner's data belongs to, recognised by its rows, not by a file's path.

A ledger (``LEDGER-DIR/NAME@SOURCE.json``) remembers the rows spent from it as keyed digests
(common.privacy.partner_secret.row_digests) in ``LEDGER-DIR/rows/NAME@SOURCE.rows``. A partner whose
own ledger for a source does not exist yet looks there first: data that shares rows with a
ledger composes into it, so moving or renaming the file, re-pointing a symlink or starting the
partner under another name on the same data continues the same ε. Only the partner's explicit
``data-id`` names a ledger without looking. No flwr here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common.errors import CheckpointError
from common.privacy.ledger_audit import check_not_rolled_back
from common.privacy.partner_secret import partner_secret
from common.privacy.ledger import ledger_lock
from common.infra.storage import read_sealed_json, write_sealed_json

ROWS_DIR = "rows"  # LEDGER-DIR/rows/NAME@SOURCE.rows: each ledger's row digests
ROWS_VERSION = 1


@dataclass(frozen=True)
class LedgerId:
    """A ledger file and the data source its body names."""

    path: Path
    source: str


def ledger_id(root: str | Path, name: str, source: str) -> LedgerId:
    return LedgerId(Path(root) / f"{name}@{source}.json", source)


def _rows_path(ledger: Path) -> Path:
    return ledger.parent / ROWS_DIR / f"{ledger.stem}.rows"


def _read_rows(path: Path) -> frozenset[str]:
    body = read_sealed_json(path)
    if body.get("version") != ROWS_VERSION:
        raise CheckpointError(f"{path}: row index version {body.get('version')!r} is not "
                              f"{ROWS_VERSION}")
    return frozenset(body["rows"])


def resolve_ledger(root: str | Path, name: str, source: str,
                   rows: Callable[[bytes], frozenset[str]] | None, any_name: bool) -> LedgerId:
    """The ledger ``name`` spends from in ``root`` for its data: the one ``source`` names when
    ``rows`` is None (the partner's explicit data-id), else the one its rows (their digests
    under the partner's secret) belong to (``recognise``). PrivacyError when that ledger is
    missing or lower than its audit log says, until the partner acknowledges it
    (common.privacy.ledger_audit), before anything is spent."""
    if rows is None:
        found = ledger_id(root, name, source)
    else:
        found = recognise(root, name, source, rows(partner_secret(root)), any_name)
    check_not_rolled_back(root, found.path)
    return found


def recognise(root: str | Path, name: str, source: str, rows: frozenset[str],
              any_name: bool) -> LedgerId:
    """The ledger of ``name``'s data ``source`` whose rows are ``rows``: its own ledger for the
    source when one exists; else the ledger that shares most rows with it (of any partner name
    in ``root`` when ``any_name``, a partner with its own data; a simulated partner's slices
    are its own, so of ``name`` only), one that still exists first; else a new one for the
    source. The chosen ledger, once it exists, remembers ``rows``."""
    own = ledger_id(root, name, source)
    found = own if own.path.exists() else (_best_match(Path(root), name, rows, any_name) or own)
    if found.path.exists():
        remember(found.path, rows)
    return found


def _best_match(root: Path, name: str, rows: frozenset[str], any_name: bool) -> LedgerId | None:
    best: tuple[bool, int, str] | None = None
    for index in sorted((root / ROWS_DIR).glob("*.rows")):
        owner, _, source = index.stem.rpartition("@")
        if not source or not (any_name or owner == name):
            continue
        shared = len(rows & _read_rows(index))
        if shared:
            rank = ((root / f"{index.stem}.json").exists(), shared, index.stem)
            best = max(best, rank) if best else rank
    if best is None:
        return None
    owner, _, source = best[2].rpartition("@")
    return ledger_id(root, owner, source)


def remember(ledger: Path, rows: frozenset[str]) -> None:
    """Add ``rows`` to the digests ``ledger`` remembers (atomic, 0600, under a lock); nothing
    is written when it knows them all."""
    path = _rows_path(ledger)
    with ledger_lock(path):
        known = _read_rows(path) if path.exists() else frozenset()
        if rows <= known:
            return
        write_sealed_json(path, {"version": ROWS_VERSION, "ledger": ledger.name,
                                 "rows": sorted(known | rows)}, mode=0o600)
