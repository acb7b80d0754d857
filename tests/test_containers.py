"""Sites as containers (deploy/, docs/containers.md): the whole local trial of docs/deployment.md
with a coordinator container and two partner containers, as the guide's commands run it.

Needs root with podman, runc and debootstrap (`apt-get install podman runc debootstrap`): skipped
otherwise, with the reason. Every container and volume it makes carries this run's prefix and is
removed by name at the end; the images stay (the layer cache of the next build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/debian-min:bookworm"
PARTNER, COORDINATOR = "localhost/consortium-partner", "localhost/consortium-coordinator"
UID = 10001  # the images' user `consortium`
HARDENED = ["--cap-drop", "all", "--security-opt", "no-new-privileges"]
CONTEXT = ["pyproject.toml", "README.md", "scripts/install.sh", "common", "client", "server",
           "simulations", "deploy"]


def test_a_key_wider_than_0600_is_refused_in_one_line(tmp_path: Path) -> None:
    """`partner start` checks a mounted key before Flower sees it (client.deploy)."""
    from client.deploy import PartnerPolicy, supernode_command
    from common.errors import ConfigError

    policy = PartnerPolicy(name="org-a", data=tmp_path / "a.csv", max_epsilon=8.0, delta=1e-5,
                           ledger_dir=tmp_path / "ledger")
    ca, key = tmp_path / "ca.crt", tmp_path / "org-a"
    ca.write_text("a certificate")
    key.write_text("not a real key")
    for mode in (0o644, 0o640, 0o604, 0o700):
        key.chmod(mode)
        with pytest.raises(ConfigError, match=rf"--key .*org-a: mode {mode:04o} is wider than "
                                              r"0600, so others may read this private key"):
            supernode_command(policy, "127.0.0.1:9092", ca, key, 9101)
    for mode in (0o600, 0o400):
        key.chmod(mode)
        assert str(key) in supernode_command(policy, "127.0.0.1:9092", ca, key, 9101)


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get(
        "CONTAINERS_CONF", str(ROOT / "deploy" / "containers.conf"))}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def why_not_here() -> str | None:
    """The reason this machine cannot run the container trial, or None."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "needs root: rootful podman, volumes read on the host, keys owned by uid 10001"
    if shutil.which("debootstrap") is None and podman("image", "exists", BASE,
                                                      check=False).returncode != 0:
        return f"no {BASE} and no debootstrap to build it (apt-get install debootstrap)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pip_sources() -> list[str]:
    """`podman build` arguments that give pip in the image what the host's pip uses here: local
    find-links folders (the CPU torch wheel) and a CA bundle (a TLS proxy to the index)."""
    listed = subprocess.run(["python", "-m", "pip", "config", "list"], capture_output=True,
                            text=True, timeout=60).stdout
    values = dict(re.findall(r"^[^.\n]*\.([a-z-]+)='([^']*)'$", listed, re.MULTILINE))
    args = []
    folders = [f for f in values.get("find-links", "").split() if Path(f).is_dir()]
    for folder in folders:
        args += ["--volume", f"{folder}:{folder}:ro"]
    if folders:
        args += ["--build-arg", f"PIP_FIND_LINKS={' '.join(folders)}"]
    if Path(values.get("cert", "/nonexistent")).is_file():
        args += ["--volume", f"{values['cert']}:/etc/ssl/host-ca.crt:ro",
                 "--build-arg", "PIP_CERT=/etc/ssl/host-ca.crt"]
    return args


def build_images(context: Path) -> dict[str, float]:
    """Both images from one copy of the checkout (the same code in both, whatever else edits
    the checkout meanwhile), with the base built by scripts/container-base.sh."""
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    base = subprocess.run(["bash", str(ROOT / "scripts" / "container-base.sh")],
                          capture_output=True, text=True, env=podman_env(), timeout=900)
    assert base.returncode == 0, base.stderr[-3000:]
    seconds = {}
    for target, tag in (("partner", PARTNER), ("coordinator", COORDINATOR)):
        started = time.time()
        podman("build", "--network", "host", "-f", "deploy/Containerfile",
               "--ignorefile", "deploy/containerignore", "--build-arg", f"BASE={BASE}",
               *pip_sources(), "--target", target, "-t", tag, str(context), timeout=1800)
        seconds[f"build {target}"] = time.time() - started
    return seconds


def write_reviews(path: Path, seed: int) -> Path:
    """400 labelled rows (≈ 320 to train on: enough for ε = 4 over 2 rounds), readable by the
    images' user only."""
    lines = ["text,label"]
    for i in range(400):
        positive = (i + seed) % 2 == 0
        lines.append(f"the movie was {'great good' if positive else 'awful bad'} {i},"
                     f"{'pos' if positive else 'neg'}")
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(path.parent, UID, UID)
    path.write_text("\n".join(lines) + "\n")
    os.chown(path, UID, UID)
    path.chmod(0o400)
    return path


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
    started = time.time()
    while not ready():
        assert time.time() - started < timeout, f"{what}: not ready after {timeout:.0f} s"
        time.sleep(0.2)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def volume_dir(volume: str) -> Path:
    return Path(podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip())


class Site:
    """The containers and volumes of one trial, all named PREFIX-..., removed by name."""

    def __init__(self, root: Path) -> None:
        self.root, self.prefix = root, f"ctest-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.containers: set[str] = set()
        self.volumes: set[str] = set()

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def volume(self, what: str) -> str:
        self.volumes.add(self.name(what))
        return self.name(what)

    def run(self, *args: str, check: bool = True, timeout: float = 300):
        return podman("run", *args, check=check, timeout=timeout)

    def start(self, what: str, *args: str) -> str:
        self.containers.add(self.name(what))
        self.run("-d", "--name", self.name(what), "--network", "host", *HARDENED, *args)
        return self.name(what)

    def coordinator(self, *args: str) -> str:
        return podman("exec", self.name("coordinator"), "consortium", *args, timeout=600).stdout

    def start_partner(self, org: str, port: int, *extra: str) -> str:
        keys, data = self.root / f"keys-{org}", self.root / f"data-{org}"
        return self.start(org, *extra, "-e", "OMP_NUM_THREADS=1", "-v", f"{keys}:/keys:ro",
                          "-v", f"{data}:/data:ro", "-v", f"{self.volume('ledger-' + org)}:/ledger",
                          PARTNER, "--coordinator", f"127.0.0.1:{self.port}",
                          "--ca", "/keys/ca.crt", "--key", f"/keys/{org}",
                          "--data", f"/data/{org}.csv", "--max-epsilon", "10",
                          "--port", str(port))

    def stop(self, what: str) -> tuple[int, str]:
        """`podman stop` (SIGTERM, 30 s before SIGKILL): exit code and last console line."""
        podman("stop", "-t", "30", self.name(what), timeout=60)
        code = int(podman("inspect", self.name(what), "--format",
                          "{{.State.ExitCode}}").stdout.strip())
        logs = podman("logs", self.name(what))
        return code, (logs.stdout + logs.stderr).strip().splitlines()[-1]

    def remove(self) -> None:
        for name in sorted(self.containers):
            podman("rm", "-f", "-t", "0", name, check=False)
        for name in sorted(self.volumes):
            podman("volume", "rm", "-f", name, check=False)


def audit(ledger: Path) -> list[dict]:
    lines = (ledger / "audit.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "epsilon" in entry]


def layer_files(archive: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(layer, its tar, entry) for every entry of every layer of a `podman save` archive."""
    with tarfile.open(archive) as outer:
        for member in outer:
            if member.isfile() and member.name.endswith(".tar"):
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                    for entry in layer:
                        yield member.name, layer, entry


def secrets_in_layers(archive: Path, names: set[str], needles: list[bytes]) -> tuple[list[str],
                                                                                    int, bool]:
    """Every layer entry that is a mounted path's content (under /keys, /data, /ledger,
    /federation, /runs), has one of ``names``, or holds one of ``needles``; with the number of
    files read and whether the project's own source was seen (the scan saw the image)."""
    found, files, seen_source = [], 0, False
    mounted = ("keys/", "data/", "ledger/", "federation/", "runs/")
    overlap = max(map(len, needles))
    for layer, tar, entry in layer_files(archive):
        path = entry.name.removeprefix("./")
        if path.startswith(mounted) or Path(path).name in names:
            found.append(f"{layer}: {path}")
        if not entry.isfile():
            continue
        files += 1
        seen_source |= path == "app/common/infra/keys.py"
        stream, tail = tar.extractfile(entry), b""
        while chunk := stream.read(1 << 22):
            window = tail + chunk
            found += [f"{layer}: {path} holds {n[:12]!r}..." for n in needles if n in window]
            tail = window[-overlap:]
    return found, files, seen_source


def key_body(path: Path) -> bytes:
    """A slice of a PEM/OpenSSH private key's base64 body: unique to that key."""
    lines = [line for line in path.read_bytes().splitlines() if not line.startswith(b"-----")]
    return lines[1][:48]


@pytest.mark.heavy  # ≈ 5 min with the images built, 9–10 min building them (README)
def test_a_federation_of_containers_trains_and_keeps_its_ledgers(tmp_path: Path) -> None:
    if reason := why_not_here():
        pytest.skip(reason)
    timings: dict[str, float] = {}
    site = Site(tmp_path)
    try:
        timings.update(build_images(tmp_path / "context"))
        _trial(site, timings)
        started = time.time()
        _no_secret_in_any_layer(site, tmp_path / "images.tar")
        timings["scan layers"] = time.time() - started
    finally:
        site.remove()
        print("container trial timings (s): " + json.dumps({k: round(v, 1)
                                                             for k, v in timings.items()}))


def _trial(site: Site, timings: dict[str, float]) -> None:
    fed, runs = site.volume("fed"), site.volume("runs")
    site.run("--rm", "--network", "host", "-v", f"{fed}:/federation", "--entrypoint",
             "consortium", COORDINATOR, "coordinator", "init", "/federation",
             "--port", str(site.port))
    started = time.time()
    site.start("coordinator", "-v", f"{fed}:/federation", "-v", f"{runs}:/runs", COORDINATOR,
               "/federation", "--bind", "127.0.0.1")
    wait_until("coordinator", lambda: listening(site.port))
    timings["start coordinator"] = time.time() - started
    ports = {"org-a": free_port(), "org-b": free_port()}
    for seed, org in enumerate(ports):  # at the partner, then out of band to the coordinator
        keys = site.root / f"keys-{org}"
        keys.mkdir(mode=0o700)
        os.chown(keys, UID, UID)
        site.run("--rm", "--network", "none", "-v", f"{keys}:/keys", "--entrypoint",
                 "consortium", PARTNER, "partner", "keygen", "/keys", "--name", org)
        podman("cp", f"{site.name('coordinator')}:/federation/ca.crt", str(keys / "ca.crt"))
        podman("cp", str(keys / f"{org}.pub"), f"{site.name('coordinator')}:/tmp/{org}.pub")
        assert "enrolled" in site.coordinator("coordinator", "enroll", f"/tmp/{org}.pub",
                                              "--name", org, "--dir", "/federation")
        write_reviews(site.root / f"data-{org}" / f"{org}.csv", seed)
    for org, port in ports.items():
        started = time.time()
        site.start_partner(org, port)
        log = volume_dir(site.name(f"ledger-{org}")) / "supernode.log"
        wait_until(org, lambda: log.exists() and "SuperNode ID" in log.read_text(errors="replace"))
        timings[f"start {org}"] = time.time() - started
    _refuses_a_key_open_to_others(site, ports["org-a"])
    _is_unprivileged(site, "org-a")

    started = time.time()
    site.coordinator("run", "--coordinator", "/federation", "--rounds", "2", "--epsilon", "4",
                     "--labels", "neg,pos", "--out", "/runs/trial")
    timings["run, 2 rounds"] = time.time() - started
    out = volume_dir(runs) / "trial"
    assert json.loads((out / "model" / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    assert (out / "model" / "model.safetensors").stat().st_size > 10_000_000  # MiniLM's encoder
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(sorted(line["partners_replied"]) == ["org-a", "org-b"] for line in lines)
    report = json.loads((out / "privacy_report.json").read_text())
    assert sorted(report["partners"]) == ["org-a", "org-b"]
    for org in ports:
        entry = report["partners"][org]
        assert entry["rounds_trained"] == 2 and entry["delta"] == 1e-5
        assert 0 < entry["epsilon"] <= 4 + 1e-6
    for org in ports:  # each ledger lives in its volume, and nowhere in the mounted folders
        ledger = volume_dir(site.name(f"ledger-{org}"))
        [book] = ledger.glob(f"{org}@file-*.json")
        assert len(json.loads(book.read_text())["body"]["releases"]) == 2
        assert [a["round"] for a in audit(ledger)] == [1, 2]
        assert sorted(p.name for p in (site.root / f"keys-{org}").iterdir()) == sorted(
            ["ca.crt", org, f"{org}.pub"])
        assert [p.name for p in (site.root / f"data-{org}").iterdir()] == [f"{org}.csv"]

    # org-a's container is removed (SIGKILL) and a fresh one starts on the same volume. The
    # SuperLink refuses the same node (Flower's exit code 305) until its heartbeat says the old
    # one is gone (≈ 60 s): podman restarts the new container until then
    ledger = volume_dir(site.name("ledger-org-a"))
    before = audit(ledger)[-1]["epsilon"]
    podman("rm", "-f", "-t", "0", site.name("org-a"))
    started = time.time()
    site.start_partner("org-a", ports["org-a"], "--restart", "on-failure")
    wait_until("org-a again", lambda: (ledger / "supernode.log").read_text(errors="replace")
               .count("SuperNode ID") >= 2, timeout=240)
    timings["restart org-a"] = time.time() - started
    site.coordinator("run", "--coordinator", "/federation", "--rounds", "2", "--epsilon", "4",
                     "--labels", "neg,pos", "--out", "/runs/again")
    after = audit(ledger)
    assert len(after) == 4 and after[2]["run_id"] != after[1]["run_id"]
    assert before < after[2]["epsilon"] < after[3]["epsilon"] <= 10  # continued, not reset
    [book] = ledger.glob("org-a@file-*.json")
    assert len(json.loads(book.read_text())["body"]["releases"]) == 4

    for what in ("org-a", "org-b", "coordinator"):  # SIGTERM from the runtime: a clean stop
        code, last = site.stop(what)
        assert code == 143 and last.startswith("consortium: stopped by SIGTERM"), (what, last)


def _refuses_a_key_open_to_others(site: Site, port: int) -> None:
    loose = site.root / "keys-loose"
    shutil.copytree(site.root / "keys-org-a", loose)
    for path in (loose, *loose.iterdir()):
        os.chown(path, UID, UID)
    (loose / "org-a").chmod(0o644)
    proc = site.run("--rm", "--network", "host", *HARDENED, "-v", f"{loose}:/keys:ro",
                    "-v", f"{site.root / 'data-org-a'}:/data:ro", PARTNER,
                    "--coordinator", f"127.0.0.1:{site.port}", "--ca", "/keys/ca.crt",
                    "--key", "/keys/org-a", "--data", "/data/org-a.csv", "--max-epsilon", "10",
                    "--port", str(free_port()), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "consortium: error: --key /keys/org-a: mode 0644 is wider than 0600, so others may read "
        "this private key; run `chmod 600` on it where it is stored")
    shutil.rmtree(loose)


def _is_unprivileged(site: Site, what: str) -> None:
    """Runs as uid 10001 with no capability; keys and data mounted read-only; the ledger a
    named volume."""
    info = json.loads(podman("inspect", site.name(what)).stdout)[0]
    assert info["Config"]["User"] == f"{UID}:{UID}"
    assert not info["EffectiveCaps"]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert not mounts["/keys"]["RW"] and not mounts["/data"]["RW"]
    assert mounts["/ledger"]["Type"] == "volume" and mounts["/ledger"]["Name"] == site.name(
        f"ledger-{what}")
    users = podman("top", site.name(what), "user").stdout.split()[1:]
    assert users and set(users) == {"consortium"}, users


def _no_secret_in_any_layer(site: Site, archive: Path) -> None:
    podman("save", "--format", "docker-archive", "-m", "-o", str(archive), PARTNER, COORDINATOR,
           timeout=900)
    fed = volume_dir(site.name("fed"))
    names = {"org-a", "org-b", "org-a.pub", "org-b.pub", "org-a.csv", "org-b.csv", "ca.key",
             "server.key", "partners.json", "federation.json", "state.db", "audit.jsonl"}
    needles = [key_body(site.root / f"keys-{org}" / org) for org in ("org-a", "org-b")]
    needles += [key_body(fed / "ca.key"), key_body(fed / "server.key"),
                b"the movie was great good 1,"]
    found, files, seen_source = secrets_in_layers(archive, names, needles)
    archive.unlink()
    assert files > 10_000 and seen_source, (files, seen_source)  # the scan saw the images
    assert not found, found
