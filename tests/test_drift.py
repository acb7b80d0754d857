"""Drift since release (issue 17): the coordinator's drift check on a hand-computed case, the
partner's monitoring policy, and a monitoring run (the coordinator's real run loop and the
partners' real ClientApp handlers in process, simulations.local_grid) where one partner's new
data comes from a domain the release gets wrong; `consortium partner evaluate --group-column`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from client.policy import PartnerSettings
from common.config import RunConfig
from common.errors import ConfigError
from common.model.release import monitoring_config, read_release
from common.infra.storage import read_sealed_json
from server.monitoring import drift_check
from simulations.cli import main

LABELS = "neg,pos"
TRAINING = {"dp": False, "num-rounds": 1, "local-epochs": 5, "learning-rate": 0.5,
            "max-length": 16, "finetune": "pooled-head"}


def write_reviews(path: Path, domains: dict[str, tuple[int, bool]], start: int = 0) -> Path:
    """``count`` reviews per domain (labels flipped where asked), a site column alternating."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label", "domain", "site"])
        for domain, (count, flipped) in domains.items():
            for i in range(start, start + count):
                good = i % 2 == 0
                words = "great good fine" if good else "awful bad"
                out.writerow([f"the {'movie' if i % 3 else 'food'} was {words} {i}",
                              "pos" if good != flipped else "neg", domain,
                              "north" if i % 4 < 2 else "south"])
    return path


def test_drift_check_by_hand() -> None:
    at_release = {"a": 0.90, "b": 0.80, "c": 0.85, "d": None, "gone": 0.70}
    now = {"a": 0.70, "b": 0.78, "c": 0.80, "d": 0.50, "new": 0.60}
    rows = drift_check(at_release, now, 0.05)
    assert sorted(rows) == ["a", "b", "c", "d", "new"]  # who reported now; "gone" did not
    assert rows["a"]["drop"] == pytest.approx(0.20) and rows["a"]["drift"]
    assert rows["b"]["drop"] == pytest.approx(0.02) and not rows["b"]["drift"]
    assert rows["c"]["drop"] == pytest.approx(0.05) and not rows["c"]["drift"]  # not more
    assert rows["d"] == {"now": 0.5, "at_release": None, "drop": None, "in_baseline": True,
                         "drift": False}
    assert rows["new"] == {"now": 0.6, "at_release": None, "drop": None, "in_baseline": False,
                           "drift": False}
    assert [n for n, r in drift_check(at_release, now, 0.01).items() if r["drift"]] == \
        ["a", "b", "c"]


def test_monitoring_policy_and_config() -> None:
    assert PartnerSettings.from_node_config({"data-path": "own.csv"}).monitoring == "off"
    assert PartnerSettings.from_node_config({}).monitoring == "counts"  # simulated
    assert PartnerSettings.from_node_config({"monitoring": "off"}).monitoring == "off"
    with pytest.raises(ConfigError, match="monitoring = 'rows' is not valid"):
        PartnerSettings.from_node_config({"monitoring": "rows"})
    with pytest.raises(ConfigError, match="leave init-from and resume unset"):
        RunConfig.from_mapping({"monitor": "runs/a/model", "init-from": "runs/a/model"})
    with pytest.raises(ConfigError, match="drift-threshold"):
        RunConfig.from_mapping({"drift-threshold": -0.1})


@pytest.fixture(scope="module")
def release(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two partners, one round (no DP: a tiny model that learns the words), in process."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    root = tmp_path_factory.mktemp("drift")
    data = write_reviews(root / "reviews.csv", {"movies": (60, False)})
    config = RunConfig.from_mapping({"base-model": tiny_bert, "data": str(data),
                                     "labels": LABELS, "out-dir": str(root / "run-1"),
                                     **TRAINING})
    return run_federation(LocalGrid(config, 2), config) / "model"


def test_a_partner_whose_new_data_drifted_is_flagged(release: Path, tmp_path: Path) -> None:
    """partner-0: new reviews like the old; partner-1: a domain whose labels are the other way
    round (the release gets them wrong); partner-2: not in the release's evaluation (its own
    monitor-data file); partner-3: its own data and no monitoring policy, so off: refused;
    partner-4: a monitor-data file it cannot read: refused without quoting the file."""
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    data = write_reviews(tmp_path / "new.csv", {"a-same": (20, False), "b-flipped": (20, True),
                                                "c-unused": (4, False), "d-own": (4, False),
                                                "e-bad": (4, False)},
                         start=100)
    extra = write_reviews(tmp_path / "partner-2.csv", {"x": (12, False)}, start=200)
    bad = tmp_path / "partner-4.csv"
    bad.write_text("text,label,site\nthe food was good,maybe,north\n")
    config = monitoring_config(RunConfig.from_mapping({
        "data": str(data), "partition": "column:domain", "out-dir": str(tmp_path / "mon"),
        "group-column": "site", "min-group-size": 5}), read_release(release))
    assert config.label_list == ("neg", "pos") and config.finetune == "pooled-head"
    grid = LocalGrid(config, 5, run_id=2, partner_configs={
        2: {"monitor-data": str(extra)},
        3: {"data-path": str(data), "ledger-dir": str(tmp_path / "ledger-3")},
        4: {"monitor-data": str(bad)}})
    for _ in range(2):  # two monitoring runs: the release's history holds both
        out = run_federation(grid, config)
    assert {kind for kind, _, _ in grid.sent} == {"evaluate"}  # nothing trained
    summary = json.loads((out / "monitoring.json").read_text())
    rows = summary["partners"]
    assert summary["flagged"] == ["partner-1"] and summary["metric"] == "accuracy"
    assert rows["partner-0"]["at_release"] == pytest.approx(1.0)
    assert rows["partner-0"]["now"] == pytest.approx(1.0) and not rows["partner-0"]["drift"]
    assert rows["partner-1"]["now"] == pytest.approx(0.0) and rows["partner-1"]["drift"]
    assert rows["partner-1"]["examples"] == 20
    assert summary["not_in_baseline"] == ["partner-2"] and not rows["partner-2"]["drift"]
    assert rows["partner-2"]["examples"] == 12
    assert set(rows["partner-0"]["groups"]) == {"north", "south"}  # 10 each, over 5
    off, unreadable = summary["refused"]
    assert off["partner"] == "partner-3" and "monitoring = off" in off["reason"]
    assert unreadable["partner"] == "partner-4" and "could not be read" in unreadable["reason"]
    assert "maybe" not in unreadable["reason"]  # the row stays at the partner
    text = (out / "monitoring.md").read_text()
    assert "## Drift since release" in text and "**Drift: partner-1**" in text
    assert "Drift: partner-0" not in text and "partner-3: " in text
    history = (out / "monitoring" / f"{read_release(release).release_id}.jsonl")
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    assert len(lines) == 2 and summary["history"]["runs"] == 2
    sent = lines[-1]["reports"]["partner-1"]
    assert "eval-loss" not in sent and sent["num-examples"] == 20  # counts, not the loss
    assert sent["tp/pos"] == 0 and sent["fn/pos"] == 10
    audit = [json.loads(x) for x in (out / "ledgers" / "audit.jsonl").read_text().splitlines()]
    assert {a["message"] for a in audit} == {"monitoring"}
    answered = {path.name.split("@")[0]: read_sealed_json(path)
                for path in (out / "ledgers").glob("*@*.json")}
    assert sorted(answered) == ["partner-0", "partner-1", "partner-2"]  # their answers counted
    for body in answered.values():  # two monitoring answers each (issue 33 item 2), no ε spent
        assert not body["releases"] and [a["what"] for a in body["answers"]] == ["monitoring"] * 2


def test_partner_evaluate_scores_groups(release: Path, tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "new.csv", {"movies": (24, False)}, start=300)
    assert main(["partner", "evaluate", "--model", str(release), "--data", str(data),
                 "--group-column", "site", "--min-group-size", "12",
                 "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "monitoring.json").read_text())
    groups = report["groups"]["eval_groups"]
    assert {g: v["examples"] for g, v in groups.items()} == {"north": 12, "south": 12}
    assert report["groups"]["eval_group_gap"] == pytest.approx(0.0)
    assert "| north | 12 |" in (tmp_path / "report" / "monitoring.md").read_text()


def test_simulate_takes_the_releases_model_settings(release: Path, tmp_path: Path) -> None:
    """`consortium simulate --monitor`: checked before anything starts; the release's labels,
    finetune and max-length, whatever the command line left at their defaults."""
    from simulations.simulate import Federation, preflight

    data = write_reviews(tmp_path / "new.csv", {"a": (10, False), "b": (10, True)})
    config = preflight(RunConfig.from_mapping({
        "monitor": str(release.parent), "data": str(data), "partition": "column:domain",
        "out-dir": str(tmp_path / "mon")}), Federation(2))
    assert config.monitor == str(release) and config.label_list == ("neg", "pos")
    assert (config.finetune, config.max_length) == ("pooled-head", 16)


def test_a_setting_that_contradicts_the_release_is_refused(release: Path, tmp_path: Path):
    """A model setting given on purpose and not the release's is an error, never overridden."""
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max-length = 64 \(the release has 16\)"):
        monitoring_config(RunConfig.from_mapping({"max-length": 64}), read_release(release))
