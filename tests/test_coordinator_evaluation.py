"""The real round loop in process (simulations.local_grid) on the tiny BERT: what each
metrics.jsonl line says about evaluation and bytes, the coordinator's own set, the model card
and the report at the end — and that a failing report costs nothing else."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from common.config import RunConfig
from common.infra.logs import PACKAGES
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS, synthetic_partner_data


@pytest.fixture
def keep_logging():
    """The ClientApp binds our loggers to the (captured) stderr of the moment; put them back."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in PACKAGES}
    yield
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers = handlers
        logging.getLogger(name).propagate = propagate


def _config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, examples_per_partner=30, max_length=16, batch_size=8,
                  finetune="lora", dp_plan_check=False,
                  local_epochs=1, num_rounds=2, round_timeout=1.0, learning_rate=0.05,
                  out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    return RunConfig(**{**values, **changes})


def _held_out_csv(path: Path) -> Path:
    data = synthetic_partner_data(7, 25, seed=1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((t, LABELS[y]) for t, y in zip(data.texts, data.labels))
    return path


def test_round_lines_report_and_card(tiny_bert: str, tmp_path: Path, keep_logging: None):
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    config = _config(tiny_bert, tmp_path, dp=False,  # ε: tests/test_report.py, a simulation
                     server_eval_data=str(_held_out_csv(tmp_path / "h.csv")))
    out = run_federation(LocalGrid(config, 3), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    model_bytes = sum(a.nbytes for a in trainable_state(build_model(config, LABELS)).values())
    for line in lines:
        assert line["upload_bytes"] == 3 * model_bytes  # uncompressed: one model-size update each
        final = 3 * model_bytes if line is lines[-1] else 0  # the final model's EVALUATE
        assert line["download_bytes"] == 3 * model_bytes + final  # one TRAIN each, 3 partners
        per = {n: p["accuracy"] for n, p in line["eval_per_partner"].items()}
        assert line["eval_worst"] == {"partner": min(per, key=per.get), "value": min(per.values())}
        assert line["eval_gap"] == pytest.approx(max(per.values()) - min(per.values()))
        n = {k: p["num_examples"] for k, p in line["eval_per_partner"].items()}
        assert line["eval_mean"]["accuracy"] == pytest.approx(
            sum(per[k] * n[k] for k in per) / sum(n.values()))
        # pooled per-class: supports add up to every held-out example; TPs to the right answers
        classes = line["eval_per_class"]
        assert list(classes) == list(LABELS)
        held_out = sum(p["num_examples"] for p in line["eval_per_partner"].values())
        assert 9 <= held_out <= 27  # 3 partners × 30 rows, 20 % held out by a hash of the text
        assert sum(c["support"] for c in classes.values()) == line["eval_examples"] == held_out
        right = sum(c["recall"] * c["support"] for c in classes.values() if c["support"])
        assert right == pytest.approx(line["eval_mean"]["accuracy"] * held_out)
        assert line["epsilon_per_partner"] == dict.fromkeys(["partner-0", "partner-1",
                                                             "partner-2"])  # ε = ∞ is null
        assert line["eval_coordinator"]["source"] == "h.csv"
        assert line["eval_coordinator"]["num_examples"] == 25
    card = (out / "model" / "README.md").read_text()
    trained = 90 - held_out  # 3 partners × 30 rows, less the held-out ones
    assert "- Partners: 3" in card and f"all partners together: {trained}" in card
    assert f"| worst partner ({lines[-1]['eval_worst']['partner']}) |" in card
    assert "coordinator's own set (h.csv, 25 examples)" in card
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "coordinator&#x27;s own set" in page


def test_a_failing_report_keeps_the_model(tiny_bert: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, keep_logging: None):
    import server.coordinator as coordinator
    from simulations.local_grid import LocalGrid

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(coordinator, "write_report", broken)
    monkeypatch.setattr(coordinator, "write_live_report", lambda *_args: None)  # the final one
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("server.coordinator").addHandler(handler)
    try:
        config = _config(tiny_bert, tmp_path, num_rounds=1, dp=False)
        out = coordinator.run_federation(LocalGrid(config, 2), config)
    finally:
        logging.getLogger("server.coordinator").removeHandler(handler)
    assert (out / "model" / "model.safetensors").exists()
    assert (out / "model" / "README.md").exists() and (out / "privacy_report.json").exists()
    assert not (out / "report.html").exists()
    failed = [r for r in records if "run report could not be written" in r.getMessage()]
    assert failed and "disk full while drawing" in str(failed[0].exc_info[1])
