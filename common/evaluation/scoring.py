"""Evaluation at a partner or the coordinator: accuracy and per-class counts of a text
classifier, predicted tags of a token classifier, and log-probabilities for the privacy audit.
The two evaluations run in length-sorted batches (common.training.batching), so a batch is padded
only to its own longest text, and put every result back at its text's place; log-probabilities run
in data order (a token-level result has a length axis that such batches cannot share).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerBase

from common import protocol as P
from common.training.batching import sorted_batches
from common.data.text import TextDataset
from common.evaluation.groups import group_counts
from common.evaluation.metrics import accuracy, class_counts, macro_f1
from common.training.loop import encode, model_logits


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    macro_f1: float
    num_examples: int
    predictions: tuple[int, ...]


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 64) -> EvalStats:
    was_training = model.training
    model.eval()
    input_ids, mask, labels = data.tensors
    loss_sum, preds = 0.0, torch.empty(len(labels), dtype=torch.long)
    try:
        for rows in sorted_batches(mask, batch_size):  # similar lengths: little padding
            logits = model_logits(model, [input_ids[rows], mask[rows]]).cpu()
            loss_sum += nn.functional.cross_entropy(logits, labels[rows], reduction="sum").item()
            preds[rows] = logits.argmax(dim=-1)
    finally:
        model.train(was_training)
    y_pred, y_true = preds.numpy(), labels.numpy()
    return EvalStats(loss=loss_sum / max(len(y_true), 1), accuracy=accuracy(y_true, y_pred),
                     macro_f1=macro_f1(y_true, y_pred), num_examples=len(y_true),
                     predictions=tuple(int(p) for p in y_pred))


@dataclass(frozen=True)
class TokenEvalStats:
    loss: float  # mean cross-entropy per labelled word
    num_examples: int  # sentences
    predictions: tuple[tuple[int, ...], ...]  # per sentence: the tag id at each word kept


@torch.no_grad()
def evaluate_tokens(model: nn.Module, data: TensorDataset, batch_size: int = 64) -> TokenEvalStats:
    """Predicted tags at every labelled position (a word's first sub-token); entity scores are
    computed from them against the full gold sentences (common.evaluation.metrics.entity_scores)."""
    was_training = model.training
    model.eval()
    input_ids, mask, all_labels = data.tensors
    loss_sum, words = 0.0, 0
    predictions: list[tuple[int, ...]] = [()] * len(all_labels)
    try:
        for rows in sorted_batches(mask, batch_size):  # similar lengths: little padding
            logits = model_logits(model, [input_ids[rows], mask[rows]]).cpu()
            labels = all_labels[rows, : logits.shape[1]]
            loss_sum += nn.functional.cross_entropy(logits.transpose(1, 2), labels,
                                                    ignore_index=-100, reduction="sum").item()
            words += int((labels != -100).sum())
            for row, tags, gold in zip(rows.tolist(), logits.argmax(dim=-1), labels):
                predictions[row] = tuple(int(p) for p in tags[gold != -100])
    finally:
        model.train(was_training)
    return TokenEvalStats(loss=loss_sum / max(words, 1), num_examples=len(predictions),
                          predictions=tuple(predictions))


@torch.no_grad()
def log_probabilities(model: nn.Module, data: TensorDataset, batch_size: int = 64) -> np.ndarray:
    """Per-example log-softmax over the labels, shape (examples, labels); labels in ``data``
    are ignored, so one pass scores a text under every label (the privacy audit's use)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for input_ids, mask, _ in DataLoader(data, batch_size=batch_size):
            logits = model_logits(model, [input_ids, mask]).cpu()
            out.append(torch.log_softmax(logits, dim=-1).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float64)


def text_metrics(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: TextDataset,
                 max_length: int, min_group_size: int = 1) -> dict[str, float]:
    """An evaluate reply for text-classification: loss, accuracy, macro-F1 and per-class counts
    (``tp/<label>`` ...; counts, never examples, so they can be pooled across partners), and,
    when the data has groups, the same counts per group of at least ``min_group_size``
    examples, or persons when the data names them (common.evaluation.groups: smaller ones
    suppressed)."""
    stats = evaluate(model, encode(tokenizer, data, max_length))
    counts = class_counts(np.asarray(data.labels), np.asarray(stats.predictions),
                          data.label_names)
    if data.subgroups:
        counts.update(group_counts(data.labels, stats.predictions, data.subgroups,
                                   data.label_names, min_group_size, data.persons))
    return {P.NUM_EXAMPLES: float(stats.num_examples), P.EVAL_LOSS: stats.loss,
            P.ACCURACY: stats.accuracy, P.MACRO_F1: stats.macro_f1, **counts}
