"""`consortium warm-start`: adapt the base model on public data (no partner's row, no ε) and
write it as a base-model directory (common.model.warm_start) that runs and partners take as
``base-model``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from common.model import warm_start as W
from common.config import RunConfig
from common.errors import ConfigError
from common.infra.storage import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warm-start", help="adapt the base model on PUBLIC data (spends no ε) "
                                          "and write it as a base-model directory")
    p.add_argument("--public-data", required=True, metavar="FILE[,FILE...]",
                   help="public CSV / TSV / JSONL (text) or CoNLL / JSONL (token) files; never "
                        "a partner's rows")
    p.add_argument("--out", required=True, metavar="DIR", help="the new base-model directory "
                   "(must not exist)")
    p.add_argument("--task", default="text-classification",
                   help="the public set's own task (it may differ from the federation's)")
    p.add_argument("--labels", default="", help="the public set's labels / entity types "
                   "(default: those in the files)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--tag-column", type=int, default=-1, help="CoNLL tag column (default last)")
    p.add_argument("--label-map", default="", metavar="TYPE=TYPE,...",
                   help="token-classification: rename the public entity types to the "
                        "federation's (person=PER,group=ORG,Disease=O; O drops a type), so a "
                        "run with those types starts from the warm start's tagger head too")
    p.add_argument("--objective", choices=W.OBJECTIVES, default="supervised",
                   help="supervised (public labels), simcse (text without labels) or mlm "
                        "(a base model with its MLM head)")
    p.add_argument("--base-model", default="", help="model to start from (default: the "
                   "bundled MiniLM)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto (a visible CUDA GPU, else the CPU), "
                   "cpu, cuda or cuda:N")


def handle(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; give a new directory (a warm start "
                          "never overwrites a base model that runs may use)")
    config = RunConfig(task=args.task, labels=args.labels, text_column=args.text_column,
                       label_column=args.label_column, tag_column=args.tag_column,
                       base_model=args.base_model, max_length=args.max_length, seed=args.seed)
    paths = [p.strip() for p in args.public_data.split(",") if p.strip()]
    write_warm_start(config, paths, out, args.objective, _settings(args), args.label_map)
    return 0


def _settings(args: argparse.Namespace):
    from common.model.device import resolve_device
    from common.model.warm_start_train import TrainSettings

    return TrainSettings(epochs=args.epochs, learning_rate=args.learning_rate,
                         batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                         device=str(resolve_device(args.device, "--device")))


def public_examples(config: RunConfig, paths: list[str], objective: str,
                    label_map: str = "") -> tuple[list[Any], tuple[str, ...], list[W.PublicFile]]:
    """Every public file read (errors name the file and row), the label names of the
    supervised objective (empty otherwise; renamed by ``label_map``) and the lineage's file
    records."""
    from common.tasks import get_task
    from common.tasks.tokens import parse_type_map, remap_types

    task = get_task(config.task)
    if label_map and (not task.tags_words or objective != "supervised"):
        raise ConfigError("--label-map renames entity types: it needs --task "
                          "token-classification and --objective supervised")
    mapping = parse_type_map(label_map) if label_map else None  # bad syntax: before any read
    if objective != "supervised":
        datasets, files = W.read_public(paths, lambda p: task.read_texts(p, config))
        return datasets, (), files
    if not config.labels:
        found = sorted({label for p in paths if Path(p).is_file()
                        for label in task.infer_labels(config.replace(data=p))})
        config = config.replace(labels=",".join(found))
    labels = task.run_labels(config, partner_has_own_data=True)
    datasets, files = W.read_public(paths, lambda p: task.read(p, config, labels))
    if mapping is not None:
        datasets = [remap_types(d, mapping) for d in datasets]
        labels = datasets[0].label_names
    return datasets, labels, files


def write_warm_start(config: RunConfig, paths: list[str], out: Path, objective: str,
                     settings, label_map: str = "") -> Path:
    """Train and write ``out`` whole (a temporary directory renamed at the end: a failure
    leaves nothing)."""
    from transformers import AutoModel

    from common.model import warm_start_train as T
    from common.model.factory import load_tokenizer, resolve_base_model
    from common.tasks import get_task

    datasets, labels, files = public_examples(config, paths, objective, label_map)
    base = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(config)
    started = time.time()
    task = get_task(config.task)
    tagger = None
    if objective == "supervised":
        encoder, data = AutoModel.from_pretrained(base), _joined(datasets)
        encoded = task.encode(tokenizer, data, settings.max_length)
        encoder, head = T.supervised(encoder, encoded, len(labels), task.tags_words, settings)
        texts, examples = list(data.texts), len(data)
        tagger = T.with_token_head(encoder, head, labels) if task.tags_words else None
        if tagger is not None:
            encoder = tagger  # saved with its head: a run tagging with these tags keeps it
        elif task.tags_words:
            logger.info("%s has no linear classifier to hold the tagger head; only the encoder "
                        "is kept", type(encoder).__name__)
    else:
        texts = [t for d in datasets for t in d]
        plain = [" ".join(t) if isinstance(t, list) else t for t in texts]
        encoder = (T.simcse(base, plain, settings) if objective == "simcse"
                   else T.mlm(base, tokenizer, plain, settings))
        examples = len(texts)
    seconds = time.time() - started
    lineage = W.lineage_record(
        config.base_model or base, objective, config.task, labels, files,
        {"epochs": settings.epochs, "learning_rate": settings.learning_rate,
         "batch_size": settings.batch_size, "max_length": settings.max_length,
         "seed": settings.seed, "device": settings.device}, seconds, examples,
        head=list(labels) if tagger is not None else None, label_map=label_map)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_bytes(tmp / W.ROWS_FILE,
                           "".join(f"{d}\n" for d in sorted(W.row_digests(texts))).encode())
        atomic_write_json(tmp / W.LINEAGE_FILE, lineage)
        atomic_write_bytes(tmp / "README.md", W.model_card(lineage).encode())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("warm start written to %s: %s on %d public examples, %.0f s", out, objective,
                examples, seconds)
    print(f"warm start: {out} ({objective}, {examples} public examples, {seconds:.0f} s); use "
          f"it as --set base-model={out}")
    return out


def _joined(datasets: list[Any]):
    """The public files' datasets as one (same label names)."""
    first = datasets[0]
    if len(datasets) == 1:
        return first
    import dataclasses

    fields = {f.name: tuple(x for d in datasets for x in getattr(d, f.name))
              for f in dataclasses.fields(first) if f.name not in ("label_names",)}
    return dataclasses.replace(first, **fields)
