"""End to end through Flower's simulation engine (`flwr run`), 2 partners × 1 round, tiny BERT."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from client.data import PartnerSettings, partner_dataset
from common.config import RunConfig
from common.model import build_model, load_tokenizer, load_trainable_state
from common.sources import run_labels
from common.evaluation import evaluate
from common.training import encode
from server.checkpoint import latest_checkpoint
from simulations.cli import main
from simulations.simulate import _port_in_use, local_superlink_ports

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("consortium"))


def simulate(tiny_bert: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [CLI, "simulate", "--partners", "2", "--rounds", "2", "--out", str(out),
            "--set", f'base-model="{tiny_bert}"', "--set", "examples-per-partner=60",
            "--set", "max-length=16", "--set", "batch-size=8",
            "--set", "dp-plan-check=false", "--set", "local-epochs=1",
            "--set", 'finetune="lora"',  # the transformers export; pooled-head: test_clean_stop
            *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not any(_port_in_use(port) for _, port in local_superlink_ports()), \
        "the local SuperLink was left running"
    return proc


@pytest.fixture(scope="module")
def finished_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    proc = simulate(tiny_bert, out)
    assert "round 2/2 | partners 2 | accuracy mean" in proc.stderr + proc.stdout
    (out.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    return out


def test_console_is_one_line_per_round_partner_progress_and_no_library_noise(
        finished_run: Path) -> None:
    """The console of `consortium simulate` (the README demo's command) by default; everything
    Flower and Ray print is in OUT/flwr.log instead."""
    lines = (finished_run.parent / "console.txt").read_text().splitlines()
    for rnd in (1, 2):
        assert sum(f"round {rnd}/2 | partners 2 |" in line for line in lines) == 1
        for partner in ("partner-0", "partner-1"):  # each partner's progress, Ray or not
            assert sum(f"{partner} round {rnd}:" in line for line in lines) == 1
    noise = [line for line in lines if "\x1b[" in line or re.search(
        r"DEBUG|WARNING|Warning|ClientAppActor|Flower|SuperLink|Ray\b|flwr ", line)]
    assert not noise, noise
    log = (finished_run / "flwr.log").read_text()
    assert "Starting Flower Simulation" in log and "round 2/2 | partners 2 |" in log


def test_outputs_contract(finished_run: Path) -> None:
    lines = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
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
    code = main(["simulate", "--partners", "2", "--rounds", "3", "--resume",
                 "--out", str(finished_run)])  # refused before anything starts: in process
    assert code == 2
    assert "num-rounds: 2 -> 3" in capsys.readouterr().err


def test_rerun_into_a_used_out_dir_is_refused(finished_run: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--out", str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
