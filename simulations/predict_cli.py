"""`consortium predict MODEL_DIR --data FILE`: a release's labels for a file, through the loader
its model card names (common.model.export.Predictor), and its score when the file is labelled."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from common.errors import DataError, ModelError
from common.model.export import Prediction, Predictor

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
    texts, labelled = _inputs(args, predictor)
    predictions = predictor.predict(texts)
    _write(sys.stdout, args.format, texts, predictions)
    if labelled is not None:
        print(_score(predictor, labelled, predictions), file=sys.stderr)
    return 0


def _inputs(args: argparse.Namespace, predictor: Predictor) -> tuple[list[Any], Any]:
    """The inputs (texts, or word lists for a task that tags words) and, when every row of the
    file has its label, the labelled data to score on; errors name the file and row."""
    if args.data == "-":
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not lines:
            raise DataError("stdin: no text to label")
        return ([line.split() for line in lines] if predictor.kind.tags_words else lines), None
    from common.config import RunConfig

    settings = {k: v for k, v in predictor.settings.items()
                if k in ("task", "text-column", "label-column", "tag-column")}
    settings.update({k: v for k, v in (("text-column", args.text_column),
                                       ("label-column", args.label_column)) if v})
    config = RunConfig.from_mapping(settings)
    path = Path(args.data)
    texts = predictor.kind.read_texts(path, config)
    if not predictor.kind.has_labels(path, config):
        return texts, None
    return texts, predictor.kind.read(path, config, predictor.labels)


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


def _score(predictor: Predictor, data: Any, predictions: list[Prediction]) -> str:
    metric, value = predictor.kind.prediction_score(data, [p.label for p in predictions])
    unit = "sentences" if predictor.kind.tags_words else "rows"
    return f"{metric} {value:.6f} over {len(data)} labelled {unit}"
