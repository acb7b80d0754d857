"""Write docs/configuration.md from the code: every run-config key (``RunConfig`` in
common/config.py, with the help text and checks each field carries) and every key of a partner's
policy (``PartnerSettings`` in client/policy.py, with the meanings kept below).

    python scripts/gen_config_docs.py           # rewrite docs/configuration.md
    python scripts/gen_config_docs.py --check   # exit 1 when the file is not what this writes

Imports only the config modules, so it runs in a fraction of a second. A policy key without a
meaning here is an error: add one when client/policy.py learns a key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import policy  # noqa: E402
from common import config  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"
COMMAND = "python scripts/gen_config_docs.py"

# node-config key -> PartnerSettings field, where the names differ
POLICY_FIELDS = {"partner-name": "name"}
# keys Flower sets for a simulated partner: no `consortium partner start` flag
SIMULATION_ONLY = ("partition-id", "num-partitions")
# node-config key -> its `consortium partner start` flag, where not --KEY
POLICY_FLAGS = {"data-path": "--data", "partner-name": "--name", "secagg-key": "--key",
                "secagg-peers": "--peers"}

# What each policy key means. client/policy.py keeps the defaults and the checks; the words are
# here, so a new key fails this script until it is explained.
POLICY_HELP = {
    "partition-id": "Simulation only (Flower sets it): which slice of the run's `data` this "
                    "simulated partner holds.",
    "num-partitions": "Simulation only (Flower sets it): how many slices the run's `data` is "
                      "cut into.",
    "partner-name": "The partner's name in the coordinator's logs, `metrics.jsonl` and its "
                    "ledger's file name; unset = `partner-ID` (`consortium partner start`: the "
                    "key file's name).",
    "data-path": "The partner's own data file (CSV / TSV / JSONL, or CoNLL for "
                 "token-classification); it never leaves. Empty = a simulated partner, whose "
                 "rows come from the run's `data`.",
    "text-column": "The column of its own file holding the text; empty = the run's "
                   "`text-column`.",
    "label-column": "The column of its own file holding the label; empty = the run's "
                    "`label-column`.",
    "ledger-dir": "Where it keeps its privacy ledger, audit log (`audit.jsonl`) and caches; "
                  "empty = the run's `ledger-dir`, else OUT-DIR/ledgers (simulation). "
                  "`consortium partner start` defaults to ~/.consortium/NAME.",
    "max-epsilon": "Its budget over **all runs on this data source**: a round that would take "
                   "its ε (or the rest of the run's plan) past it is refused before anything "
                   "is spent. With a finite budget a run with `dp = false` is refused. "
                   "`consortium partner start` requires it.",
    "delta": "The δ its budget is counted at: a run asking a larger δ is refused, and the "
             "larger of the two must be below 1 / its training examples. 0 = the run's "
             "`delta` (`consortium partner start` defaults to 1e-5).",
    "allowed-base-models": "Comma-separated base models a run may fine-tune, or a monitoring "
                           "run score, on its data; empty = any.",
    "device": "Where it trains, whatever the run config says: auto, cpu, cuda or cuda:N; "
              "empty = the run's `device`. A GPU named and not visible stops the round before "
              "anything is spent.",
    "data-id": "Names the data source its ledger is kept for (`LEDGER-DIR/NAME@SOURCE.json`). "
               "Empty = recognised by content: data sharing rows with one of its ledgers "
               "(hashed with its secret, `LEDGER-DIR/partner.secret`) composes into it, "
               "whatever the file is called or where it lies (a symlink, another partner name "
               "on the same data), else a new ledger named after its data file. Every seed, "
               "split, label order and appended row composes into that ledger; a new id (the "
               "partner's explicit choice) starts a new one. 1-64 letters, digits, `.`, `_` or "
               "`-`.",
    "test-fraction": "Its held-out share, chosen by a hash of each row's text (of each row's "
                     "person, with `person-column`) keyed with its secret "
                     "(`LEDGER-DIR/partner.secret`): the coordinator can neither move it nor "
                     "compute which rows are held out (a simulated partner, the run author's "
                     "own, hashes without a key, so research runs replay). 0 = 0.2 with its "
                     "own data, the run's `test-fraction` when simulated.",
    "min-partners": "Refuse runs whose `min-partners` is lower (under secure aggregation: "
                    "fewer partners in the key exchange); 0 = no rule.",
    "require-secure-aggregation": "Refuse runs without `secure-aggregation = true`.",
    "require-central-dp": "Refuse runs without `central-dp = true`.",
    "max-rounds": "The most rounds it trains in one run; 0 = no limit.",
    "release-metrics": "Comma-separated un-noised metrics of its training batches it sends: "
                       "`train-loss`, `clipped-fraction`. Empty = none (they are not DP).",
    "evaluation": "What its held-out evaluation sends: `counts` (accuracy, macro-F1, per-class "
                  "counts), `full` (adds the exact loss), `dp` (num-examples and per-class "
                  "counts with Gaussian noise, accuracy and macro-F1 computed from them, no "
                  "loss and no per-group counts; each answer's ε is recorded in its ledger and "
                  "counts against `max-epsilon`; text-classification without `person-column` "
                  "only) or `off` (nothing).",
    "max-evaluations": "The most exact (not DP) answers it gives on its data over **all runs**: "
                       "each held-out evaluation under `counts` or `full` (its per-group counts "
                       "included) and each monitoring answer is one, recorded in its ledger "
                       "before it is computed; the next is refused and records nothing. "
                       "`evaluation = dp` answers are paid in ε instead. 0 = none.",
    "evaluation-noise": "With `evaluation = dp`: the noise multiplier z, the noise std in units "
                        "of the counts' sensitivity to one example (√3 for text "
                        "classification); each answer is one Gaussian mechanism in its ledger "
                        "(ε ≈ 0.38 at z = 10 and δ = 1e-5; ten of them ≈ 1.3).",
    "allow-unlearnable-rounds": "Train DP rounds whose predicted noise-to-signal means they "
                                "cannot learn. A partner with its own data refuses them, "
                                "before anything is spent, whatever the run's `dp-plan-check` "
                                "says (such a round costs almost no ε and would buy another "
                                "evaluation); a simulated partner follows `dp-plan-check`.",
    "allowed-code": "Comma-separated hashes from `consortium partner approve CHECKOUT` (every "
                    "file the App's FAB carries); a run whose App hashes otherwise, or holds "
                    "compiled code its sources do not vouch for, is refused before the rest of "
                    "it is imported. Empty = any.",
    "person-column": "The column of its own file naming whose row it is: DP-SGD samples persons "
                     "and clips each person's gradient as one unit, so ε is **per person**; its "
                     "ledger then holds per-person releases only. Empty = per example.",
    "group-column": "A column of its own file (sex, age band, region) to score the shared "
                    "model per group of; counts only leave, never the column.",
    "min-group-size": "The fewest held-out examples (distinct persons, with `person-column`) a "
                      "group's counts need to leave; 0 = 10. The run's `min-group-size` can "
                      "raise it, never lower it.",
    "deidentify": "Mask names, e-mails, phones, postal addresses, dates, ID / account numbers, "
                  "URLs and IPs before tokenizing (Presidio + a name list; the deid extra). The "
                  "run config can switch it on, never off.",
    "keep-sent": "Keep a copy of every update it sends in `LEDGER-DIR/sent/run-ID-round-N.npz` "
                 "(0600): what left, for its privacy officer or an auditor. A round sent again "
                 "(a resumed run) keeps both: `run-ID-round-N-2.npz`, `-3`, ….",
    "monitor-data": "A labelled file of new data that monitoring runs score a release on (read "
                    "when asked, never sent); a simulated partner without one uses its slice "
                    "of the run's `data`.",
    "monitoring": "`counts` = answer monitoring runs with a release's counts on "
                  "`monitor-data`; `off` = refuse them. Default `off` with its own data, "
                  "`counts` when simulated.",
    "corrections": "A file of reviewed corrections (text, corrected label; its data's columns) "
                   "folded into its own data from the next round on: a row is relabelled where "
                   "it is, a new one joins the side of the held-out split its text (person) "
                   "hashes to, so no held-out text or person moves into training; only their "
                   "count leaves.",
    "secagg-key": "Secure aggregation: the private node key it was enrolled with (`partner "
                  "keygen`); it signs the partner's round keys and its view of who is summed. "
                  "Unset with its own data = secure aggregation refused; a simulated partner "
                  "derives one from the run's `seed` (no secrecy: simulation only).",
    "feature-cache-days": "Days a cached feature file of its texts (the frozen encoder's "
                          "outputs in `LEDGER-DIR/cache`, invertible towards the texts) is kept, "
                          "from when it was written; older ones are removed before each round. "
                          "0 = none are kept (the encoder runs every round), inf = until "
                          "`consortium partner purge-cache`.",
    "allow-hub": "Let its processes download a base model from the Hugging Face hub. Unset = "
                 "offline: a run's base model must be on its disk (a directory, or the hub "
                 "cache), and `consortium partner start` sets `HF_HUB_OFFLINE=1`.",
    "secagg-peers": "Secure aggregation: a directory of the NAME.pub keys of the only partners "
                    "it aggregates with, its own among them, each checked with its partner by "
                    "fingerprint; a partner listed with another key is refused. Unset = "
                    "`secagg-key`'s directory.",
}


def kebab(name: str) -> str:
    return name.replace("_", "-")


def shown(value: Any) -> str:
    """A default as it is written in pyproject.toml / `--set` (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, tuple):
        return f'"{",".join(value)}"'
    return repr(value)


def accepts(field: dataclasses.Field) -> str:
    """What a run-config field accepts: its type and the checks its metadata carries."""
    meta, kind = field.metadata, str(field.type)
    number = kind.split(" | ")[0]
    parts = [f"{number} or `\"{config.AUTO}\"`" if kind.endswith(" | str") else kind]
    if "choices" in meta:
        parts = [", ".join(f"`\"{c}\"`" if c else '`""`' for c in meta["choices"])]
    signs = {"min": ">=", "ge": ">=", "gt": ">", "max": "<=", "lt": "<"}
    parts += [f"{sign} {meta[name]}" for name, sign in signs.items() if name in meta]
    return ", ".join(parts)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def run_config_table() -> list[str]:
    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(config.RunConfig):
        rows.append(f"| `{kebab(f.name)}` | `{shown(f.default)}` | {cell(accepts(f))} | "
                    f"{cell(f.metadata['help'])} |")
    return rows


def policy_keys() -> list[str]:
    """Node-config keys in PartnerSettings' field order, then any others it knows."""
    by_field = {POLICY_FIELDS.get(k, k.replace("-", "_")): k for k in policy._KNOWN}
    fields = [f.name for f in dataclasses.fields(policy.PartnerSettings)]
    ordered = [by_field[name] for name in fields if name in by_field]
    return ordered + sorted(set(policy._KNOWN) - set(ordered))


def policy_table() -> list[str]:
    keys = policy_keys()
    missing = [k for k in keys if k not in POLICY_HELP]
    stale = sorted(set(POLICY_HELP) - set(keys))
    if missing or stale:
        raise SystemExit(f"{__file__}: POLICY_HELP is out of step with client/policy.py: "
                         f"explain {missing}, drop {stale}")
    defaults = {f.name: f.default for f in dataclasses.fields(policy.PartnerSettings)
                if f.default is not dataclasses.MISSING}
    rows = ["| key | default | `partner start` flag | meaning |", "|---|---|---|---|"]
    for key in keys:
        name = POLICY_FIELDS.get(key, key.replace("-", "_"))
        default = f"`{shown(defaults[name])}`" if name in defaults else "—"
        flag = "—" if key in SIMULATION_ONLY else f"`{POLICY_FLAGS.get(key, '--' + key)}`"
        rows.append(f"| `{key}` | {default} | {flag} | {cell(POLICY_HELP[key])} |")
    return rows


def render() -> str:
    run_keys, policy_count = len(dataclasses.fields(config.RunConfig)), len(policy_keys())
    lines = [
        "# Configuration reference", "",
        f"<!-- Generated by {COMMAND} from common/config.py and client/policy.py. Do not edit "
        "by hand: change the code, then run the script (tests/test_docs.py checks that this "
        "file is current). -->", "",
        "Every key a run and a partner read: its default, what it accepts and what it means.",
        "",
        "## Contents", "",
        f"- [Run config](#run-config): {run_keys} keys, the same for the coordinator and every "
        "partner",
        f"- [The partner's policy (node config)](#the-partners-policy-node-config): "
        f"{policy_count} keys, the partner's own", "",
        "## Run config", "",
        "One frozen dataclass, `RunConfig` in `common/config.py`, built once at the edge. Every "
        "key has its default in `pyproject.toml` (`[tool.flwr.app.config]`; a test keeps the "
        "two equal). Override a key with `--set key=value` (`consortium simulate`, "
        "`consortium run`, `consortium audit`; the value is read as TOML, so `--set "
        "central-dp=true` is a bool and `--set finetune=full` a string), with `flwr run . "
        "--run-config 'key=value'` (TOML: strings quoted), or with the CLI flags. Unknown keys, "
        "wrong types and out-of-range values are refused with the key, the value and what is "
        "allowed. Where a key leads: [privacy](privacy.md), [recipes](recipes.md), "
        "[simulation](simulation.md), [lifecycle](lifecycle.md), [people](people.md).", "",
        *run_config_table(), "",
        "## The partner's policy (node config)", "",
        "`PartnerSettings` in `client/policy.py`: what only the partner decides. `consortium "
        "partner start` sets each key from its flag; in a simulation, Flower's node config "
        "(`--node-config`) does. The coordinator's run config cannot change any of them. A "
        "default of 0 or empty defers to the run config where the meaning says so. What each "
        "key protects: [privacy.md](privacy.md#the-partners-policy-node-config).", "",
        *policy_table(), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configuration.md is not what this script writes")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale; run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
