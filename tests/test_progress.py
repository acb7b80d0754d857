"""common.training.progress: the partner's per-round bar counts steps, and is off unless someone
watches."""

from __future__ import annotations

import pytest

from common.training.progress import ENV, RoundProgress, progress_enabled


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True),
                                             ("yes", True)])
def test_env_var_decides(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool):
    monkeypatch.setenv(ENV, value)
    assert progress_enabled() is expected


def test_off_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert progress_enabled() is False


def test_bar_counts_each_finished_step_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture):
    monkeypatch.setenv(ENV, "1")
    bar = RoundProgress(total=6, desc="partner-0 round 2")
    seen = []
    for epoch in range(2):
        for batch in bar.over(range(3)):
            assert bar.bar.n == len(seen)  # counted only once the step is done
            seen.append((epoch, batch))
    assert bar.bar.n == 6
    bar.close()
    out, err = capsys.readouterr()
    assert out == "" and "partner-0 round 2" in err


def test_disabled_bar_writes_nothing(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture):
    monkeypatch.setenv(ENV, "0")
    bar = RoundProgress(total=2, desc="x")
    assert list(bar.over([1, 2])) == [1, 2]
    bar.close()
    assert capsys.readouterr() == ("", "")
