"""End to end through Flower's simulation engine (`flwr run`), 2 partners × 3 rounds, tiny BERT;
and that run again with its coordinator SIGKILLed mid-run and resumed: same rounds, the bitwise
same model, every training counted (simulated partners replay their DP noise exactly: seeded
per partner and round)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from client.data import PartnerSettings, partner_dataset
from common.config import RunConfig
from common.model.factory import build_model, load_tokenizer, load_trainable_state
from common.sources import run_labels
from common.evaluation.scoring import evaluate
from common.training.loop import encode
from server.checkpoint import latest_checkpoint
from simulations.cli import main
from simulations.simulate import _port_in_use, local_superlink_ports

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("consortium"))


def simulate_args(tiny_bert: str, out: Path, *extra: str) -> list[str]:
    return [CLI, "simulate", "--partners", "2", "--rounds", "3", "--out", str(out),
            "--set", f'base-model="{tiny_bert}"', "--set", "examples-per-partner=60",
            "--set", "max-length=16", "--set", "batch-size=8",
            "--set", "dp-plan-check=false", "--set", "local-epochs=1",
            "--set", 'finetune="lora"',  # the transformers export; pooled-head: test_clean_stop
            *extra]


def simulate(tiny_bert: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(simulate_args(tiny_bert, out, *extra), capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not any(_port_in_use(port) for _, port in local_superlink_ports()), \
        "the local SuperLink was left running"
    return proc


@pytest.fixture(scope="module")
def finished_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    proc = simulate(tiny_bert, out)
    assert "round 3/3 | partners 2 | accuracy mean" in proc.stderr + proc.stdout
    (out.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    return out


def test_console_is_one_line_per_round_partner_progress_and_no_library_noise(
        finished_run: Path) -> None:
    """The console of `consortium simulate` (the README demo's command) by default; everything
    Flower and Ray print is in OUT/flwr.log instead."""
    lines = (finished_run.parent / "console.txt").read_text().splitlines()
    for rnd in (1, 2, 3):
        assert sum(f"round {rnd}/3 | partners 2 |" in line for line in lines) == 1
        for partner in ("partner-0", "partner-1"):  # each partner's progress, Ray or not
            assert sum(f"{partner} round {rnd}:" in line for line in lines) == 1
    noise = [line for line in lines if "\x1b[" in line or re.search(
        r"DEBUG|WARNING|Warning|ClientAppActor|Flower|SuperLink|Ray\b|flwr ", line)]
    assert not noise, noise
    log = (finished_run / "flwr.log").read_text()
    assert "Starting Flower Simulation" in log and "round 3/3 | partners 2 |" in log


def test_outputs_contract(finished_run: Path) -> None:
    lines = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert sorted(lines[0]["partners_replied"]) == ["partner-0", "partner-1"]
    report = json.loads((finished_run / "privacy_report.json").read_text())
    assert sorted(report["partners"]) == ["partner-0", "partner-1"]
    for record in report["partners"].values():
        for key in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
                    "max_grad_norm"):
            assert key in record
        accountant = RDPAccountant()
        accountant.history = [(record["noise_multiplier"], record["sample_rate"],
                               record["steps"])]
        assert record["epsilon"] == pytest.approx(accountant.get_epsilon(record["delta"]),
                                                  rel=0.01)
    assert lines[-1]["max_epsilon"] == pytest.approx(
        max(r["epsilon"] for r in report["partners"].values()))
    model_dir = finished_run / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label[0] == "business"
    AutoTokenizer.from_pretrained(model_dir)
    assert (model_dir / "privacy_report.json").exists()


def test_pipeline_matches_the_runs_evaluation(finished_run: Path) -> None:
    config = RunConfig.from_mapping(json.loads((finished_run / "model" /
                                                "run_config.json").read_text()))
    labels = run_labels(config)
    partner = PartnerSettings(name="partner-0", partition_id=0, num_partitions=2)
    _, test = partner_dataset(config, partner, labels)
    model = build_model(config, labels)
    load_trainable_state(model, latest_checkpoint(finished_run / "checkpoints").arrays)
    ours = evaluate(model, encode(load_tokenizer(config), test, config.max_length))
    classify = pipeline("text-classification", model=str(finished_run / "model"),
                        tokenizer=str(finished_run / "model"), device="cpu")
    theirs = [labels.index(p["label"]) for p in classify(list(test.texts), truncation=True,
                                                         max_length=config.max_length)]
    assert theirs == list(ours.predictions)
    line = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[-1])
    reported = line["eval_per_partner"]["partner-0"]["accuracy"]
    assert reported == pytest.approx(np.mean(np.array(theirs) == np.array(test.labels)))


def test_resume_refuses_a_changed_config(finished_run: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    code = main(["simulate", "--partners", "2", "--rounds", "4", "--resume",
                 "--out", str(finished_run)])  # refused before anything starts: in process
    assert code == 2
    assert "num-rounds: 3 -> 4" in capsys.readouterr().err


def test_rerun_into_a_used_out_dir_is_refused(finished_run: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--out", str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def kill_tree(pid: int) -> None:
    tree, todo, found = _children(), [pid], []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def superlink_pids() -> list[int]:
    """This test's local SuperLink: the one on this worker's port (see conftest.py)."""
    port = dict(local_superlink_ports())["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in text and "--simulation" in text and f"--port {port} " in text:
            pids.append(int(cmdline.parent.name))
    return pids


def releases(out: Path, partner: str) -> int:
    ledger = json.loads(next((out / "ledgers").glob(f"{partner}@*.json")).read_text())
    return len(ledger["body"]["releases"])


def test_coordinator_killed_mid_round_resumes_to_the_same_model(
        finished_run: Path, tiny_bert: str, tmp_path: Path) -> None:
    """The same run as ``finished_run`` (the uninterrupted reference), its coordinator
    (SuperLink + ServerApp + Ray) SIGKILLed once a partner has trained round 2."""
    plain, killed = finished_run, tmp_path / "killed"
    run = subprocess.Popen(simulate_args(tiny_bert, killed), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        # wait until round 1 is checkpointed and a partner has trained round 2
        while time.time() < deadline and not (
                (killed / "checkpoints" / "round-00001.json").exists()
                and (killed / "ledgers").is_dir()
                and any(releases(killed, f"partner-{p}") >= 2 for p in (0, 1))):
            time.sleep(0.2)
        assert time.time() < deadline, "the run never reached round 2"
        for pid in superlink_pids():
            kill_tree(pid)  # the coordinator (SuperLink + ServerApp + Ray) dies mid-round
        assert run.wait(timeout=120) != 0
    finally:
        kill_tree(run.pid)
    at_kill = {p: releases(killed, p) for p in ("partner-0", "partner-1")}
    last_round = latest_checkpoint(killed / "checkpoints").round
    assert last_round < 3 and max(at_kill.values()) > last_round  # a trained round was lost

    resumed = subprocess.run(simulate_args(tiny_bert, killed, "--resume"), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    a = latest_checkpoint(plain / "checkpoints")
    b = latest_checkpoint(killed / "checkpoints")
    assert a.round == b.round == 3
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)  # bitwise
    reports = [json.loads((out / "privacy_report.json").read_text())["partners"]
               for out in (plain, killed)]
    for partner in ("partner-0", "partner-1"):
        assert releases(plain, partner) == 3
        # every training is counted once, including the round whose result was lost: what was
        # spent before the kill, plus one release per round re-run after the last checkpoint
        assert releases(killed, partner) == at_kill[partner] + 3 - last_round
        # and the privacy report's ε pays for them all (steps per round are fixed)
        plain_record, killed_record = reports[0][partner], reports[1][partner]
        assert killed_record["steps"] == plain_record["steps"] // 3 * releases(killed, partner)
        if releases(killed, partner) > 3:  # this partner had trained the lost round
            assert killed_record["epsilon"] > plain_record["epsilon"]
