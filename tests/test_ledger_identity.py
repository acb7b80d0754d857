"""Issue 33 item 6: a partner recognises its data by content, not by a file's path. A renamed or
moved file, a symlink, another partner name on the same data all continue one ledger; a ledger
that is missing or lower than the audit log says is refused, nothing spent, until the partner
acknowledges it. In process through the partner's round, and black-box through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.partner import train_round
from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import PrivacyError
from common.training.fingerprint import frozen_fingerprint
from common.privacy.ledger_identity import ROWS_DIR, recognise
from common.model.factory import build_model, trainable_state
from common.privacy.partner_secret import SECRET_FILE, row_digests
from simulations.cli import main

DELTA = 1e-5


def _config(tiny_bert: str, tmp_path: Path) -> RunConfig:
    return RunConfig(base_model=tiny_bert, labels="neg,pos", max_length=16, batch_size=8,
                     local_epochs=1, num_rounds=1, noise_multiplier=1.0, delta=DELTA,
                     dp_plan_check=False, out_dir=str(tmp_path / "out"))


def _partner(tmp_path: Path, data: Path, name: str = "org-a") -> PartnerSettings:
    return PartnerSettings(name=name, data_path=str(data), ledger_dir=str(tmp_path / "ledgers"),
                           allow_unlearnable_rounds=True)


def _round(config: RunConfig, partner: PartnerSettings, run: str) -> float:
    model = build_model(config, config.label_list)
    reply = train_round(config, partner, trainable_state(model), frozen_fingerprint(model), 1,
                        run)
    return reply.metrics["epsilon"]


def _ledgers(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ledgers").glob("*@*.json"))


def _releases(path: Path) -> list[str]:
    return [r["run_id"] for r in json.loads(path.read_text())["body"]["releases"]]


def test_a_moved_file_a_symlink_and_another_name_continue_one_ledger(
        tiny_bert: str, tmp_path: Path, sentiment_csv: Path) -> None:
    config = _config(tiny_bert, tmp_path)
    spent = [_round(config, _partner(tmp_path, sentiment_csv), "first")]
    moved = tmp_path / "elsewhere" / "renamed.csv"
    moved.parent.mkdir()
    shutil.move(sentiment_csv, moved)
    spent.append(_round(config, _partner(tmp_path, moved), "moved"))
    link = tmp_path / "current.csv"
    link.symlink_to(moved)
    spent.append(_round(config, _partner(tmp_path, link, name="org-b"), "symlink, other name"))
    [ledger] = _ledgers(tmp_path)  # one ledger: ε continued, never restarted at 0
    assert ledger.name.startswith("org-a@file-")
    assert _releases(ledger) == ["first", "moved", "symlink, other name"]
    assert spent[0] < spent[1] < spent[2]
    secret = tmp_path / "ledgers" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    [rows] = (tmp_path / "ledgers" / ROWS_DIR).glob("*.rows")
    assert "the movie was" not in rows.read_text()  # keyed digests, never a text
    assert rows.stat().st_mode & 0o777 == 0o600


def test_a_lost_or_older_ledger_is_refused_until_acknowledged(
        tiny_bert: str, tmp_path: Path, sentiment_csv: Path) -> None:
    config, partner = _config(tiny_bert, tmp_path), _partner(tmp_path, sentiment_csv)
    _round(config, partner, "one")
    [ledger] = _ledgers(tmp_path)
    backup = ledger.read_bytes()
    _round(config, partner, "two")
    ledger.write_bytes(backup)  # an older copy restored: ε would drop silently
    with pytest.raises(PrivacyError, match="below the ε .* acknowledge-ledger"):
        _round(config, partner, "three")
    assert _releases(ledger) == ["one"]  # nothing spent
    ledger.unlink()
    with pytest.raises(PrivacyError, match="is missing, but its audit log .* acknowledge-ledger"):
        _round(config, partner, "three")
    assert not _ledgers(tmp_path)  # nothing spent, no fresh ledger
    assert main(["partner", "acknowledge-ledger", "--ledger-dir", str(tmp_path / "ledgers")]) == 0
    audit = [json.loads(x) for x in (tmp_path / "ledgers" / "audit.jsonl").read_text().split("\n")
             if x]
    assert audit[-1]["event"] == "ledger-acknowledged" and audit[-1]["missing"]
    _round(config, partner, "three")  # the partner's choice is on the record: it goes on
    assert [p.name for p in _ledgers(tmp_path)] == [ledger.name]
    assert _releases(ledger) == ["three"]


def test_a_simulated_partner_recognises_only_its_own_ledgers(tmp_path: Path) -> None:
    """Simulated partners are slices of one file: a text both slices hold (a duplicate) must
    not merge partner-1 into partner-0's ledger; a partner with its own data looks at every
    name in its ledger directory."""
    key = bytes(32)
    (tmp_path / "partner-0@sim-a.json").write_text("{}")
    recognise(tmp_path, "partner-0", "sim-a", row_digests(key, ["x", "y"]), any_name=False)
    assert recognise(tmp_path, "partner-1", "sim-b", row_digests(key, ["y", "z"]),
                     any_name=False).path.name == "partner-1@sim-b.json"
    assert recognise(tmp_path, "org-b", "file-c", row_digests(key, ["y", "z"]),
                     any_name=True).path.name == "partner-0@sim-a.json"


@pytest.mark.heavy  # ≈ 70 s: two real simulations (issue 33's CLI check)
def test_renaming_the_data_between_two_simulations_continues_epsilon(
        tiny_bert: str, tmp_path: Path) -> None:
    """Black-box through `consortium simulate`: the same partners' ledger directory, the data
    file renamed between two runs. partner-1's ε continues from the first run; partner-0's
    ledger was deleted meanwhile, so it refuses (the run goes on with partner-1: min-partners
    1) and spends nothing until its operator runs `consortium partner acknowledge-ledger`."""
    ledgers = tmp_path / "ledgers"
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(
        f"review {i} was {'great good' if i % 2 else 'awful bad'},{'pos' if i % 2 else 'neg'}\n"
        for i in range(48)))

    def simulate(out: str) -> dict:
        cli = str(Path(sys.executable).with_name("consortium"))
        proc = subprocess.run(
            [cli, "simulate", "--partners", "2", "--rounds", "1", "--data", str(data),
             "--out", str(tmp_path / out), "--set", f'base-model="{tiny_bert}"',
             "--set", f'ledger-dir="{ledgers}"', "--set", "max-length=16",
             "--set", "batch-size=8", "--set", "dp-plan-check=false",
             "--set", "min-partners=1", "--set", "noise-multiplier=1.0"],
            capture_output=True, text=True, timeout=420)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((tmp_path / out / "privacy_report.json").read_text())["partners"]

    first = simulate("run-1")
    before = {p.name: len(_releases(p)) for p in _ledgers(tmp_path)}
    assert len(before) == 2
    data = data.rename(tmp_path / "reviews-v2.csv")
    [lost] = [p for p in _ledgers(tmp_path) if p.name.startswith("partner-0@")]
    lost.unlink()
    second = simulate("run-2")
    assert second["partner-1"]["epsilon"] > first["partner-1"]["epsilon"]  # continued
    kept = {p.name: len(_releases(p)) for p in _ledgers(tmp_path)}
    assert kept == {name: 2 for name in before if name != lost.name}  # no ledger at ε = 0
    audit = (ledgers / "audit.jsonl").read_text()
    assert "acknowledge-ledger" in audit and "is missing" in audit
    done = subprocess.run([str(Path(sys.executable).with_name("consortium")), "partner",
                           "acknowledge-ledger", "--ledger-dir", str(ledgers)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"acknowledged {lost.name}" in done.stdout
