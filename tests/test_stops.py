"""Expected stops read as one line: what happened and what fixes it, a non-zero exit and no
traceback (``--verbose`` and OUT/flwr.log keep everything). Real bugs keep their tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import server.coordinator as coordinator
from common.config import RunConfig
from common.infra.console import ConsoleFilter, LOG_FILE
from common.errors import ConsortiumError, RunStopped
from server.flwr_run import check_finished, log_size
from server.plots import limit_lines
from server.run_data import read_metrics, series
from simulations.local_grid import LocalGrid

CLI = str(Path(sys.executable).with_name("consortium"))
FLOWER_ECHO = """\
15:27:33 ERROR server.app: run stopped: round 1: 0 usable update(s), min-partners is 2. \
partner-0: refused: the budget. no round finished, so there is nothing to resume
ERROR :     Simulation raised an exception
Traceback (most recent call last):
  File "flwr/simulation/app.py", line 337, in run_simulation_process
    simulation_result = _run_simulation(
common.errors.RunStopped: round 1: 0 usable update(s)
ERROR :     Exit Code: 700
"""


def test_the_console_shows_the_stop_once_and_hides_flowers_echo(tmp_path: Path) -> None:
    show = ConsoleFilter()
    shown = [line for line in map(show, FLOWER_ECHO.splitlines()) if line is not None]
    assert shown == [FLOWER_ECHO.splitlines()[0]]
    bug = ConsoleFilter()  # without a stop line a traceback is a bug: shown whole
    assert [bug(x) for x in FLOWER_ECHO.splitlines()[2:5]] == FLOWER_ECHO.splitlines()[2:5]


def test_check_finished_raises_this_runs_stop_in_its_own_words(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE).write_text(FLOWER_ECHO)  # an earlier run's stop, in the same out-dir
    start = log_size(tmp_path)
    with pytest.raises(ConsortiumError, match="did not finish") as plain:
        check_finished(tmp_path, 0, log_from=start)
    assert not isinstance(plain.value, RunStopped)
    with open(tmp_path / LOG_FILE, "a") as handle:
        handle.write(FLOWER_ECHO.replace("the budget", "not approved"))
    with pytest.raises(RunStopped, match="^round 1: .*partner-0: refused: not approved"):
        check_finished(tmp_path, 0, log_from=start)


def test_every_partner_over_budget_stops_in_one_line_and_nothing_is_spent(
        tiny_bert: str, tmp_path: Path) -> None:
    config = RunConfig(base_model=tiny_bert, examples_per_partner=60, max_length=16,
                       batch_size=8, finetune="lora", dp_plan_check=False, local_epochs=1,
                       num_rounds=3, epsilon=8.0, out_dir=str(tmp_path / "out"),
                       ledger_dir=str(tmp_path / "ledgers"))
    grid = LocalGrid(config, 2, node_config={"max-epsilon": 1.0})
    with pytest.raises(RunStopped) as stop:
        coordinator.run_federation(grid, config)
    message = str(stop.value)  # stopped by the pre-flight, before round 1
    assert "\n" not in message and message.startswith("pre-flight: 0 of 2 partner(s) accept")
    assert "partner-0: refused" in message and "partner-1: refused" in message
    assert "budget 1" in message and "What still fits" in message
    assert message.endswith("Nothing was trained and no partner spent any ε")
    assert [kind for kind, _, _ in grid.sent] == ["evaluate", "evaluate"]  # no TRAIN sent
    assert not list((tmp_path / "ledgers").rglob("*.json"))  # refused before any ε


@pytest.mark.slow
def test_a_60_row_file_at_the_default_epsilon_ends_in_one_line(tmp_path: Path) -> None:
    rows = Path(__file__).resolve().parents[1] / "docs/examples/news_eval.csv"
    data = tmp_path / "rows60.csv"
    data.write_text("".join(rows.read_text().splitlines(keepends=True)[:61]))
    proc = subprocess.run([CLI, "simulate", "--partners", "2", "--rounds", "3", "--data",
                           str(data), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("consortium: run stopped: pre-flight: 0 of 2 partner(s) accept")
    assert "expect no learning" in last and "would pass" in last  # the refusal and its fix
    assert "Traceback" in (tmp_path / "run" / LOG_FILE).read_text()  # the log keeps it all


def test_a_requested_stop_is_not_an_error_and_exits_as_the_shell_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import os
    import signal
    import threading

    from common.infra.processes import run_tagged
    from simulations import cli

    def stopped_run(*_args, **_kwargs):
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        run_tagged(["sleep", "30"], dict(os.environ), "the test's sleep",
                   lambda: "no round had finished; rerun the command to start again")

    monkeypatch.setattr("simulations.simulate.run_simulation", stopped_run)
    assert cli.main(["simulate", "--out", str(tmp_path / "run")]) == 128 + signal.SIGTERM
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("consortium: stopped by SIGTERM: the test's sleep") and \
        "error" not in last


def test_resume_is_suggested_only_when_a_checkpoint_exists(tmp_path: Path) -> None:
    from server.flwr_run import resume_hint

    assert "--resume" not in resume_hint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    assert "--resume" not in resume_hint(tmp_path)
    (tmp_path / "checkpoints" / "round-00001.json").write_text("{}")
    assert "--resume" in resume_hint(tmp_path)


def test_no_partner_spends_when_the_pre_flight_fails(tiny_bert: str, tmp_path: Path) -> None:
    """Issue 37's case: one partner would train, the other's budget cannot pay for the plan;
    with min-partners 2 the run stops in the pre-flight, before the first one spent anything
    (it used to train round 1 and spend ε on a round that was then thrown away)."""
    config = RunConfig(base_model=tiny_bert, examples_per_partner=60, max_length=16,
                       batch_size=8, finetune="lora", dp_plan_check=False, local_epochs=1,
                       num_rounds=3, epsilon=8.0, min_partners=2,
                       out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    grid = LocalGrid(config, 2, partner_configs={1: {"max-epsilon": 7.5}})
    with pytest.raises(RunStopped, match="pre-flight: 1 of 2 partner.* partner-1: refused"):
        coordinator.run_federation(grid, config)
    assert not list((tmp_path / "ledgers").rglob("*@*.json"))  # no ledger: nothing spent
    assert all(kind == "evaluate" for kind, _, _ in grid.sent)
    # the same run with both budgets large enough trains; the report's ε chart draws each
    # partner's own budget (issue 37: it drew the run's target ε as "budget ε = 8" for all)
    ok = config.replace(out_dir=str(tmp_path / "out2"), num_rounds=1)
    budgets = {0: {"max-epsilon": 30.0}, 1: {"max-epsilon": 20.0}}
    out = coordinator.run_federation(LocalGrid(ok, 2, partner_configs=budgets), ok)
    assert len(list((tmp_path / "ledgers").rglob("partner-*@*.json"))) == 2
    told = {"partner-0": 30.0, "partner-1": 20.0}
    assert read_metrics(out / "metrics.jsonl")[-1]["budget_per_partner"] == told
    assert limit_lines(series(read_metrics(out / "metrics.jsonl")), ok.epsilon) == [
        ("partner-0", 30.0, "partner-0's budget ε = 30"),
        ("partner-1", 20.0, "partner-1's budget ε = 20"), (None, 8.0, "run's target ε = 8")]
