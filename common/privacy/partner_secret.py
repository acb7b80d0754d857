"""A partner's secret: 32 random bytes kept beside its ledger (``LEDGER-DIR/partner.secret``,
0600, created once), that keys every hash the partner computes of its own rows.

Two hashes use it: which rows are held out (``held_out_point``: the coordinator, which may know
the texts, cannot compute the split), and each row's identity (``row_digests``: the partner
recognises its data by content, whatever the file is called; client.ledgers). Without the
secret neither can be recomputed, so it is never replaced silently: a ledger directory whose
audit log shows that ledgers were kept under a secret refuses to make a new one until the
partner acknowledges it (``consortium partner acknowledge-ledger``). No flwr here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterable

from common.errors import CheckpointError, PrivacyError
from common.privacy.ledger_audit import audit_names_ledgers

SECRET_FILE = "partner.secret"
_HEX = re.compile(r"[0-9a-f]{64}")
_HELD_OUT, _ROW = b"held-out", b"row"  # one key, two purposes: their hashes never coincide
ROW_DIGEST_BYTES = 8  # 64 bits a row: no collision among billions of rows


def partner_secret(root: str | Path, replace_lost: bool = False) -> bytes:
    """The secret of the partner whose ledger directory is ``root``, created on first use.

    PrivacyError when it is missing although the audit log shows ledgers kept under one (it
    was lost: a new one would move the held-out split and stop recognising the data), unless
    ``replace_lost`` (the partner's explicit acknowledgement); PrivacyError when others may
    read it; CheckpointError when it is damaged."""
    path = Path(root) / SECRET_FILE
    if not path.exists():
        if audit_names_ledgers(root) and not replace_lost:
            raise PrivacyError(
                f"{path} is missing, but the audit log in {root} records ledgers kept under "
                "it: restore it from the backup of that directory (a new secret moves the "
                "held-out split and no longer recognises the data), or run `consortium partner "
                f"acknowledge-ledger --ledger-dir {root}` to start a new one knowingly. Nothing "
                "was spent")
        _create(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PrivacyError(f"{path} can be read by others (mode {mode:03o}); `chmod 600` it")
    text = path.read_text().strip()
    if not _HEX.fullmatch(text):
        raise CheckpointError(f"{path} is damaged (not 64 hex digits); restore it from the "
                              "backup of its ledger directory")
    return bytes.fromhex(text)


def _create(path: Path) -> None:
    """Write a fresh secret to ``path`` unless another process got there first: written in full
    to a private temporary file, then linked into place (which fails if ``path`` exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process of this partner created it: use theirs
    finally:
        os.unlink(tmp)


def _keyed(secret: bytes, purpose: bytes, value: Any) -> bytes:
    message = purpose + b"\0" + json.dumps(value, ensure_ascii=False).encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def held_out_point(secret: bytes | None, value: Any) -> float:
    """A row's place in [0, 1) for the held-out split: HMAC-SHA256 of its text (or person)
    under the partner's secret, so only the partner can tell which rows are held out. None: a
    simulated partner's split, the run author's own, from the plain SHA-256 (public, so a
    research run replays on any machine)."""
    if secret is None:
        digest = hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).digest()
    else:
        digest = _keyed(secret, _HELD_OUT, value)
    return int.from_bytes(digest[:8], "big") / 2.0**64


def row_digests(secret: bytes, texts: Iterable[Any]) -> frozenset[str]:
    """Each row's identity under the partner's secret (hex of the first
    ``ROW_DIGEST_BYTES`` of an HMAC-SHA256 of its text): what a ledger remembers of its rows,
    and nothing anyone without the secret can test a guessed text against."""
    return frozenset(_keyed(secret, _ROW, text)[:ROW_DIGEST_BYTES].hex() for text in texts)
