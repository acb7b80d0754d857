"""Benchmark P3 with a warm start: write the public data of a row (never from the private set's
source), warm-start the base model on it (`consortium warm-start`, no DP, no partner row), then
run benchmarks.utility's arms on the private set with that base model.

    python -m benchmarks.warm_start --row sst2 --out results/warm_start [utility options ...]

Rows (issue 32's table):

| private (federated)      | public (warm start)                                          |
|--------------------------|--------------------------------------------------------------|
| sst2                     | multi_domain_sentiment + sentiment_labelled_sentences         |
| mds                      | SST-2 (train.tsv) + sentiment_labelled_sentences              |
| agnews                   | 20newsgroups (its 20 groups as labels)                       |
| conll2003                | wnut17 + ncbi_disease (their own entity types)               |

The warm-started directory goes to OUT/base-<row>, its lineage to OUT/base-<row>/warm_start.json;
a directory already there is reused (its lineage says how it was made). Every other option is
passed to `python -m benchmarks.utility --dataset <row> --base-model OUT/base-<row> --out OUT`.
Reads ../shared/datasets (or --datasets-dir); a row whose files are absent is skipped.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.utility import DEFAULT_DIR
from common.config import RunConfig
from common.infra.logs import configure_logging

SLS = ("amazon_cells", "imdb", "yelp")
# wnut17's and ncbi_disease's entity types as CoNLL-2003 names them (a disease is no entity there)
CONLL_MAP = ("person=PER,location=LOC,corporation=ORG,group=ORG,creative-work=MISC,"
             "product=MISC,Disease=O")


def _write_csv(rows: list[tuple[str, str]], target: Path) -> Path:
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return target


def sls(root: Path) -> list[tuple[str, str]]:
    out = []
    for domain in SLS:
        for line in (root / "sentiment_labelled_sentences" / f"{domain}_labelled.txt").read_text(
                encoding="utf-8").split("\n"):  # not splitlines: imdb's text holds U+0085
            if line.strip():
                text, label = line.rsplit("\t", 1)
                out.append((" ".join(text.split()), label.strip()))
    return out


def mds(root: Path) -> list[tuple[str, str]]:
    rows = []
    for line in (root / "multi_domain_sentiment" / "multi_domain_sentiment.jsonl").read_text(
            encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.append((" ".join(f"{r.get('title', '')}. {r['text']}".split()), str(r["label"])))
    return rows


def sst2(root: Path) -> list[tuple[str, str]]:
    lines = (root / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(t.strip(), lab.strip()) for t, lab in (ln.rsplit("\t", 1) for ln in lines
                                                   if ln.strip())]


def newsgroups(root: Path) -> list[tuple[str, str]]:
    with gzip.open(root / "20newsgroups" / "train.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [(" ".join(r["text"].split()[:200]), r["label_name"])
                for r in map(json.loads, handle)]


def public_files(row: str, root: Path, out: Path, limit: int) -> tuple[list[Path], dict]:
    """The row's public files (at most ``limit`` rows, a seeded sample), written under OUT, and
    the warm start's task settings."""
    if row == "conll2003":
        wnut, ncbi = root / "wnut17" / "train.conll", root / "ncbi_disease" / "train.tsv"
        return [wnut, ncbi], dict(task="token-classification")
    rows = {"sst2": lambda: mds(root) + sls(root), "mds": lambda: sst2(root) + sls(root),
            "agnews": lambda: newsgroups(root)}[row]()
    if len(rows) > limit:
        import numpy as np

        keep = sorted(np.random.default_rng(0).permutation(len(rows))[:limit])
        rows = [rows[i] for i in keep]
    return [_write_csv(rows, out / f"public-{row}.csv")], dict(task="text-classification")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", required=True, choices=("sst2", "mds", "agnews", "conll2003"))
    parser.add_argument("--out", type=Path, default=Path("results/warm_start"))
    parser.add_argument("--datasets-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--objective", default="supervised")
    parser.add_argument("--from-model", default="", help="the model the warm start begins from "
                        "(default: the bundled MiniLM)")
    parser.add_argument("--ws-epochs", type=int, default=1)
    parser.add_argument("--ws-max-length", type=int, default=64)
    parser.add_argument("--ws-learning-rate", type=float, default=5e-5)
    parser.add_argument("--ws-label-map", default="", help="conll2003: rename the public entity "
                        "types to CoNLL's and keep the tagger head (`conll`: " + CONLL_MAP + ")")
    parser.add_argument("--warm-start-only", action="store_true")
    parser.add_argument("--base", type=Path, help="the warm-started directory to use or write "
                        "(default OUT/base-ROW; another seed's run can reuse one)")
    parser.add_argument("--public-limit", type=int, default=12000,
                        help="at most this many public rows, a seeded sample (default 12,000: "
                             "about 8 minutes of warm start on 2 cores)")
    args, utility_args = parser.parse_known_args()
    configure_logging()
    if not args.datasets_dir.is_dir():
        print(f"skipped: {args.datasets_dir} not found")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.base or args.out / f"base-{args.row}"
    if not base.is_dir():
        from common.model.device import resolve_device
        from common.model.warm_start_train import TrainSettings
        from server.warm_start_cli import write_warm_start

        files, spec = public_files(args.row, args.datasets_dir, args.out, args.public_limit)
        config = RunConfig(**spec, max_length=args.ws_max_length, base_model=args.from_model)
        write_warm_start(config, [str(f) for f in files], base, args.objective,
                         TrainSettings(epochs=args.ws_epochs, max_length=args.ws_max_length,
                                       learning_rate=args.ws_learning_rate,
                                       device=str(resolve_device("auto"))),
                         CONLL_MAP if args.ws_label_map == "conll" else args.ws_label_map)
    if args.warm_start_only:
        return 0
    command = [sys.executable, "-m", "benchmarks.utility", "--dataset", args.row,
               "--datasets-dir", str(args.datasets_dir), "--base-model", str(base),
               "--out", str(args.out), *utility_args]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
