"""The partner's runner in a real federation: a TLS SuperLink with node auth, enrolled partners
started with `consortium partner start` (client.runner beside Flower's SuperNode), runs submitted
as a coordinator submits them.

org-a pins the approved code (``--allowed-code``); org-b pins nothing, and shows what the hostile
code would have done: its shims write a marker file in every partner process that imports them
(each partner's own marker, named in its environment), and leave the real module working, as an
attacker's shim would. A coordinator's own tool can send any FAB, so hostile FABs are submitted
with `flwr run` and a FAB built by hand.
"""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from opacus.accountants import RDPAccountant

from client.partner import AUDIT_LOG
from common.code_hash import code_hash
from common.config import RunConfig
from server import deploy
from server.flwr_run import write_run_config
from tests.test_code_pinning import TAG, checkout
from tests.test_deployment import (ENV, enroll, free_port, marked, open_federation,
                                  start_partner)

pytestmark = pytest.mark.slow
MARKER = "CONSORTIUM_TEST_MARKER"  # where a shim writes, when a partner process imports it
SUBMIT = """
import importlib, sys
fab = open(sys.argv.pop(1), "rb").read()
run = importlib.import_module("flwr.cli.run.run")  # the module (the package's `run` is a function)
run.build_fab_from_disk = lambda app: fab  # the coordinator's tool: any FAB it likes
from flwr.cli.app import app
sys.argv[0] = "flwr"
sys.exit(app())
"""
SETTINGS = {"max-length": 16, "batch-size": 8, "dp-plan-check": False, "local-epochs": 1,
            "min-partners": 1, "round-timeout": 120.0}


def shim(levels: int) -> str:
    """A module that notes its import in the partner's marker file, then puts the real module
    (found without the App's root on the path) in its place: the App keeps working."""
    return (f"import importlib, os, sys\n"
            f"if os.environ.get({MARKER!r}):\n"
            f"    open(os.environ[{MARKER!r}], 'a').write(__name__ + '\\n')\n"
            f"_root = os.path.abspath(__file__)\n"
            f"for _ in range({levels}):\n"
            f"    _root = os.path.dirname(_root)\n"
            f"_saved = sys.path[:]\n"
            f"sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _root]\n"
            f"del sys.modules[__name__]\n"
            f"try:\n"
            f"    sys.modules[__name__] = importlib.import_module(__name__)\n"
            f"finally:\n"
            f"    sys.path[:] = _saved\n")


def planted_pyc(source: Path) -> bytes:
    """An unchecked hash-based cache of ``source`` (Python runs it without looking at the
    source) holding the source's code plus a marker line."""
    marker = (f"import os as _os\nif _os.environ.get({MARKER!r}):\n"
              f"    open(_os.environ[{MARKER!r}], 'a').write(__name__ + '.pyc\\n')\n")
    code = compile(source.read_text() + "\n" + marker, str(source), "exec")
    flags = (1).to_bytes(4, "little")  # hash-based, check_source off
    return (importlib.util.MAGIC_NUMBER + flags
            + importlib.util.source_hash(source.read_bytes()) + marshal.dumps(code))


def hostile_fabs(app_dir: Path, which: tuple[str, ...]) -> bytes:
    """The approved App's FAB plus the hostile files named in ``which``: "module" (an extra
    ``tomllib.py``, which the code check reads TOML with), "opacus" (a shadow ``opacus/``),
    "pyc" (a planted ``common/privacy/__pycache__/ledger.<tag>.pyc``)."""
    files = {"module": ("tomllib.py", shim(1).encode()),
             "opacus": ("opacus/__init__.py", shim(2).encode()),
             "pyc": (f"common/privacy/__pycache__/ledger.{TAG}.pyc",
                     planted_pyc(app_dir / "common" / "privacy" / "ledger.py"))}
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app_dir))) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in [*contents.items(), *(files[w] for w in which)]:
            archive.writestr(name, content)
    return out.getvalue()


def submit(root: Path, app_dir: Path, fab: bytes, name: str, rounds: int,
           **settings: object) -> Path:
    """A run of ``fab`` on the federation under ``root``; its out-dir once `flwr run` ended."""
    out = root / name
    config = RunConfig.from_mapping({**SETTINGS, **settings, "labels": "neg,pos",
                                     "num-rounds": rounds, "out-dir": str(out)})
    (root / f"{name}.fab").write_bytes(fab)
    write_run_config(config, root / f"{name}.toml")
    command = deploy.run_command(root / "fed", app_dir, root / f"{name}.toml")
    done = subprocess.run([sys.executable, "-c", SUBMIT, str(root / f"{name}.fab"), *command[1:]],
                          env=deploy.flwr_env(root / "fed"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def audit(root: Path, name: str) -> list[dict]:
    path = root / "ledgers" / name / AUDIT_LOG
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def ledger_releases(root: Path, name: str) -> list[dict]:
    paths = list((root / "ledgers" / name).glob(f"{name}@*.json"))
    if not paths:
        return []
    try:
        return json.loads(paths[0].read_text())["body"]["releases"]
    except (json.JSONDecodeError, KeyError):  # caught mid-replace
        return []


def worker_pids(procs, name: str) -> list[int]:
    """The partner's warm worker processes (client/runner/worker.py), by its start's mark."""
    found = []
    for pid in marked(procs.marks[name]):
        try:
            if b"worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def defunct(procs, name: str) -> list[str]:
    """Exited children nobody reaped (``<defunct>``) under the partner's processes."""
    parents, found = set(marked(procs.marks[name])), []
    for entry in Path("/proc").iterdir():
        try:
            command, rest = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        state, ppid = rest.split()[:2]
        if state == "Z" and int(ppid) in parents:
            found.append(f"{entry.name} {command.split('(', 1)[-1]}")
    return found


def opacus_epsilon(releases: list[dict], delta: float) -> float:
    accountant = RDPAccountant()
    for release in releases:
        for _ in range(release["steps"]):
            accountant.step(noise_multiplier=release["noise_multiplier"],
                            sample_rate=release["sample_rate"])
    return accountant.get_epsilon(delta)


@pytest.fixture(scope="module")
def pinned_federation(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str):
    """org-a pins the approved checkout's hash, org-b pins nothing; yields (federation,
    approved checkout)."""
    root = tmp_path_factory.mktemp("runner")
    app_dir = checkout(root / "app")
    with open_federation(root) as fed:
        for name, pinned in (("org-a", True), ("org-b", False)):
            enroll(fed, name)
            start_partner(fed, name, 50.0, "--allow-unlearnable-rounds",
                          *(["--allowed-code", code_hash(app_dir)] if pinned else []),
                          env={MARKER: str(root / f"marker-{name}"),
                               "OMP_NUM_THREADS": "1"})
        yield fed, app_dir


@pytest.mark.xdist_group("flower-deployment-runner")
def test_a_pinned_partner_refuses_hostile_code_and_survives_its_worker_killed(
        pinned_federation, tiny_bert: str) -> None:
    """Done-when 1 and 3 of the runner, at the smallest size that shows them.

    1. One FAB with all three hostile additions: org-a refuses it before any of it is installed
       or imported (its marker never exists); org-b, pinning nothing, runs it, and its marker
       shows that the shims would have run.
    2. The approved FAB, 3 rounds: org-a's warm worker is SIGKILLed in round 2 after its release
       was recorded. Round 2 records org-a's failure, round 3 trains from a fresh worker, and
       org-a's ledger holds every release, round 2's too (an over-count, never an under-count):
       its ε is Opacus' over those releases."""
    (root, _, procs), app_dir = pinned_federation
    hostile = submit(root, app_dir, hostile_fabs(app_dir, ("module", "opacus", "pyc")),
                     "hostile", 1, **{"base-model": tiny_bert})
    assert not (root / "marker-org-a").exists()
    assert {"opacus", "common.privacy.ledger.pyc"} <= set(
        (root / "marker-org-b").read_text().split()), "the control: org-b ran the shims"
    refused = [a for a in audit(root, "org-a") if "refused" in a]  # pre-flight, round 1
    assert refused and all("compiled code" in a["refused"] for a in refused), refused
    lines = [json.loads(x) for x in (hostile / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["partners_replied"] == ["org-b"]

    killed: list[int] = []

    def kill_in_round_2() -> None:  # as soon as round 2's release is in org-a's ledger
        deadline = time.time() + 400
        while time.time() < deadline and not any(
                r["round"] == 2 for r in ledger_releases(root, "org-a")):
            time.sleep(0.005)
        for pid in worker_pids(procs, "org-a"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_in_round_2, daemon=True)
    killer.start()  # local-epochs 40: a round trains for a while after its release is recorded
    out = submit(root, app_dir, build_fab_from_disk(app_dir), "approved", 3,
                 **{"base-model": tiny_bert, "local-epochs": 40})
    killer.join(timeout=10)
    assert killed, "org-a's worker was not found in round 2"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert "org-a" in lines[0]["partners_replied"] and "org-a" in lines[2]["partners_replied"]
    assert "org-a" not in lines[1]["partners_replied"]
    assert any(f["partner"] == "org-a" for f in lines[1]["failures"]), lines[1]
    assert worker_pids(procs, "org-a") and not set(worker_pids(procs, "org-a")) & set(killed)
    releases = ledger_releases(root, "org-a")  # it refused the hostile run: nothing spent
    assert [r["round"] for r in releases] == [1, 2, 3]  # round 2 counted though never sent
    trained = [a for a in audit(root, "org-a") if "epsilon" in a]
    assert trained[-1]["round"] == 3
    assert trained[-1]["epsilon"] == pytest.approx(opacus_epsilon(releases, 1e-5), rel=1e-9)
    assert not (root / "marker-org-a").exists()
    # no `[flwr-clientapp] <defunct>` pile (issue 37): the runner answers, and reaps its workers
    assert not defunct(procs, "org-a") and not defunct(procs, "org-b")


@pytest.mark.heavy  # ≈ 4 min: three refused runs, then 20 rounds
@pytest.mark.xdist_group("flower-deployment-runner-heavy")
def test_each_hostile_addition_is_refused_and_twenty_rounds_keep_the_runner_small(
        tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> None:
    """Over TLS with enrolled nodes: org-a (pinned, the runner) refuses a FAB with an extra
    module, one with a shadow ``opacus/`` and one with a planted ``.pyc``, each before any of it
    runs; org-c, a plain `flower-supernode` whose `flwr-clientapp` Flower starts per Message (no
    runner), runs the same App: it stays a plain Flower App. Then the approved FAB trains 20
    rounds at org-a from one warm worker, and the runner's resident memory grows by less than
    10 % after round 2 (the worker's is reported in the runner's lines too)."""
    from client.deploy import PartnerPolicy, supernode_command
    from client.runner.main import answered

    root = tmp_path_factory.mktemp("runner-heavy")
    app_dir = checkout(root / "app")
    with open_federation(root) as fed:
        procs = fed[2]
        enroll(fed, "org-a")
        start_partner(fed, "org-a", 100.0, "--allow-unlearnable-rounds", "--allowed-code",
                      code_hash(app_dir), env={MARKER: str(root / "marker-org-a"),
                                               "OMP_NUM_THREADS": "1"})
        enroll(fed, "org-c")
        data = root / "org-c.csv"
        data.write_text((root / "org-a.csv").read_text())
        policy = PartnerPolicy("org-c", data, 100.0, 1e-5, root / "ledgers" / "org-c",
                               extra=(("allow-unlearnable-rounds", True),))
        plain = supernode_command(policy, f"127.0.0.1:{fed[1]}", root / "fed" / "ca.crt",
                                  root / "keys" / "org-c", free_port())
        plain[plain.index("--isolation") + 1] = "subprocess"  # Flower's own flwr-clientapp
        path = os.pathsep.join([str(Path(sys.executable).parent), ENV.get("PATH", "")])
        supernode = subprocess.Popen(plain, env={**ENV, "OMP_NUM_THREADS": "1", "PATH": path},
                                     stdout=open(root / "logs" / "org-c.log", "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for which in ("module", "opacus", "pyc"):
                out = submit(root, app_dir, hostile_fabs(app_dir, (which,)), which, 1,
                             **{"base-model": tiny_bert})
                [line] = [json.loads(x) for x in (out / "metrics.jsonl").read_text()
                          .splitlines()]
                assert line["partners_replied"] == ["org-c"], (which, line)
                refused = [a for a in audit(root, "org-a") if "refused" in a]
                assert refused[-1]["bytes_sent"] == 0 and (
                    "compiled code" if which == "pyc" else "allowed-code") in refused[-1][
                    "refused"], (which, refused[-1])
                assert not (root / "marker-org-a").exists(), which
            out = submit(root, app_dir, build_fab_from_disk(app_dir), "approved", 20,
                         **{"base-model": tiny_bert, "round-timeout": 300.0})
        finally:
            os.killpg(supernode.pid, signal.SIGTERM)
            supernode.wait(timeout=30)
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(sorted(x["partners_replied"]) == ["org-a", "org-c"] for x in lines), lines
        runs = answered((root / "ledgers" / "org-a" / "supernode.log").read_text())
        train = [x for x in runs if x["type"] == "train" and x["run"] == runs[-1]["run"]]
        assert [x["round"] for x in train] == list(range(1, 21))
        assert len({x["worker"] for x in train}) == 1  # one warm worker all along
        second, last = train[1], train[-1]
        assert last["runner_mb"] < 1.10 * second["runner_mb"], (second, last)
        print(f"runner RSS {second['runner_mb']:.0f} -> {last['runner_mb']:.0f} MB, worker "
              f"{second['worker_mb']:.0f} -> {last['worker_mb']:.0f} MB over rounds 2-20")
        assert procs.procs["org-a"].poll() is None
