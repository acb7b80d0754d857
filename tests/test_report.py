"""server.report: report.html from a hand-built run directory; bad input fails cleanly."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.errors import ReportError
from common.infra.logs import PACKAGES
from server.report import REPORT_FILE, write_report
from server.run_data import read_metrics, series
from simulations.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _line(rnd: int, acc: dict[str, float], eps: float, legacy: bool = False) -> dict:
    per = {name: {"accuracy": a, "macro_f1": a - 0.1, "eval_loss": 1 - a, "num_examples": n}
           for (name, a), n in zip(sorted(acc.items()), (100, 50, 50))}
    line = {"round": rnd, "partners_replied": sorted(acc), "failures": [], "train_loss": 1.0 / rnd,
            "eval_failures": [], "eval_accuracy": None, "eval_loss": 0.5, "eval_per_partner": per,
            "max_epsilon": eps}
    if not legacy:  # written by hand, as the coordinator would; worst and gap checked below
        line.update({"eval_metric": "accuracy", "eval_mean": {"accuracy": 0.7},
                     "eval_worst": {"partner": min(acc, key=acc.get), "value": min(acc.values())},
                     "eval_best": {"partner": max(acc, key=acc.get), "value": max(acc.values())},
                     "eval_gap": max(acc.values()) - min(acc.values()),
                     "epsilon_per_partner": {n: eps * (0.9 if n == "b" else 1.0) for n in acc},
                     "upload_bytes": 300_000 * rnd, "download_bytes": 600_000,
                     "eval_per_class": {"neg": {"precision": 0.8, "recall": 0.5, "f1": 8 / 13,
                                                "support": 40.0},
                                        "pos": {"precision": None, "recall": 0.0, "f1": 0.0,
                                                "support": 3.0}}})
    return line


ROUNDS = [{"a": 0.50, "b": 0.40, "c": 0.45}, {"a": 0.70, "b": 0.72, "c": 0.55},
          {"a": 0.80, "b": 0.60, "c": 0.78}]


def make_run(directory: Path, legacy: bool = False) -> Path:
    lines = [_line(i + 1, acc, 2.0 * (i + 1), legacy) for i, acc in enumerate(ROUNDS)]
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    partners = {n: {"epsilon": 6.0, "delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.1,
                    "steps": 60, "rounds_trained": 3, "examples": 400} for n in "abc"}
    (directory / "privacy_report.json").write_text(json.dumps({"dp": True, "partners": partners}))
    (directory / "model").mkdir()
    (directory / "model" / "run_config.json").write_text(json.dumps(
        {"dp": True, "epsilon": 8.0, "delta": 1e-5, "update-clip-norm": 10.0,
         "finetune": "lora", "aggregation": "fedavg"}))
    return directory


@pytest.mark.parametrize("legacy", [False, True])
def test_worst_partner_and_gap_lines(tmp_path: Path, legacy: bool):
    """Old lines (no eval_worst / eval_gap) give the same worst and gap, derived."""
    s = series(read_metrics(make_run(tmp_path / "run", legacy) / "metrics.jsonl"))
    assert s.rounds == [1, 2, 3]
    assert s.worst == pytest.approx([0.40, 0.55, 0.60])  # b, c, b
    assert s.gap == pytest.approx([0.10, 0.17, 0.20])  # 0.50-0.40, 0.72-0.55, 0.80-0.60
    assert s.per_partner["c"] == pytest.approx([0.45, 0.55, 0.78])


def test_report_is_self_contained_with_embedded_plots(tmp_path: Path):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    page = path.read_text(encoding="utf-8")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 4
    for encoded in images:
        assert base64.b64decode(encoded).startswith(PNG_MAGIC)
    for name in ("report_metric.png", "report_epsilon.png", "report_loss.png",
                 "report_bytes.png"):
        assert (run / name).read_bytes().startswith(PNG_MAGIC)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 has "/"
    assert not re.search(r"(https?:|ftp:|//[a-z]|<script|<link|<iframe|@import)", text,
                         re.IGNORECASE)
    assert "fairness gap (best − worst)" in page and "0.2000" in page  # final gap
    assert "worst partner (b)" in page and "For your privacy officer" in page
    assert "<td>neg</td><td>0.8000</td><td>0.5000</td><td>0.6154</td><td>40</td>" in page
    assert "The run's target was ε = 8 per partner" in page


def test_report_escapes_partner_names(tmp_path: Path):
    run = make_run(tmp_path / "run")
    text = (run / "metrics.jsonl").read_text().replace('"a"', '"<b>a</b>"')
    (run / "metrics.jsonl").write_text(text)
    page = write_report(run).read_text()
    assert "<b>a</b>" not in page and "&lt;b&gt;a&lt;/b&gt;" in page


@pytest.mark.parametrize("content, where, what", [
    ('{"round": 1}\n{"round": 2, "train_loss": \n', ":2:", "not valid JSON"),
    ('{"round": 1}\n\n["a list"]\n', ":3:", "integer \"round\""),
    ('{"round": 2}\n{"round": 1}\n', ":2:", "rounds must increase"),
    ('{"round": 1, "train_loss": "low"}\n', ":1:", "train_loss = 'low' is not a number"),
    ("", "metrics.jsonl", "holds no rounds"),
])
def test_corrupt_metrics_is_a_clear_error_and_writes_nothing(tmp_path: Path, content: str,
                                                             where: str, what: str):
    run = make_run(tmp_path / "run")
    (run / "metrics.jsonl").write_text(content)
    with pytest.raises(ReportError) as info:
        write_report(run)
    assert f"metrics.jsonl{where}" in str(info.value) or where in str(info.value)
    assert what in str(info.value)
    assert not list(run.glob("report*")) and not list(run.glob(".*tmp"))


@pytest.fixture
def keep_logging():
    """The CLI binds our loggers to the (captured) stderr of the moment; put them back."""
    saved = {name: logging.getLogger(name).handlers[:] for name in PACKAGES}
    yield
    for name, handlers in saved.items():
        logging.getLogger(name).handlers = handlers


def test_missing_metrics_and_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           keep_logging: None):
    run = make_run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    assert cli_main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'metrics.jsonl'}: not found" in err
    assert not (run / REPORT_FILE).exists()


def test_a_failed_report_keeps_the_previous_one(tmp_path: Path):
    run = make_run(tmp_path / "run")
    before = write_report(run).read_bytes()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 4, "eval_per_partner": {"a": {"accuracy": "high"}}}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:4: eval_per_partner.a.accuracy = "
                                          r"'high' is not a number"):
        write_report(run)
    assert (run / REPORT_FILE).read_bytes() == before


def test_run_without_dp_or_privacy_report(tmp_path: Path):
    run = make_run(tmp_path / "run")
    (run / "privacy_report.json").unlink()
    config = json.loads((run / "model" / "run_config.json").read_text())
    (run / "model" / "run_config.json").write_text(json.dumps({**config, "dp": False}))
    page = write_report(run).read_text()
    assert "did not use differential privacy" in page and "privacy_report.json is missing" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install "
                    "-y chromium); the manual check is in docs/report.md")
def test_report_renders_its_plots_in_headless_chromium(tmp_path: Path):
    import matplotlib.image

    run = make_run(tmp_path / "run")
    page = write_report(run)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,2600",
                    f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    assert pixels.std() > 10  # not a blank page
    # the plots' colours, which only the rendered PNGs contain: matplotlib's first line colour
    # (partner a, the ε lines, the bars) and the worst-partner line
    for rgb in ((31, 119, 180), (220, 20, 60)):
        near = np.abs(pixels - np.array(rgb)).max(axis=-1) <= 12
        assert near.sum() > 200, f"no {rgb} pixels: the plots did not render"
    assert not math.isnan(float(pixels.mean()))
