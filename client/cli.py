"""`consortium partner ...`: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from client import ledger_cli
from client.deploy import (PartnerPolicy, check_partner_data, runner_command,
                           supernode_command, supernode_env)
from common.infra.keys import generate_node_keys, load_node_public_key
from common.code_hash import code_hash
from common.evaluation.oracle import DEFAULT_EVALUATION_NOISE, DEFAULT_MAX_EVALUATIONS
from client.policy import DEFAULT_FEATURE_CACHE_DAYS
from common.infra.console import node_console
from common.infra.processes import run_tagged


# a partner's processes never download: a model a run names must be on its disk (--allow-hub)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    partner = sub.add_parser("partner", help="a partner node next to its private data")
    psub = partner.add_subparsers(dest="action", required=True)
    p = psub.add_parser("keygen", help="create this partner's node key pair")
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True)
    p = psub.add_parser("start", help="join the coordinator and train when asked")
    p.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--ca", type=Path, help="the coordinator's ca.crt")
    p.add_argument("--key", type=Path, help="this partner's private node key (it also signs "
                   "this partner's secure-aggregation messages)")
    p.add_argument("--peers", type=Path, help="under secure aggregation, the only partners this "
                   "one aggregates with: a directory of their NAME.pub files, each checked with "
                   "its partner by fingerprint, this partner's own too (default: --key's "
                   "directory)")
    p.add_argument("--data", type=Path, required=True, help="CSV / TSV / JSONL, stays here")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-epsilon", type=float, required=True,
                   help="this partner's privacy budget over all runs on this data")
    p.add_argument("--delta", type=float, default=1e-5, help="δ the budget is counted at")
    p.add_argument("--name", help="partner name (default: the key file's name)")
    p.add_argument("--ledger-dir", type=Path, help="privacy ledger and audit log "
                   "(default: ~/.consortium/NAME)")
    p.add_argument("--allowed-base-models", default="", help="comma-separated; empty = any")
    p.add_argument("--device", default="", help="where to train: auto, cpu, cuda or cuda:N "
                   "(default: the run's device, auto = a visible GPU, else the CPU)")
    p.add_argument("--port", type=int, default=9094, help="local port of the SuperNode")
    p.add_argument("--max-wait-time", type=float, help="give up after this many seconds "
                   "without the coordinator (default: keep retrying with back-off)")
    p.add_argument("--insecure", action="store_true", help="no TLS: local trials only")
    p.add_argument("--verbose", action="store_true", help="show Flower's own lines too "
                   "(always in LEDGER-DIR/supernode.log)")
    _policy_arguments(p)
    p = psub.add_parser("approve", help="print the code hash of an App checkout you reviewed, "
                        "for --allowed-code")
    p.add_argument("checkout", type=Path, nargs="?", default=Path("."),
                   help="the reviewed checkout (default: the current directory)")
    p = psub.add_parser("evaluate", help="score a release on a labelled file of yours; the "
                        "report stays here")
    p.add_argument("--model", type=Path, required=True, help="the release: a run's OUT/model")
    p.add_argument("--data", type=Path, required=True, help="labelled CSV / TSV / JSONL (or "
                   "CoNLL for token-classification)")
    p.add_argument("--text-column", default="", help="default: the release's run config")
    p.add_argument("--label-column", default="", help="default: the release's run config")
    p.add_argument("--group-column", default="", help="also score per value of this column "
                   "(e.g. sex, age band)")
    p.add_argument("--min-group-size", type=int, default=10, help="fewest examples a group is "
                   "shown for (smaller ones, and one the totals would reveal, left out)")
    p.add_argument("--out", type=Path, help="report directory (default: monitoring/RELEASE_ID)")
    p.add_argument("--allow-hub", action="store_true", help="download the base model if this "
                   "machine lacks it (default: offline)")
    ledger_cli.add_parsers(psub)


def _policy_arguments(p: argparse.ArgumentParser) -> None:
    """The partner's policy beyond its budget (client/policy.py), passed as node config."""
    p.add_argument("--data-id", default="", help="names this data source's privacy ledger "
                   "(default: the data file's path); a new id starts a new ledger")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="share of rows held out for evaluation, chosen by each row's text "
                   "(default 0.2); the coordinator cannot change it")
    p.add_argument("--min-partners", type=int, default=0,
                   help="refuse runs that aggregate with fewer partners than this")
    p.add_argument("--require-secure-aggregation", action="store_true")
    p.add_argument("--require-central-dp", action="store_true")
    p.add_argument("--max-rounds", type=int, default=0, help="most rounds trained per run")
    p.add_argument("--release-metrics", default="", help="un-noised batch metrics to send: "
                   "train-loss, clipped-fraction (default: none)")
    p.add_argument("--evaluation", default="counts", choices=("counts", "full", "off", "dp"),
                   help="what held-out evaluation sends: counts (default), full (+ exact "
                   "loss), dp (counts with Gaussian noise, paid in ε) or off")
    p.add_argument("--max-evaluations", type=int, default=DEFAULT_MAX_EVALUATIONS,
                   help="most exact (not DP) answers on this data over all runs: evaluation "
                   f"and monitoring counts (default {DEFAULT_MAX_EVALUATIONS})")
    p.add_argument("--evaluation-noise", type=float, default=DEFAULT_EVALUATION_NOISE,
                   help="with --evaluation dp: the noise std in units of the counts' "
                   f"sensitivity (default {DEFAULT_EVALUATION_NOISE:g})")
    p.add_argument("--allow-unlearnable-rounds", action="store_true",
                   help="train DP rounds the planner predicts cannot learn (refused by "
                   "default, whatever the run's dp-plan-check)")
    p.add_argument("--allowed-code", default="", help="comma-separated code hashes from "
                   "`consortium partner approve`; empty = any")
    p.add_argument("--person-column", default="", help="column naming whose row it is: DP "
                   "then protects each person (all its rows), not each row (docs/people.md)")
    p.add_argument("--group-column", default="", help="column (e.g. sex, age band) to score "
                   "the shared model per group of; counts only leave, never the column")
    p.add_argument("--min-group-size", type=int, default=0, help="fewest held-out examples "
                   "(distinct persons, with --person-column) a group's counts need to leave "
                   "(default 10); a run can raise it, never lower it")
    p.add_argument("--corrections", default="", help="reviewed corrections (text, corrected "
                   "label; the data's columns) folded into its data for the next rounds; only "
                   "their count is reported")
    p.add_argument("--keep-sent", action="store_true", help="keep a copy of every update "
                   "sent in LEDGER-DIR/sent/ (what left, for an audit; as large as the updates)")
    p.add_argument("--monitor-data", type=Path, help="labelled file of new data that a "
                   "monitoring run scores the release on (read when asked; stays here)")
    p.add_argument("--monitoring", default="off", choices=("off", "counts"), help="counts = "
                   "answer monitoring runs with counts (no text, no per-row predictions); "
                   "default off")
    p.add_argument("--deidentify", action="store_true", help="mask names, e-mails, phones, "
                   "addresses, dates, IDs, URLs and IPs before tokenizing (the deid extra)")
    p.add_argument("--feature-cache-days", type=float, default=DEFAULT_FEATURE_CACHE_DAYS,
                   help="days cached features of its texts are kept (default "
                   f"{DEFAULT_FEATURE_CACHE_DAYS:g}; 0 = none)")
    p.add_argument("--allow-hub", action="store_true", help="let its processes download a "
                   "base model from the Hugging Face hub (default: offline, only models on "
                   "this machine)")


def _policy(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    values = {"data-id": args.data_id, "test-fraction": args.test_fraction,
              "min-partners": args.min_partners,
              "require-secure-aggregation": args.require_secure_aggregation,
              "require-central-dp": args.require_central_dp, "max-rounds": args.max_rounds,
              "release-metrics": args.release_metrics, "evaluation": args.evaluation,
              "allowed-code": args.allowed_code, "person-column": args.person_column,
              "group-column": args.group_column, "min-group-size": args.min_group_size,
              "deidentify": args.deidentify, "keep-sent": args.keep_sent,
              "corrections": str(Path(args.corrections).resolve()) if args.corrections else "",
              "monitor-data": str(args.monitor_data.resolve()) if args.monitor_data else "",
              "monitoring": args.monitoring, "max-evaluations": args.max_evaluations,
              "evaluation-noise": args.evaluation_noise,
              "allow-unlearnable-rounds": args.allow_unlearnable_rounds,
              "secagg-key": str(args.key.resolve()) if args.key else "",
              "secagg-peers": str(args.peers.resolve()) if args.peers else "",
              "feature-cache-days": args.feature_cache_days, "allow-hub": args.allow_hub}
    defaults = {"data-id": "", "test-fraction": 0.0, "min-partners": 0,
                "require-secure-aggregation": False, "require-central-dp": False,
                "max-rounds": 0, "release-metrics": "", "evaluation": "counts",
                "allowed-code": "", "person-column": "", "group-column": "",
                "min-group-size": 0, "deidentify": False, "keep-sent": False,
                "corrections": "",
                "monitor-data": "", "monitoring": "off",
                "max-evaluations": DEFAULT_MAX_EVALUATIONS,
                "evaluation-noise": DEFAULT_EVALUATION_NOISE, "allow-unlearnable-rounds": False,
                "secagg-key": "", "secagg-peers": "",
                "feature-cache-days": DEFAULT_FEATURE_CACHE_DAYS, "allow-hub": False}
    return tuple((k, v) for k, v in values.items() if v != defaults[k])


def handle(args: argparse.Namespace) -> int:
    if args.action == "approve":
        print(code_hash(args.checkout))
        return 0
    if args.action == "evaluate":
        return _evaluate(args)
    if args.action in ledger_cli.ACTIONS:
        return ledger_cli.handle(args)
    if args.action == "keygen":
        private, public = generate_node_keys(args.dir, args.name)
        print(f"private key {private} (keep it here, 0600); send {public} to the coordinator")
        print(f"key fingerprint {load_node_public_key(public)}: read it to the coordinator's "
              "operator by phone; `consortium coordinator enroll` prints the one it received")
        return 0
    name = args.name or (args.key.name if args.key else None)
    if not name:
        raise SystemExit("consortium: error: --name is required without --key")
    policy = PartnerPolicy(
        name=name, data=args.data, max_epsilon=args.max_epsilon, delta=args.delta,
        ledger_dir=args.ledger_dir or Path.home() / ".consortium" / name,
        text_column=args.text_column, label_column=args.label_column,
        allowed_base_models=args.allowed_base_models, device=args.device,
        extra=_policy(args))
    rows = check_partner_data(policy)
    supernode = supernode_command(policy, args.coordinator, args.ca, args.key, args.port,
                                  args.insecure)
    if args.max_wait_time:
        supernode += ["--max-wait-time", str(args.max_wait_time)]
    command = runner_command(policy, supernode, args.port)
    if args.insecure:
        print("WARNING: --insecure: the connection is not encrypted. Local trials only.",
              flush=True)
    code = (f"{len(args.allowed_code.split(','))} approved hash(es)" if args.allowed_code
            else "any (no --allowed-code)")
    print(f"{name}: {rows} rows in {args.data}; budget ε ≤ {args.max_epsilon:g} at "
          f"δ = {args.delta:g}; code: {code}; evaluation: {args.evaluation} (at most "
          f"{args.max_evaluations} exact answers on this data); ledger in "
          f"{policy.ledger_dir}; Flower's log in {policy.ledger_dir}/supernode.log", flush=True)
    env = {**supernode_env(os.environ), **({} if args.allow_hub else OFFLINE)}
    return run_tagged(command, env, f"{name}'s SuperNode, runner and worker",
                      lambda: "its ledger holds every round it trained; start it again with the "
                              "same command; a run that stopped meanwhile goes on when the "
                              "coordinator resumes it (`consortium run ... --resume`)",
                      console=node_console(args.verbose),
                      log=Path(policy.ledger_dir) / "supernode.log",
                      grace=10.0)  # the runner's drain (3.5 s), then its SuperNode's leave (4 s)


def _evaluate(args: argparse.Namespace) -> int:
    from client.monitor import MonitorRequest, evaluate_release

    out, report = evaluate_release(MonitorRequest(
        args.model, args.data, args.text_column, args.label_column, args.group_column, args.out,
        args.min_group_size, args.allow_hub))
    value, ece = report["value"], report["calibration"]["ece"]
    print(f"release {report['release_id']} on {report['examples']} examples: "
          f"{report['metric']} {'n/a' if value is None else f'{value:.4f}'}, ECE "
          f"{'n/a' if ece is None else f'{ece:.4f}'}; report in {out} (nothing was sent)")
    return 0
