"""The `consortium` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from client import cli as client_cli
from common.config import RunConfig, epsilon_keys
from common.errors import ConfigError, ConsortiumError, RunStopped, StoppedBySignal
from common.infra.logs import configure_logging
from server import cli as server_cli
from server import warm_start_cli
from simulations import audit, plan_cli, predict_cli, recipe_choice

logger = logging.getLogger(__name__)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs, values read as TOML scalars (int, float, bool, string)."""
    import tomllib

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConsortiumError(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run N partners on this machine (Flower simulation)")
    p.add_argument("--partners", type=int, default=3, help="simulated partners (default 3)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: num-rounds)")
    p.add_argument("--data", help="CSV / TSV / JSONL file to split across partners "
                                  "(default: the embedded synthetic set)")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--labels", help="comma-separated label set (default: those in --data)")
    p.add_argument("--partition", help="iid | dirichlet:ALPHA | column:NAME")
    p.add_argument("--epsilon", type=float, help="target ε per partner; inf = no DP")
    p.add_argument("--out", help="output directory (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="start from this release (an earlier run's OUT/model) instead of the "
                        "base model's initial weights; ledger-dir defaults to its run's")
    p.add_argument("--monitor", metavar="MODEL_DIR",
                   help="train nothing: each partner scores this release on its new data and "
                        "sends counts; partners whose accuracy fell by more than "
                        "drift-threshold are flagged (OUT/monitoring.md)")
    p.add_argument("--num-cpus", type=int, default=1, help="CPUs per simulated partner")
    p.add_argument("--num-gpus", type=float, default=0.0,
                   help="GPU share per simulated partner, e.g. 0.25 (partners see a GPU only "
                        "with a share > 0)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--verbose", action="store_true",
                   help="show Flower's and Ray's own log lines too (always in OUT/flwr.log)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config key (docs/configuration.md), repeatable")


def simulate_config(args: argparse.Namespace) -> RunConfig:
    values = parse_set(args.set)
    flags = {"num-rounds": args.rounds, "data": args.data, "text-column": args.text_column,
             "label-column": args.label_column, "labels": args.labels,
             "partition": args.partition, "out-dir": args.out, "device": args.device,
             "init-from": args.init_from, "monitor": args.monitor}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.resume:
        values["resume"] = True
    if args.epsilon is not None:
        values.update(epsilon_keys(args.epsilon))
    return RunConfig.from_mapping(values)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and its PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's out-dir (holds metrics.jsonl)")


def _example_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example-data", help="write one simulated partner's slice of the embedded "
                       "news-topic data as a CSV (text,label), e.g. for a local trial")
    p.add_argument("out", type=Path, help="the CSV to write (refused if it exists)")
    p.add_argument("--partner", type=int, default=0, help="which partner's label mix (0, 1, …)")
    p.add_argument("--rows", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)


def example_data(out: Path, partner: int, rows: int, seed: int) -> str:
    """The embedded data of ``partner`` (common.data.synthetic) as ``out``; one line saying so."""
    import csv
    import io

    from common.infra.storage import atomic_write_bytes
    from common.data.synthetic import synthetic_partner_data

    if rows < 1 or partner < 0:
        raise ConfigError(f"example-data: --rows must be ≥ 1 and --partner ≥ 0 (got {rows}, "
                          f"{partner})")
    if out.exists():
        raise ConfigError(f"example-data: {out} exists; choose another path")
    data = synthetic_partner_data(partner, rows, seed)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows((t, data.label_names[y]) for t, y in zip(data.texts, data.labels))
    atomic_write_bytes(out, text.getvalue().encode())
    return f"{out}: {rows} rows, labels {','.join(data.label_names)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consortium", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    server_cli.add_parsers(sub)
    client_cli.add_parsers(sub)
    audit.add_parser(sub)
    plan_cli.add_parser(sub)
    predict_cli.add_parser(sub)
    warm_start_cli.add_parser(sub)
    _report_parser(sub)
    _example_data_parser(sub)
    recipe_choice.add_parser(sub)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        if args.command in ("coordinator", "run", "runs"):
            return server_cli.handle(args, parse_set(getattr(args, "set", [])))
        if args.command == "partner":
            return client_cli.handle(args)
        if args.command == "plan":
            return plan_cli.handle(args)
        if args.command == "predict":
            return predict_cli.handle(args)
        if args.command == "warm-start":
            return warm_start_cli.handle(args)
        if args.command == "audit":
            return audit.handle(args, parse_set(args.set))
        if args.command == "choose-recipe":
            return recipe_choice.handle(args, parse_set(args.set))
        if args.command == "example-data":
            print(example_data(args.out, args.partner, args.rows, args.seed))
        if args.command == "report":
            from server.report import write_report

            print(f"report: {write_report(args.run_dir)}")
        if args.command == "simulate":
            from simulations.simulate import Federation, run_simulation

            out = run_simulation(simulate_config(args),
                                 Federation(args.partners, args.num_cpus, args.num_gpus),
                                 verbose=args.verbose)
            print(f"done: {out}/monitoring.md, {out}/monitoring.json" if args.monitor else
                  f"done: {out}/model, {out}/metrics.jsonl, {out}/privacy_report.json")
    except StoppedBySignal as exc:  # asked for: not an error; the shell's 128 + signal
        print(f"consortium: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except RunStopped as exc:  # expected: what happened and what fixes it, in one line
        print(f"consortium: run stopped: {exc}", file=sys.stderr)
        return 1
    except ConsortiumError as exc:
        print(f"consortium: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
