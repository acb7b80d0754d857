"""Benchmark: wall time per round, deployment engine (real SuperLink + SuperNodes over TLS on
loopback, each partner answered by its runner, client.runner) vs simulation engine, same App,
same data, same model (the default recipe, DP ε = 8), at each data size; where a deployed
partner-round goes, phase by phase, from the runners' own lines; and the runners' and workers'
resident memory round after round.

    python -m benchmarks.deploy [--partners 2] [--rounds 3] [--sizes 120,1000] [--set KEY=VALUE]
                                [--engines simulation,deployment]

``--set`` changes the run config of both engines alike (e.g. ``--set finetune=pooled-lora --set
lora-freeze-a=true``: a recipe that adapts the encoder, so a round trains for longer).
``--engines deployment --rounds 20`` measures the memory of 20 deployed rounds alone.

Writes OUT/deploy.json (after every arm) and prints the tables. The partners' data is the
embedded synthetic set written to CSV files, so it needs nothing outside the install. Round 1
pays one-off costs (the worker's imports, the frozen features of a partner's texts, cached on
its disk); the last round's line also holds the final EVALUATE; the steady round is the mean of
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
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import harness
from benchmarks.harness import Arm, Column
from client.runner.main import answered
from common.config import RunConfig
from common.infra.logs import configure_logging
from common.data.synthetic import LABELS, synthetic_partner_data
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
                  # the partner's own say on unlearnable plans, as the simulated run's
                  *([] if config.dp_plan_check else ["--allow-unlearnable-rounds"]),
                  env=PARTNER_ENV)
        out = root / "out"
        args = [CLI, "run", "--coordinator", str(root / "fed"), "--labels", ",".join(LABELS),
                "--out", str(out), "--rounds", str(config.num_rounds),
                "--set", f"examples-per-partner={config.examples_per_partner}",
                "--set", f"min-partners={partners}",
                "--set", f"dp-plan-check={str(config.dp_plan_check).lower()}",
                *(arg for item in sets for arg in ("--set", item))]
        subprocess.run(args, check=True, env=ENV, capture_output=True, timeout=3600)
        rounds = _rounds(out)
        lines = [line for i in range(partners) for line in answered(
            (root / "ledgers" / f"org-{i}" / "supernode.log").read_text(errors="replace"))]
        for number, line in enumerate(rounds, start=1):
            line["runner"] = [x for x in lines if x["type"] == "train" and x["round"] == number]
        return rounds
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


ENGINES = {"simulation": run_simulated, "deployment": run_deployment}


def arms(sizes: list[int], engines: Sequence[str] = tuple(ENGINES)) -> list[Arm]:
    return [Arm(f"{engine}-{n}", {"run": ENGINES[engine], "examples": n})
            for n in sizes for engine in ENGINES if engine in engines]


def steady(rounds: list[dict]) -> float:
    """Mean seconds of the rounds between the first (the worker's imports, features) and the
    last (whose line also holds the final EVALUATE)."""
    later = _steady_rounds(rounds)
    return sum(r["seconds"] for r in later) / len(later)


def _steady_rounds(rounds: list[dict]) -> list[dict]:
    return rounds[1:-1] if len(rounds) > 2 else rounds[1:] or rounds


def phases(dep: list[dict]) -> dict[str, float]:
    """Where a steady deployed partner-round goes: the runner's phases (mean over partners and
    steady rounds) and the rest of the round's wall time outside the slowest partner's runner
    (Flower's polls and transfers, and the coordinator's aggregation)."""
    later = [r for r in _steady_rounds(dep) if r.get("runner")]
    lines = [x for r in later for x in r["runner"]]
    if not lines:
        return {}
    mean = {k: sum(x[k] for x in lines) / len(lines) for k in ("inputs", "check", "app",
                                                               "reply", "total")}
    mean["outside"] = sum(r["seconds"] - max(x["total"] for x in r["runner"])
                          for r in later) / len(later)
    return mean


def memory(dep: list[dict]) -> list[dict]:
    """Per partner: the runner's and the worker's resident MB after round 2 and after the last
    round, and the growth in between."""
    rows = []
    lines = [x for r in dep for x in r.get("runner", [])]
    for partner in sorted({x["partner"] for x in lines}):
        mine = sorted((x for x in lines if x["partner"] == partner), key=lambda x: x["round"])
        second = next((x for x in mine if x["round"] == 2), None)
        if second is None:
            continue
        last = mine[-1]
        rows.append({"partner": partner, "rounds": last["round"],
                     "runner_mb_round_2": second["runner_mb"], "runner_mb_last": last["runner_mb"],
                     "runner_growth": last["runner_mb"] / second["runner_mb"] - 1,
                     "worker_mb_round_2": second["worker_mb"], "worker_mb_last": last["worker_mb"],
                     "worker_growth": last["worker_mb"] / second["worker_mb"] - 1,
                     "workers": len({x["worker"] for x in mine})})
    return rows


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
        rows.append({**row, **{f"runner_{k}": v for k, v in phases(dep).items()}})
    return rows


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--partners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="120,1000", help="examples per partner, per arm pair")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="which engines to run, comma-separated (default: both)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config change for both engines (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    args = parser.parse_args()
    configure_logging()
    sizes = [int(n) for n in args.sizes.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines {args.engines!r}: pick from {', '.join(ENGINES)}")
    # what an earlier run of this benchmark left (its arms' folders, σ cache, JSON) goes; nothing
    # else in OUT is touched (it may be a folder the user keeps other files in)
    for name in [arm.name for arm in arms(sizes)] + ["sigma-cache"]:
        shutil.rmtree(args.out / name, ignore_errors=True)
    (args.out / "deploy.json").unlink(missing_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    # σ calibrations (common.privacy.sigma_cache) start empty and are shared by both engines, so
    # round 1 pays Opacus' search in each and later rounds read it, whatever this machine kept
    # before
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
                          "engines": engines, "finetune": base.finetune,
                          "epsilon": base.epsilon, "set": args.set},
               "protocol": "one TRAIN Message per partner per round, one final EVALUATE"}

    def save(done: dict[str, list[dict]]) -> None:
        summary["rounds"] = done
        summary["summary"] = summarize(done, sizes)
        summary["memory"] = {n: memory(done[f"deployment-{n}"]) for n in sizes
                             if f"deployment-{n}" in done}
        harness.write_json(args.out / "deploy.json", summary)

    def measure(arm: Arm) -> list[dict]:
        config = base.replace(examples_per_partner=arm.settings["examples"])
        return arm.settings["run"]((args.out / arm.name).resolve(), config, args.partners,
                                   args.set)

    save(harness.run_arms(arms(sizes, engines), measure, save=save))
    _print_tables(summary)
    print(f"written: {args.out / 'deploy.json'}")
    return 0


def _print_tables(summary: dict[str, Any]) -> None:
    print("\n" + harness.table(summary["summary"], [
        Column("examples/partner", "examples_per_partner"),
        Column("sim round 1 s", "sim_round_1", ".1f"),
        Column("dep round 1 s", "dep_round_1", ".1f"),
        Column("sim steady s", "sim_steady", ".1f"), Column("dep steady s", "dep_steady", ".1f"),
        Column("dep / sim", "ratio_steady", ".2f"),
        Column("fixed cost / partner-round s", "fixed_cost_per_partner_round", ".1f"),
        Column("partner train s", "dep_partner_train_seconds", ".2f", missing="-")],
        markdown=True))
    print("\n" + harness.table(summary["summary"], [
        Column("examples/partner", "examples_per_partner"),
        Column("inputs s", "runner_inputs", ".2f", missing="-"),
        Column("code check s", "runner_check", ".3f", missing="-"),
        Column("App (warm worker) s", "runner_app", ".2f", missing="-"),
        Column("reply s", "runner_reply", ".2f", missing="-"),
        Column("outside the runner s", "runner_outside", ".2f", missing="-")], markdown=True))
    print("\n" + harness.table([{"examples_per_partner": n, **row}
                                for n, rows in summary["memory"].items() for row in rows], [
        Column("examples/partner", "examples_per_partner"), Column("partner", "partner"),
        Column("rounds", "rounds"), Column("workers", "workers"),
        Column("runner MB, round 2", "runner_mb_round_2", ".0f"),
        Column("runner MB, last", "runner_mb_last", ".0f"),
        Column("runner growth", "runner_growth", ".1%"),
        Column("worker MB, round 2", "worker_mb_round_2", ".0f"),
        Column("worker MB, last", "worker_mb_last", ".0f"),
        Column("worker growth", "worker_growth", ".1%")], markdown=True))


if __name__ == "__main__":
    sys.exit(main())
