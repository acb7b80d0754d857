"""Issue 33 items 9 and 10: the held-out split is keyed with the partner's secret (kept beside
its ledger, created once, 0600), so a coordinator that knows the texts cannot compute which rows
are evaluated; and corrections cannot move a held-out text or person into training."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from client.data import partner_data, partner_dataset
from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import PrivacyError
from common.privacy.partner_secret import SECRET_FILE, partner_secret

LABELS = ("neg", "pos")


def _notes(path: Path, rows: int = 200, persons: bool = False) -> Path:
    lines = ["text,label" + (",person" if persons else "")]
    for i in range(rows):
        person = f",p{i // 4}" if persons else ""
        lines.append(f"note {i} was {'good' if i % 2 else 'bad'},{LABELS[i % 2]}{person}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _partner(data: Path, ledgers: Path, **policy: str) -> PartnerSettings:
    return PartnerSettings.from_node_config({"data-path": str(data), "ledger-dir": str(ledgers),
                                             **policy})


def _unkeyed_held_out(texts: tuple[str, ...], fraction: float) -> set[str]:
    """What anyone holding the texts computed before: SHA-256 of each text, no key."""
    def point(text: str) -> float:
        digest = hashlib.sha256(json.dumps(text, ensure_ascii=False).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64
    return {t for t in texts if point(t) < fraction}


def test_the_held_out_split_is_keyed_with_the_partners_secret(tmp_path: Path) -> None:
    data, config = _notes(tmp_path / "notes.csv"), RunConfig(labels="neg,pos")
    train, test = partner_dataset(config, _partner(data, tmp_path / "a"), LABELS)
    all_texts = train.texts + test.texts
    assert set(test.texts) != _unkeyed_held_out(all_texts, 0.2)  # not computable without it
    again = partner_dataset(config, _partner(data, tmp_path / "a"), LABELS)[1]
    assert again.texts == test.texts  # the same secret: the same split, every run
    other = partner_dataset(config, _partner(data, tmp_path / "b"), LABELS)[1]
    assert set(other.texts) != set(test.texts)  # another partner's secret: another split
    secret = tmp_path / "a" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(
        secret.read_text().strip())) == 32
    os.chmod(secret, 0o644)
    with pytest.raises(PrivacyError, match="can be read by others"):
        partner_secret(tmp_path / "a")


def test_a_lost_secret_is_not_replaced_silently(tmp_path: Path) -> None:
    root = tmp_path / "ledgers"
    partner_secret(root)
    (root / "audit.jsonl").write_text(json.dumps(
        {"ledger": "org-a@file-0.json", "epsilon": 1.5, "delta": 1e-5}) + "\n")
    (root / SECRET_FILE).unlink()
    with pytest.raises(PrivacyError, match="missing.*acknowledge-ledger"):
        partner_secret(root)
    assert not (root / SECRET_FILE).exists()


def test_corrections_cannot_move_a_held_out_text_or_person_into_training(
        tmp_path: Path) -> None:
    """A reviewed correction of a held-out person's note, a new note by that person, and a
    training text re-attributed to that person: the person stays held out, every held-out text
    stays held out, and training keeps its own persons."""
    data = _notes(tmp_path / "notes.csv", persons=True)
    ledgers = tmp_path / "ledgers"
    config = RunConfig(labels="neg,pos")
    plain = _partner(data, ledgers, **{"person-column": "person"})
    train, test = partner_dataset(config, plain, LABELS)
    person, held_text = test.persons[0], test.texts[0]
    train_text = train.texts[0]
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("text,label,person\n"
                     f"{held_text},pos,{person}\n"
                     f"a new note by a held-out person,neg,{person}\n"
                     f"{train_text},pos,{person}\n")
    fixed = _partner(data, ledgers, **{"person-column": "person", "corrections": str(fixes)})
    result = partner_data(config, fixed, LABELS)
    assert person not in result.train.persons
    assert not set(result.train.persons) & set(result.test.persons)
    assert set(test.texts) <= set(result.test.texts)
    assert "a new note by a held-out person" in result.test.texts
    assert sorted(result.train.persons) == sorted(train.persons)  # nobody moved sides
    assert result.train.labels[result.train.texts.index(train_text)] == 1  # relabelled in place
    assert result.corrected["corrections"] == 3
