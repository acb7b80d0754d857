"""Code pinning covers every file of the App (issue 33, item 1): the hash a partner approves is
over exactly what the FAB carries; `consortium partner approve` sees a shadow package and refuses
planted bytecode; a partner with `allowed-code` refuses an App that differs in any file before
any other module of it is imported."""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from client import partner
from common import protocol as P
from common.code_hash import code_hash

ROOT = Path(__file__).resolve().parent.parent
TAG = sys.implementation.cache_tag
SHIM = "open({marker!r}, 'w').write('ran')\n"  # what a shadow package does when imported


def checkout(dst: Path) -> Path:
    """A copy of this checkout without what git ignores (a reviewed clone, in effect)."""
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "results", "__pycache__", "*.egg-info", ".ruff_cache",
        ".pytest_cache"))
    return dst


def install(app_dir: Path, flwr_home: Path) -> Path:
    """The FAB of ``app_dir``, installed where Flower's SuperNode installs it."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    return install_from_fab(build_fab_from_disk(app_dir), flwr_home, skip_prompt=True)


def pyc(code: str, source: Path) -> bytes:
    """A cache Python would load for ``source`` (its size and mtime in the header) holding
    ``code`` instead of the source's."""
    stat = source.stat()
    header = (importlib.util.MAGIC_NUMBER + bytes(4) + int(stat.st_mtime).to_bytes(4, "little")
              + stat.st_size.to_bytes(4, "little"))
    return header + marshal.dumps(compile(code, str(source), "exec"))


def approve(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from simulations.cli import main

    code = main(["partner", "approve", str(path)])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_the_hash_covers_every_file_a_fab_carries(tmp_path: Path) -> None:
    """A checkout, the FAB `flwr build` makes of it (unzipped) and the App Flower installs from
    that FAB hash alike, over the same files: the FAB's, nothing more, nothing less."""
    app_dir = checkout(tmp_path / "app")
    flwr = str(Path(sys.executable).with_name("flwr"))
    subprocess.run([flwr, "build", "--app", str(app_dir)], cwd=tmp_path, check=True,
                   capture_output=True, env={**os.environ, "FLWR_HOME": str(tmp_path / ".flwr")})
    [fab] = tmp_path.glob("*.fab")
    with zipfile.ZipFile(fab) as archive:
        carried = sorted(set(archive.namelist()) - {".info/CONTENT"})
        archive.extractall(tmp_path / "unzipped")
    from flwr.cli.install import install_from_fab

    from common.code_hash import app_code, installed_app

    installed = install_from_fab(fab, tmp_path / "home", skip_prompt=True)
    assert installed_app(installed) and not installed_app(app_dir)
    codes = [app_code(p) for p in (app_dir, tmp_path / "unzipped", installed)]
    assert [list(c.files) for c in codes] == [carried] * 3
    assert "tests/conftest.py" in carried and "README.md" in carried  # every file, not .py only
    assert len({c.sha256 for c in codes}) == 1 and code_hash(app_dir) == codes[0].sha256


def test_approve_sees_every_file_the_fab_would_carry(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Black-box through the CLI: a shadow `opacus/` at the App's root changes the hash; a
    `.pyc` that no reviewed source vouches for is refused (the FAB would not carry it, but
    Python could run it from this checkout); Python's own caches change nothing."""
    app_dir = checkout(tmp_path / "app")
    status, reviewed, _ = approve(app_dir, capsys)
    assert status == 0 and len(reviewed) == 64

    shadow = app_dir / "opacus" / "__init__.py"
    shadow.parent.mkdir()
    shadow.write_text(SHIM.format(marker=str(tmp_path / "marker")))
    status, shadowed, _ = approve(app_dir, capsys)
    assert status == 0 and shadowed != reviewed
    shutil.rmtree(shadow.parent)

    privacy = app_dir / "common" / "privacy" / "ledger.py"
    caches = privacy.parent / "__pycache__"
    caches.mkdir()
    for name, content in [(f"x.{TAG}.pyc", pyc("x = 1", privacy)),  # a cache of no source
                          (f"ledger.{TAG}.pyc", pyc("def spend(*a): pass", privacy))]:
        (caches / name).write_bytes(content)
        status, out, err = approve(app_dir, capsys)
        assert status == 2 and not out
        assert f"common/privacy/__pycache__/{name}" in err and "no reviewed source vouches" in err
        (caches / name).unlink()

    import py_compile

    py_compile.compile(str(privacy), doraise=True)  # Python's own cache of the reviewed source
    (caches / "ledger.cpython-311-pytest-8.3.5.pyc").write_bytes(b"another tool's cache")
    (caches / f"planner.{TAG}.pyc").write_bytes(pyc("x = 2", privacy))  # stale: planner.py's size
    assert approve(app_dir, capsys)[:2] == (0, reviewed)  # differs, so Python recompiles it


def test_an_installed_app_is_hashed_file_by_file(tmp_path: Path) -> None:
    """In an App Flower installed, every file counts, whatever rules a checkout has: a FAB not
    made by `flwr build` (a zip) can carry a `.pyc`, and the partner refuses it."""
    from client import pinning

    app_dir = checkout(tmp_path / "app")
    approved = code_hash(app_dir)
    node = {"partner-name": "org-a", "allowed-code": f"{'0' * 64},{approved}"}
    clean = install(app_dir, tmp_path / "clean")
    assert pinning.unapproved(node, clean) == ""
    import py_compile

    # Python's own
    py_compile.compile(str(clean / "common" / "privacy" / "ledger.py"), doraise=True)
    assert pinning.unapproved(node, clean) == ""
    planted = clean / "common" / "privacy" / "__pycache__" / f"ledger.{TAG}.pyc"
    planted.write_bytes(pyc("def spend(*a): pass", clean / "common" / "privacy" / "ledger.py"))
    reason = pinning.unapproved(node, clean)
    assert f"common/privacy/__pycache__/ledger.{TAG}.pyc" in reason and "org-a" in reason
    planted.unlink()
    (clean / "common" / "privacy" / "__pycache__" / f"x.{TAG}.pyc").write_bytes(b"\0" * 32)
    assert pinning.unapproved(node, clean)  # no source: not Python's own
    shutil.rmtree(clean / "common" / "privacy" / "__pycache__")
    (clean / "notes.txt").write_text("a file `flwr build` would not carry\n")
    assert "is not in org-a's allowed-code list" in pinning.unapproved(node, clean)


_PARTNER_PROCESS = """
import json, sys
root, ledgers, allowed = sys.argv[1:]
sys.path.insert(0, root)  # as flwr-clientapp loads an installed App
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
from client import app
msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1,
              message_type=MessageType.TRAIN, group_id="1")
node = {"partner-name": "org-a", "ledger-dir": ledgers, "allowed-code": allowed}
reply = app.train(msg, Context(1, 1, node, RecordDict(), {}))
ours = ("client", "common", "server", "simulations", "opacus")
print(json.dumps({
    "file": app.__file__, "error": reply.error.reason if reply.has_error() else "",
    "refusal": "" if reply.has_error() else reply.content.config_records["partner"]["refusal"],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ours),
    "tomllib": getattr(sys.modules.get("tomllib"), "__file__", "")}))
"""


def run_partner(root: Path, ledgers: Path, allowed: str, tmp_path: Path) -> dict:
    """One Message to the App installed at ``root``, in a fresh process that writes bytecode."""
    script = tmp_path / "partner_process.py"
    script.write_text(_PARTNER_PROCESS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",
                                                           "PYTHONPATH")}
    done = subprocess.run([sys.executable, str(script), str(root), str(ledgers), allowed],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_partner_refuses_a_shadow_package_before_it_is_imported(tmp_path: Path) -> None:
    """The approved App runs (its own bytecode caches written on the way); the same App with a
    shadow `opacus/` (and a `tomllib.py`, which the check itself reads TOML with) is refused and
    audited, and only the check's own modules were imported: no shadow's marker file exists."""
    app_dir = checkout(tmp_path / "app")
    approved = code_hash(app_dir)
    clean = install(app_dir, tmp_path / "home")
    for _ in range(2):  # the second process finds the caches the first one wrote
        ran = run_partner(clean, tmp_path / "ledgers", approved, tmp_path)
        assert not ran["refusal"] and ran["error"] in P.ERROR_REASONS  # checked, then handled
    assert list(clean.glob(f"common/__pycache__/*.{TAG}.pyc"))
    marker = tmp_path / "marker"
    (app_dir / "opacus").mkdir()
    (app_dir / "opacus" / "__init__.py").write_text(SHIM.format(marker=str(marker)))
    (app_dir / "tomllib.py").write_text(SHIM.format(marker=str(marker)))  # the check reads TOML
    shadowed = install(app_dir, tmp_path / "home")
    refused = run_partner(shadowed, tmp_path / "ledgers", approved, tmp_path)
    assert refused["file"] == str(shadowed / "client" / "app.py")
    assert "is not in org-a's allowed-code list" in refused["refusal"]
    assert refused["modules"] == ["client", "client.app", "client.pinning", "common",
                                  "common.code_hash"]
    assert not marker.exists() and not refused["tomllib"].startswith(str(shadowed))
    audit = [json.loads(x) for x in (tmp_path / "ledgers" / partner.AUDIT_LOG).read_text()
             .splitlines()]
    assert audit[-1]["refused"] == refused["refusal"] and audit[-1]["bytes_sent"] == 0


def test_the_checks_keys_are_the_protocols() -> None:
    """client.pinning spells out the refusal's keys (common.protocol must not run before the
    check): they must stay the protocol's."""
    from client import pinning

    assert (pinning.CONFIG, pinning.ROUND) == (P.CONFIG, P.ROUND)
    assert (pinning.PARTNER, pinning.PARTNER_NAME, pinning.REFUSAL) == (
        P.PARTNER, P.PARTNER_NAME, P.REFUSAL)
    from client.policy import PartnerSettings
    from common.config import RunConfig

    node = {"partition-id": 3, "ledger-dir": ""}
    config = RunConfig(out_dir="x/y")
    assert pinning.partner_name(node) == PartnerSettings.from_node_config(node).name
    assert pinning.ledger_root(node, config.to_mapping()) == \
        PartnerSettings.from_node_config(node).ledger_root(config)
