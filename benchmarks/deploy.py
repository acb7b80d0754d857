"""Benchmark: wall time per round, deployment engine (real SuperLink + SuperNodes over TLS on
loopback) vs simulation engine, same App, same data, same model (the default recipe, DP ε = 8),
at each data size; and where the gap goes, phase by phase, in a fresh ClientApp process.

    python -m benchmarks.deploy [--partners 2] [--rounds 3] [--sizes 120,1000] [--set KEY=VALUE]

``--set`` changes the run config of both engines alike (e.g. ``--set finetune=pooled-lora --set
lora-freeze-a=true``: a recipe that adapts the encoder, so a round trains for longer).

Writes OUT/deploy.json (after every arm) and prints the tables. The partners' data is the
embedded synthetic set written to CSV files, so it needs nothing outside the install. Round 1
pays one-off costs (the FAB install, the frozen features of a partner's texts, cached on its
disk); the last round's line also holds the final EVALUATE; the steady round is the mean of
the rounds between.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import harness
from benchmarks.harness import Arm, Column
from common.config import RunConfig
from common.logs import configure_logging
from common.synthetic import LABELS, synthetic_partner_data
from simulations.cli import parse_set
from simulations.simulate import Federation, run_simulation

CLI = str(Path(sys.executable).with_name("consortium"))
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "HF_HUB_OFFLINE": "1"}
# each partner's processes get one core's threads, as Ray gives each simulated partner
# (client-resources-num-cpus = 1 sets OMP_NUM_THREADS = 1 in its actors): on one box, partners
# that each take every core's threads oversubscribe it (measured: 4.5 x slower DP training with 2
# partners on 2 cores), which is not what sites on their own machines pay
PARTNER_ENV = {**ENV, "OMP_NUM_THREADS": "1"}
STARTUP_PROBE = """
import sys, time; t0 = time.time()
import client.app  # what a fresh flwr-clientapp process imports
t1 = time.time()
from common.config import RunConfig; from common.model import build_model, load_tokenizer
from common.synthetic import LABELS, synthetic_partner_data
from common.tasks import get_task
import json; c = RunConfig.from_mapping(json.loads(sys.argv[1])); tok = load_tokenizer(c)
model = build_model(c, LABELS); t2 = time.time()
get_task(c.task).encode(tok, synthetic_partner_data(0, c.examples_per_partner, c.seed),
                        c.max_length)
t3 = time.time()
from common.model import trainable_size; from common.planner import plan_dp
plan_dp(int(c.examples_per_partner * (1 - c.test_fraction)), c.epsilon, c.delta, c.num_rounds,
        c.local_epochs, trainable_size(model), c.max_grad_norm, finetune=c.finetune, check=False)
print(t1 - t0, t2 - t1, t3 - t2, time.time() - t3)
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


def _rounds(out: Path) -> list[dict]:
    """Per round: wall seconds and the partners' own training seconds."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"seconds": line["seconds"],
             "partner_train_seconds": line.get("partner_train_seconds", {})} for line in lines]


def run_deployment(root: Path, config: RunConfig, partners: int,
                   sets: Sequence[str] = ()) -> list[dict]:
    procs: list[subprocess.Popen] = []
    port = _free_port()

    def start(log: str, *args: str, env: dict[str, str] = ENV) -> None:
        procs.append(subprocess.Popen([CLI, *args], stdout=open(root / log, "w"),
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True))
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
                  "--port", str(_free_port()), "--ledger-dir", str(root / "ledgers" / name),
                  env=PARTNER_ENV)
        out = root / "out"
        args = [CLI, "run", "--coordinator", str(root / "fed"), "--labels", ",".join(LABELS),
                "--out", str(out), "--rounds", str(config.num_rounds),
                "--set", f"examples-per-partner={config.examples_per_partner}",
                "--set", f"min-partners={partners}",
                "--set", f"dp-plan-check={str(config.dp_plan_check).lower()}",
                *(arg for item in sets for arg in ("--set", item))]
        subprocess.run(args, check=True, env=ENV, capture_output=True, timeout=1800)
        return _rounds(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def run_simulated(root: Path, config: RunConfig, partners: int,
                  sets: Sequence[str] = ()) -> list[dict]:
    """The same federation through Flower's simulation engine (``sets`` are in ``config``)."""
    run_simulation(config.replace(out_dir=str(root)), Federation(partners))
    return _rounds(root)


def arms(sizes: list[int]) -> list[Arm]:
    return [Arm(f"{engine}-{n}", {"run": run, "examples": n})
            for n in sizes for engine, run in (("simulation", run_simulated),
                                               ("deployment", run_deployment))]


def startup_probe(examples: int, changes: dict[str, Any]) -> dict[str, float]:
    """Seconds a fresh ClientApp process spends importing, building the model (the run config
    with ``changes``), reading and tokenizing ``examples`` texts, and planning DP (σ): what
    every Message pays in deployment. Run twice on an empty σ cache: the first process pays
    Opacus' search (``plan_search``), the second reads the kept σ (``plan``, the steady cost;
    the other phases are the second run's too)."""
    config = json.dumps({**changes, "examples-per-partner": examples})
    with tempfile.TemporaryDirectory() as cache:
        runs = [subprocess.run([sys.executable, "-c", STARTUP_PROBE, config],
                               capture_output=True, text=True, check=True,
                               env={**ENV, "CONSORTIUM_CACHE_DIR": cache}).stdout.split()
                for _ in range(2)]
    phases = dict(zip(("imports", "model_build", "data_and_tokenize", "plan"),
                      map(float, runs[1])))
    return {**phases, "plan_search": float(runs[0][3])}


def steady(rounds: list[dict]) -> float:
    """Mean seconds of the rounds between the first (FAB install, features) and the last (whose
    line also holds the final EVALUATE)."""
    later = rounds[1:-1] if len(rounds) > 2 else rounds[1:] or rounds
    return sum(r["seconds"] for r in later) / len(later)


def summarize(results: dict[str, list[dict]], sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        sim, dep = results.get(f"simulation-{n}"), results.get(f"deployment-{n}")
        if not (sim and dep):
            continue
        row = {"examples_per_partner": n, "sim_round_1": sim[0]["seconds"],
               "dep_round_1": dep[0]["seconds"], "sim_steady": steady(sim),
               "dep_steady": steady(dep)}
        row["ratio_steady"] = row["dep_steady"] / row["sim_steady"]
        # partners train side by side (one core each): the gap is what each partner's fresh
        # process pays per round, on top of the same training
        row["fixed_cost_per_partner_round"] = row["dep_steady"] - row["sim_steady"]
        train = [s for r in dep[1:] for s in r["partner_train_seconds"].values() if s]
        row["dep_partner_train_seconds"] = sum(train) / len(train) if train else None
        rows.append(row)
    return rows


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--partners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="120,1000", help="examples per partner, per arm pair")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config change for both engines (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    args = parser.parse_args()
    configure_logging()
    sizes = [int(n) for n in args.sizes.split(",")]
    # what an earlier run of this benchmark left (its arms' folders, σ cache, JSON) goes; nothing
    # else in OUT is touched (it may be a folder the user keeps other files in)
    for name in [arm.name for arm in arms(sizes)] + ["sigma-cache"]:
        shutil.rmtree(args.out / name, ignore_errors=True)
    (args.out / "deploy.json").unlink(missing_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    # σ calibrations (common.sigma_cache) start empty and are shared by both engines, so round 1
    # pays Opacus' search in each and later rounds read it, whatever this machine kept before
    cache = str((args.out / "sigma-cache").resolve())
    for env in (os.environ, ENV, PARTNER_ENV):
        env["CONSORTIUM_CACHE_DIR"] = cache
    # the planner would refuse 120 examples at ε = 8 (it predicts no learning): timing only
    changes = parse_set(args.set)
    base = RunConfig.from_mapping({**RunConfig(num_rounds=args.rounds, labels=",".join(LABELS),
                                               min_partners=args.partners,
                                               dp_plan_check=False).to_mapping(), **changes})
    summary = {**harness.header("benchmarks.deploy"),
               "config": {"partners": args.partners, "rounds": args.rounds, "sizes": sizes,
                          "finetune": base.finetune, "epsilon": base.epsilon,
                          "set": args.set},
               "protocol": "one TRAIN Message per partner per round, one final EVALUATE"}

    def save(done: dict[str, list[dict]]) -> None:
        summary["rounds"] = done
        summary["summary"] = summarize(done, sizes)
        harness.write_json(args.out / "deploy.json", summary)

    def measure(arm: Arm) -> list[dict]:
        config = base.replace(examples_per_partner=arm.settings["examples"])
        return arm.settings["run"]((args.out / arm.name).resolve(), config, args.partners,
                                   args.set)

    results = harness.run_arms(arms(sizes), measure, save=save)
    summary["fresh_clientapp_process"] = {n: startup_probe(n, changes) for n in sizes}
    save(results)
    print("\n" + harness.table(summary["summary"], [
        Column("examples/partner", "examples_per_partner"),
        Column("sim round 1 s", "sim_round_1", ".1f"),
        Column("dep round 1 s", "dep_round_1", ".1f"),
        Column("sim steady s", "sim_steady", ".1f"), Column("dep steady s", "dep_steady", ".1f"),
        Column("dep / sim", "ratio_steady", ".2f"),
        Column("fixed cost / partner-round s", "fixed_cost_per_partner_round", ".1f"),
        Column("partner train s", "dep_partner_train_seconds", ".2f", missing="-")],
        markdown=True))
    print("\n" + harness.table([{"examples_per_partner": n, **p} for n, p in
                                summary["fresh_clientapp_process"].items()], [
        Column("examples/partner", "examples_per_partner"), Column("imports s", "imports", ".2f"),
        Column("model build s", "model_build", ".2f"),
        Column("data + tokenize s", "data_and_tokenize", ".2f"),
        Column("DP plan, σ searched s", "plan_search", ".2f"),
        Column("DP plan, σ kept s", "plan", ".2f")], markdown=True))
    print(f"written: {args.out / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
