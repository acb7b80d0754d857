"""The privacy audit: AUC and exposure against hand-computed values, canary insertion, and a
tiny-BERT audit end to end whose ε is Opacus' accountant's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from common.evaluation import audit as A
from common.data.text import TextDataset
from common.errors import ConfigError, DataError
from simulations.cli import main


def test_auc_hand_cases() -> None:
    assert A.roc_auc([3, 4], [1, 2]) == 1.0  # perfect
    assert A.roc_auc([1, 2], [3, 4]) == 0.0  # inverted
    assert A.roc_auc([5, 5], [5, 5]) == 0.5  # all tied
    # pairs (m, n): (2,1)>, (2,3)<, (4,1)>, (4,3)> -> 3/4
    assert A.roc_auc([2, 4], [1, 3]) == 0.75
    # (2,2) tie -> 1/2, (2,1) > -> 1, (0,2) <, (0,1) < -> 1.5 / 4
    assert A.roc_auc([2, 0], [2, 1]) == 0.375
    with pytest.raises(ValueError):
        A.roc_auc([], [1.0])


def test_auc_matches_area_under_roc_curve() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 30).round(1)
    fpr, tpr = A.roc_curve(members, nonmembers)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert math.isclose(A.roc_auc(members, nonmembers), trapezoid, rel_tol=1e-12)


def test_auc_standard_error_hand_value() -> None:
    # A = 0.5, n1 = n2 = 2: Q1 = 1/3, Q2 = 1/3; var = (0.25 + 2 * (1/3 - 1/4)) / 4 = 5/48
    assert math.isclose(A.auc_standard_error(0.5, 2, 2), math.sqrt(5 / 48))


def test_exposure_hand_cases() -> None:
    # 7 alternatives + the canary = 8 candidates; lowest loss -> rank 1 -> log2 8 = 3 bits
    assert A.exposure(0.1, [1, 2, 3, 4, 5, 6, 7]) == 3.0
    # 3 alternatives lower -> rank 4 -> 3 - 2 = 1 bit; highest -> rank 8 -> 0 bits
    assert A.exposure(3.5, [1, 2, 3, 4, 5, 6, 7]) == 1.0
    assert A.exposure(9.0, [1, 2, 3, 4, 5, 6, 7]) == 0.0
    # one tie counts one half: rank 1 + 1 + 0.5 = 2.5 among 4 -> 2 - log2 2.5
    assert math.isclose(A.exposure(2.0, [1, 2, 3]), 2 - math.log2(2.5))
    # per canary, the candidates are scored under the canary's own label
    log_probs = np.log([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    got = A.exposures([-math.log(0.95), -math.log(0.95)], [0, 1], log_probs)
    assert got.tolist() == [2.0, 2.0]
    assert A.exposures([-math.log(0.3)], [1], log_probs).tolist() == [2 - math.log2(3)]


def test_canaries_unique_and_insertion_keeps_data() -> None:
    data = TextDataset(("alpha beta", "gamma delta", "alpha beta"), (0, 1, 0), ("a", "b"))
    vocab = A.canary_vocabulary(["alpha", "beta", "##ing", "[CLS]", "gamma", "delta", "ab",
                                 "epsilon", "zeta", "eta"])
    assert vocab == ("alpha", "beta", "delta", "epsilon", "eta", "gamma", "zeta")
    settings = A.AuditSettings(canaries=5, repeats=3, candidates=20, words=3, seed=1)
    canaries = A.make_canaries(vocab, data.label_names, settings, exclude=data.texts)
    texts = canaries.inserted.texts + canaries.held_out.texts + canaries.candidates
    assert len(texts) == len(set(texts)) == 30 and not set(texts) & set(data.texts)
    assert canaries.inserted.labels == canaries.held_out.labels  # same label multiset
    before = (data.texts, data.labels)
    audited = A.insert_canaries(data, canaries.inserted, 3, np.random.default_rng(0))
    assert (data.texts, data.labels) == before
    assert len(audited) == 3 + 5 * 3
    rows = list(zip(audited.texts, audited.labels))
    for row in zip(data.texts, data.labels):
        assert rows.count(row) == list(zip(data.texts, data.labels)).count(row)
    for row in zip(canaries.inserted.texts, canaries.inserted.labels):
        assert rows.count(row) == 3
    assert not set(canaries.held_out.texts) & set(audited.texts)
    # each canary's copies are one canary person; every other row is a person of its own
    owners = {t: {p for tt, p in zip(audited.texts, audited.persons) if tt == t}
              for t in canaries.inserted.texts}
    assert all(len(o) == 1 and next(iter(o)).startswith("canary-") for o in owners.values())
    assert len(set(audited.persons)) == 3 + 5
    assert A.make_canaries(vocab, data.label_names, settings, data.texts) == canaries  # seeded


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="canaries = 1"):
        A.AuditSettings(canaries=1)
    with pytest.raises(ConfigError, match="repeats = 0"):
        A.AuditSettings(repeats=0)
    with pytest.raises(ConfigError, match="too close"):
        A.draw_sentences(("ab", "cd"), 3, 1, np.random.default_rng(0))
    with pytest.raises(DataError, match="whole alphabetic words"):
        A.canary_vocabulary(["[CLS]", "##s", "a"])


@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "0"], "must be a positive number or 'inf'"),
    (["--epsilon", "lots"], "must be a positive number or 'inf'"),
])
def test_bad_epsilon_is_a_usage_error(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--canaries", "1"], "audit canaries = 1 must be an integer >= 2"),
    (["--repeats", "0"], "audit repeats = 0 must be an integer >= 1"),
    (["--epochs", "0"], "--epochs 0 must be at least 1"),
    (["--set", "delta=2"], "'delta' = 2.0 must be < 1"),
    (["--data", "missing.csv"], "missing.csv: no such data file"),
    (["--set", 'task="token-classification"'], "the audit's canaries are labelled texts"),
])
def test_bad_options_are_clear_errors(argv: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "audit.json").exists()


def test_tiny_bert_audit_end_to_end(tiny_bert: str, tmp_path: Path) -> None:
    argv = ["audit", "--base-model", tiny_bert, "--epsilon", "4", "--canaries", "6",
            "--repeats", "2", "--candidates", "30", "--epochs", "2", "--out", str(tmp_path),
            "--set", "examples-per-partner=40", "--set", "batch-size=8",
            "--set", "dp-plan-check=false"]
    assert main(argv) == 0
    body = json.loads((tmp_path / "audit.json").read_text())
    arm = body["arms"]["eps=4"]
    accountant = RDPAccountant()
    accountant.history = [(arm["noise_multiplier"], arm["sample_rate"], arm["steps"])]
    assert arm["epsilon_spent"] == accountant.get_epsilon(arm["delta"])
    assert abs(arm["epsilon_spent"] - 4) < 0.05 and arm["delta"] == 1e-5
    assert arm["sample_rate"] == 1 / math.ceil(arm["training_rows_with_canaries"] / 8)
    assert arm["training_rows_with_canaries"] == 32 + 6 * 2
    assert body["audit"]["repeats"] == 2 and body["audit"]["canaries_inserted"] == 6
    assert len(arm["losses_inserted"]) == len(arm["losses_held_out"]) == 6
    assert arm["mia_auc"] == A.roc_auc(-np.array(arm["losses_inserted"]),
                                       -np.array(arm["losses_held_out"]))
    assert 0 <= arm["exposure_inserted"]["min"] <= arm["max_exposure_possible"] == math.log2(31)
    assert (tmp_path / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_tiny_bert_audit_without_dp(tiny_bert: str, tmp_path: Path) -> None:
    argv = ["audit", "--base-model", tiny_bert, "--epsilon", "inf", "--canaries", "4",
            "--repeats", "1", "--candidates", "10", "--epochs", "1", "--out", str(tmp_path),
            "--set", "examples-per-partner=30"]
    assert main(argv) == 0
    arm = json.loads((tmp_path / "audit.json").read_text())["arms"]["eps=inf"]
    assert arm["dp"] is False and arm["epsilon_spent"] is None and arm["noise_multiplier"] == 0


def test_tiny_bert_canary_person_audit(tiny_bert: str, tmp_path: Path) -> None:
    """--unit person: ε per person at the persons' q, each canary's copies one person."""
    argv = ["audit", "--base-model", tiny_bert, "--epsilon", "4", "--canaries", "6",
            "--repeats", "3", "--candidates", "30", "--epochs", "1", "--out", str(tmp_path),
            "--unit", "person", "--finetune", "pooled-head", "--set", "examples-per-partner=40",
            "--set", "batch-size=8", "--set", "dp-plan-check=false"]
    assert main(argv) == 0
    arm = json.loads((tmp_path / "audit.json").read_text())["arms"]["eps=4"]
    assert arm["unit"] == "person" and arm["persons"] == 32 + 6
    assert arm["training_rows_with_canaries"] == 32 + 6 * 3
    assert arm["sample_rate"] == 1 / math.ceil(38 / 8)  # q over persons, not rows
    accountant = RDPAccountant()
    accountant.history = [(arm["noise_multiplier"], arm["sample_rate"], arm["steps"])]
    assert arm["epsilon_spent"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert abs(arm["epsilon_spent"] - 4) < 0.05
