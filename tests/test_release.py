"""Releases with lineage (issue 17): release.json, `--init-from` with its checks, partners'
ledgers continuing across releases; and `consortium partner evaluate` (client.monitor)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.data import partner_dataset
from client.partner import weights_sha256
from client.policy import PartnerSettings
from common.code_hash import running_code_hash
from common.config import RunConfig
from common.errors import ConfigError
from common.model.release import check_layout, read_release, release_weights
from common.infra.storage import read_sealed_json
from simulations.cli import main

LABELS = ("neg", "pos")
SETTINGS = {"max-length": 16, "batch-size": 8, "dp-plan-check": False, "local-epochs": 1,
            "finetune": "lora", "num-rounds": 1}


def add_rows(path: Path, start: int, count: int) -> Path:
    """Sentiment rows ``start`` .. ``start + count - 1`` appended to ``path`` (header if new)."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        out = csv.writer(handle)
        if new:
            out.writerow(["text", "label"])
        for i in range(start, start + count):
            good = i % 2 == 0
            words = "great good fine" if good else "awful bad"
            out.writerow([f"the {'movie' if i % 3 else 'food'} was {words} {i}",
                          "pos" if good else "neg"])
    return path


def _sets(tiny_bert: str) -> list[str]:
    return [arg for key, value in {"base-model": tiny_bert, **SETTINGS}.items()
            for arg in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def release_1(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One round, two partners, on 60 rows: the coordinator's own round loop and the partners'
    ClientApp handlers in this process (simulations.local_grid); ledgers in OUT/ledgers."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    root = tmp_path_factory.mktemp("release")
    data = add_rows(root / "reviews.csv", 0, 60)
    config = RunConfig.from_mapping({"base-model": tiny_bert, "data": str(data),
                                     "labels": ",".join(LABELS), "out-dir": str(root / "run-1"),
                                     **SETTINGS})
    return run_federation(LocalGrid(config, 2), config)


def test_release_records_its_lineage(release_1: Path) -> None:
    release = read_release(release_1)  # the run's out-dir leads to its model directory
    record, model = release.record, release_1 / "model"
    assert release.path == model and record["parent"] is None
    assert record["release_id"].startswith("rel-") and record["labels"] == list(LABELS)
    assert record["run_config"] == json.loads((model / "run_config.json").read_text())
    report = json.loads((model / "privacy_report.json").read_text())
    assert {n: p["epsilon"] for n, p in record["partners"].items()} == \
        {n: p["epsilon"] for n, p in report["partners"].items()}
    assert record["delta"] == 1e-5 and record["privacy_unit"] == "example"
    assert record["code"]["code_sha256"] == running_code_hash()
    arrays = release_weights(release)
    assert any("lora_A" in name for name in arrays)
    assert record["evaluation"]["metric"] == "accuracy"
    card = (model / "README.md").read_text()
    assert f"Release id: {record['release_id']}" in card
    assert "Parent release: none" in card


def test_layout_and_base_weights_are_checked(release_1: Path) -> None:
    release = read_release(release_1)
    arrays = release_weights(release)
    fingerprint = release.record["frozen_fingerprint"]
    check_layout(release, arrays, fingerprint)
    name = sorted(arrays)[0]
    with pytest.raises(ConfigError, match="trainable layout differs.*dtype/shape"):
        check_layout(release, {**arrays, name: arrays[name][:1]}, fingerprint)
    with pytest.raises(ConfigError, match="frozen base-model weights differ"):
        check_layout(release, arrays, "0" * 64)


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines the command printed (log lines aside): one, for a one-line error."""
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("consortium: error:")]


@pytest.mark.parametrize("change, named", [
    (["--labels", "pos,neg"], "labels neg,pos in the release, pos,neg in this run"),
    (["--set", 'finetune="head"'], "finetune = 'lora' in the release, 'head' in this run"),
])
def test_a_mismatching_init_from_is_one_line_and_writes_nothing(
        release_1: Path, tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture,
        change: list[str], named: str) -> None:
    out = tmp_path / "run-2"
    code = main(["simulate", "--partners", "2", "--data", str(release_1.parent / "reviews.csv"),
                 "--out", str(out), "--init-from", str(release_1 / "model"),
                 *_sets(tiny_bert), *change])
    (error,) = _errors(capsys)
    assert code == 2 and named in error, error
    assert not out.exists()


def test_run_takes_the_releases_labels_and_checks_its_settings(release_1: Path,
                                                               tiny_bert: str) -> None:
    """`consortium run --init-from` (deployment): checked on the coordinator's machine before
    the run is submitted; --labels may be left to the release."""
    from server.cli import continue_release

    values = {"base-model": tiny_bert, **SETTINGS, "init-from": str(release_1)}
    config = continue_release(RunConfig.from_mapping(values))
    assert config.label_list == LABELS and config.init_from == str(release_1 / "model")
    with pytest.raises(ConfigError, match="lora-r = 8 in the release, 4 in this run"):
        continue_release(RunConfig.from_mapping({**values, "lora-r": 4}))


def _held_out_csv(release_1: Path, path: Path) -> Path:
    """Partner-0's own held-out split of release 1's run, as a labelled file."""
    config = read_release(release_1).config()
    _, test = partner_dataset(config, PartnerSettings("partner-0", 0, 2), LABELS)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label"])
        out.writerows([text, LABELS[label]] for text, label in zip(test.texts, test.labels))
    return path


def test_partner_evaluate_gives_the_runs_own_accuracy(release_1: Path, tmp_path: Path) -> None:
    data = _held_out_csv(release_1, tmp_path / "held-out.csv")
    assert main(["partner", "evaluate", "--model", str(release_1 / "model"), "--data", str(data),
                 "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "monitoring.json").read_text())
    final = json.loads((release_1 / "metrics.jsonl").read_text().splitlines()[-1])
    own = final["eval_per_partner"]["partner-0"]
    assert report["examples"] == own["num_examples"]
    assert report["metric"] == "accuracy" and report["value"] == pytest.approx(own["accuracy"])
    assert sum(c["support"] for c in report["per_class"].values()) == report["examples"]
    assert sum(b["count"] for b in report["calibration"]["bins"]) == report["examples"]
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    assert report["release_id"] in (tmp_path / "report" / "monitoring.md").read_text()


def test_partner_evaluate_refuses_a_malformed_file(release_1: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "new.csv"
    data.write_text("text,label\nthe food was good,pos\nthe movie was bad,maybe\n")
    code = main(["partner", "evaluate", "--model", str(release_1 / "model"), "--data", str(data),
                 "--out", str(tmp_path / "report")])
    (error,) = _errors(capsys)
    assert code == 2 and f"{data}:3" in error and "maybe" in error, error
    assert not (tmp_path / "report").exists()


def _ledgers(directory: Path) -> dict[str, list[tuple[float, float, int]]]:
    """Each partner's ledger history, read from its file as an auditor would."""
    ledgers = {}
    for path in directory.glob("partner-*@*.json"):
        body = read_sealed_json(path)
        ledgers[path.name.split("@")[0]] = [(r["noise_multiplier"], r["sample_rate"], r["steps"])
                                           for r in body["releases"]]
    return ledgers


@pytest.mark.slow
def test_a_second_release_continues_the_first(release_1: Path, tiny_bert: str,
                                              tmp_path: Path) -> None:
    """Release 2: new rows appended to the same file, started from release 1 as `simulate
    --init-from` does (simulations.simulate.continue_from: labels and ledger-dir from release
    1's run), through the real round loop and ClientApp handlers in process (a second run id)."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid
    from simulations.simulate import continue_from

    data = add_rows(release_1.parent / "reviews.csv", 60, 40)
    out = tmp_path / "run-2"
    config = continue_from(RunConfig.from_mapping({
        "base-model": tiny_bert, "data": str(data), "out-dir": str(out), **SETTINGS}),
        read_release(release_1 / "model"))
    assert config.ledger_dir == str((release_1 / "ledgers").resolve())
    run_federation(LocalGrid(config, 2, run_id=2), config)
    first, second = read_release(release_1), read_release(out)
    assert second.record["parent"]["release_id"] == first.release_id
    assert f"Parent release: {first.release_id}" in (out / "model" / "README.md").read_text()
    # every partner received release 1's weights in round 1 (its own audit log says so)
    audit = [json.loads(line) for line in
             (release_1 / "ledgers" / "audit.jsonl").read_text().splitlines()]
    started = {e["model_sha256"] for e in audit if e["run_id"] != audit[0]["run_id"]}
    assert started == {weights_sha256(release_weights(first))}
    ledgers = _ledgers(release_1 / "ledgers")
    assert sorted(ledgers) == sorted(second.record["partners"]) == ["partner-0", "partner-1"]
    for name, history in ledgers.items():
        assert len(history) == 2  # one round in each release, composed in one ledger
        accountant = RDPAccountant()
        accountant.history = list(history)
        epsilon = second.record["partners"][name]["epsilon"]
        assert epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
        assert epsilon > first.record["partners"][name]["epsilon"]
    new_rows = add_rows(tmp_path / "new.csv", 60, 40)  # the same rows, as a partner's own file
    for release in (first, second):  # accuracy on the new data, for both releases
        assert main(["partner", "evaluate", "--model", str(release.path), "--data",
                     str(new_rows), "--out", str(tmp_path / release.release_id)]) == 0
        report = json.loads((tmp_path / release.release_id / "monitoring.json").read_text())
        assert report["examples"] == 40 and np.isfinite(report["value"])


def test_a_release_from_before_a_setting_existed_continues_with_its_default() -> None:
    """A release written before `lora-freeze-a` existed has no such key: it trained with the
    default (false), so a LoRA run with the default continues it, and one with FFA does not."""
    from common.model.release import Release, check_continues

    record = {"labels": ["a", "b"], "run_config": {
        k: v for k, v in RunConfig(finetune="lora").to_mapping().items() if k != "lora-freeze-a"}}
    old = Release(Path("old"), record)
    check_continues(old, RunConfig(finetune="lora"), ("a", "b"))
    with pytest.raises(ConfigError, match="lora-freeze-a = False in the release, True"):
        check_continues(old, RunConfig(finetune="lora", lora_freeze_a=True), ("a", "b"))
