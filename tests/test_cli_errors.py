"""Bad input to `consortium simulate`: one clear line, exit != 0, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["simulate", *args])
    return code, capsys.readouterr().err


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, args, expected", [
    (None, [], "no such data file"),
    (b"text,label\nhello,a\nbye,b\n", ["--text-column", "body"], "no text column 'body'"),
    (b"text,label\nhello,a\nbye,b\nodd,c\n", ["--labels", "a,b"], ":4: label 'c' is not in"),
    (b"", [], "the file is empty"),
    (b"text,label\nhello,a\n\xff\xfe,b\n", [], ":3: byte 0xff is not UTF-8"),
])
def test_bad_data_file(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes | None,
                       args: list[str], expected: str) -> None:
    data = tmp_path / "data.csv"
    if content is not None:
        _write(data, content)
    out = tmp_path / "out"
    code, err = run_cli(["--data", str(data), "--out", str(out), *args], capsys)
    assert code != 0
    assert expected in err and str(data) in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--set", "no-such-key=1"], "unknown config key 'no-such-key'"),
    (["--set", "num-rounds=\"three\""], "'num-rounds' = 'three' is a str; expected an int"),
    (["--set", "dp=1"], "'dp' = 1 is an int; expected a bool"),
    (["--epsilon", "0"], "'epsilon' = 0.0 must be > 0.0"),
    (["--epsilon", "-1"], "'epsilon' = -1.0 must be > 0.0"),
    (["--partition", "dirichlet:0"], "dirichlet needs a positive ALPHA"),
    (["--partners", "1"], "--partners 1 is below min-partners 2"),
    (["--labels", "neg,pos"], "the embedded data set has labels"),
    (["--set", "dropout-rate=1.0"], "'dropout-rate' = 1.0 must be < 1.0"),
])
def test_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                    expected: str) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["--out", str(out), *args], capsys)
    assert code != 0 and expected in err
    assert not out.exists()


def test_resume_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_cli(["--out", str(tmp_path / "out"), "--resume"], capsys)
    assert code != 0 and "no usable checkpoint" in err


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).with_name("consortium")), "simulate",
                           "--data", str(tmp_path / "missing.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "consortium: error:" in proc.stderr and "missing.csv" in proc.stderr
