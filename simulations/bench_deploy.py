"""Benchmark: wall time per round, deployment engine (real SuperLink + SuperNodes over TLS on
loopback) vs simulation engine, same App, same data, same model; and where the gap goes.

    python -m simulations.bench_deploy [--partners 2] [--rounds 2] [--out results/deploy]

Writes OUT/deploy.json and prints a table. The partners' data is the embedded synthetic set
written to CSV files, so it needs nothing outside the install.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.config import RunConfig
from common.logs import configure_logging
from common.synthetic import LABELS, synthetic_partner_data
from simulations.bench_env import machine, versions
from simulations.simulate import Federation, run_simulation

CLI = str(Path(sys.executable).with_name("consortium"))
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "HF_HUB_OFFLINE": "1"}
STARTUP_PROBE = """
import time; t0 = time.time()
import client.app  # what a fresh flwr-clientapp process imports
t1 = time.time()
from common.config import RunConfig; from common.model import build_model, load_tokenizer
from common.synthetic import LABELS
c = RunConfig(); load_tokenizer(c); build_model(c, LABELS)
print(t1 - t0, time.time() - t1)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int) -> None:
    for _ in range(120):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(port)


def _round_seconds(out: Path) -> list[float]:
    return [json.loads(x)["seconds"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def run_deployment(root: Path, config: RunConfig, partners: int) -> list[float]:
    procs: list[subprocess.Popen] = []
    port = _free_port()

    def start(log: str, *args: str) -> None:
        procs.append(subprocess.Popen([CLI, *args], stdout=open(root / log, "w"),
                                      stderr=subprocess.STDOUT, env=ENV, start_new_session=True))
    try:
        subprocess.run([CLI, "coordinator", "init", str(root / "fed"), "--port", str(port)],
                       check=True, env=ENV, capture_output=True)
        start("superlink.log", "coordinator", "start", str(root / "fed"), "--bind", "127.0.0.1")
        _wait_port(port)
        for i in range(partners):
            name = f"org-{i}"
            subprocess.run([CLI, "partner", "keygen", str(root / "keys"), "--name", name],
                           check=True, env=ENV, capture_output=True)
            subprocess.run([CLI, "coordinator", "enroll", str(root / "keys" / f"{name}.pub"),
                            "--name", name, "--dir", str(root / "fed")], check=True, env=ENV,
                           capture_output=True)
            data = synthetic_partner_data(i, config.examples_per_partner, config.seed)
            with open(root / f"{name}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows((t, LABELS[y]) for t, y in zip(data.texts, data.labels))
            start(f"{name}.log", "partner", "start", "--coordinator", f"127.0.0.1:{port}",
                  "--ca", str(root / "fed" / "ca.crt"), "--key", str(root / "keys" / name),
                  "--data", str(root / f"{name}.csv"), "--max-epsilon", "100",
                  "--port", str(_free_port()), "--ledger-dir", str(root / "ledgers" / name))
        out = root / "out"
        args = [CLI, "run", "--coordinator", str(root / "fed"), "--labels", ",".join(LABELS),
                "--out", str(out), "--rounds", str(config.num_rounds),
                "--set", f"examples-per-partner={config.examples_per_partner}",
                "--set", f"min-partners={partners}"]
        subprocess.run(args, check=True, env=ENV, capture_output=True, timeout=1800)
        return _round_seconds(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples-per-partner", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    args = parser.parse_args()
    configure_logging()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    config = RunConfig(num_rounds=args.rounds, examples_per_partner=args.examples_per_partner,
                       labels=",".join(LABELS), out_dir=str((args.out / "sim").resolve()),
                       min_partners=args.partners)
    run_simulation(config, Federation(args.partners))
    simulated = _round_seconds(args.out / "sim")
    deployed = run_deployment((args.out / "deploy").resolve(), config, args.partners)
    probe = subprocess.run([sys.executable, "-c", STARTUP_PROBE], capture_output=True,
                           text=True, check=True, env=ENV).stdout.split()
    imports, model_load = float(probe[0]), float(probe[1])
    mean_sim, mean_dep = sum(simulated) / len(simulated), sum(deployed) / len(deployed)
    summary = {
        "command": " ".join(["python -m simulations.bench_deploy", *sys.argv[1:]]),
        "machine": machine(), "versions": versions(),
        "config": {"partners": args.partners, "rounds": args.rounds,
                   "examples_per_partner": args.examples_per_partner, "model": "MiniLM + LoRA"},
        "round_seconds": {"simulation": simulated, "deployment": deployed},
        "ratio_deployment_over_simulation": mean_dep / mean_sim,
        "fresh_clientapp_process": {"import_seconds": imports, "model_load_seconds": model_load},
    }
    (args.out / "deploy.json").write_text(json.dumps(summary, indent=2))
    print(f"\nround wall time, {args.partners} partners: simulation {mean_sim:.1f} s, deployment "
          f"{mean_dep:.1f} s, ratio {mean_dep / mean_sim:.2f}")
    print(f"a fresh ClientApp process spends {imports:.1f} s importing and {model_load:.1f} s "
          "loading the model, twice per partner per round (train + evaluate)")
    print(f"written: {args.out / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
