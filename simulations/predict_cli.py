"""`consortium predict MODEL_DIR --data FILE`: a release's labels for a file, through the loader
its model card names (common.export.Predictor), and its score when the file is labelled."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from common.errors import DataError, ModelError
from common.export import Prediction, Predictor

FORMATS = ("labels", "csv", "jsonl")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label a file with a release (a run's OUT/model); with "
                                       "labels in the file, also print the score")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="CSV / TSV / JSONL (text-classification), CoNLL / JSONL "
                        "(token-classification), or - for one text per line on stdin")
    p.add_argument("--text-column", help="default: the run's text-column")
    p.add_argument("--label-column", help="default: the run's label-column (scored when present)")
    p.add_argument("--format", choices=FORMATS, default="labels",
                   help="labels: one label (or a line of tags) per input; csv / jsonl: the text, "
                        "label and score")


def handle(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not an exported model (no config.json); give a run's "
                         "OUT/model directory")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr carries only the score
    predictor = Predictor(model_dir)
    texts, gold = _inputs(args, predictor)
    predictions = predictor.predict(texts)
    _write(sys.stdout, args.format, texts, predictions)
    if gold is not None:
        print(_score(predictor, gold, predictions, len(texts)), file=sys.stderr)
    return 0


def _inputs(args: argparse.Namespace, predictor: Predictor) -> tuple[list[Any], list[Any] | None]:
    """The texts (word lists for token-classification) and, where the file has them, the gold
    labels or tags; every fault is a DataError naming the file and line."""
    token = predictor.task == "token-classification"
    if args.data == "-":
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not lines:
            raise DataError("stdin: no text to label")
        return ([line.split() for line in lines] if token else lines), None
    path = Path(args.data)
    settings = predictor.settings
    if token:
        from common.tasks.token_classification import token_keys
        from common.tokens import read_sentences

        keys = token_keys(_KeysOf(settings), args.text_column or "", args.label_column or "")
        sentences = read_sentences(path, int(settings.get("tag-column", -1)), *keys)
        return [list(w) for w, _ in sentences], [list(t) for _, t in sentences]
    from common.data import column_value, read_rows

    text_column = args.text_column or settings.get("text-column", "text")
    label_column = args.label_column or settings.get("label-column", "label")
    rows = read_rows(path)
    texts = [column_value(path, n, row, text_column, "text") for n, row in rows]
    for (number, _), text in zip(rows, texts):
        if not text:
            raise DataError(f"{path}:{number}: the text is empty; drop the row or fill it in")
    if not all(label_column in row for _, row in rows):
        return texts, None
    gold = [column_value(path, n, row, label_column, "label") for n, row in rows]
    for (number, _), label in zip(rows, gold):
        if label not in predictor.labels:
            raise DataError(f"{path}:{number}: label {label!r} is not one of the model's "
                            f"{list(predictor.labels)}")
    return texts, gold


class _KeysOf:
    """The two run-config keys ``token_keys`` reads, from an export's run_config.json."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.text_column = str(settings.get("text-column", "text"))
        self.label_column = str(settings.get("label-column", "label"))


def _write(out: TextIO, fmt: str, texts: list[Any], predictions: list[Prediction]) -> None:
    def shown(value: Any) -> str:
        return " ".join(value) if isinstance(value, (list, tuple)) else str(value)

    if fmt == "labels":
        out.writelines(shown(p.label) + "\n" for p in predictions)
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["text", "label", "score"])
        writer.writerows([shown(t), shown(p.label), f"{p.score:.6f}"]
                         for t, p in zip(texts, predictions))
    else:
        out.writelines(json.dumps({"text": t, "label": p.label, "score": p.score}) + "\n"
                       for t, p in zip(texts, predictions))


def _score(predictor: Predictor, gold: list[Any], predictions: list[Prediction], n: int) -> str:
    if predictor.task == "token-classification":
        from common.metrics import entity_scores
        from common.tokens import entity_types

        scores = entity_scores(gold, [list(p.label) for p in predictions],
                               entity_types(predictor.labels))
        return f"entity-f1 {scores.f1:.6f} over {n} labelled sentences"
    correct = sum(g == p.label for g, p in zip(gold, predictions))
    return f"accuracy {correct / n:.6f} over {n} labelled rows"
