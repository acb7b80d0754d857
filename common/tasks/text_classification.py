"""text-classification: one label per text (CSV / TSV / JSONL files, common.data.text)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from common import protocol as P
from common.data import synthetic
from common.data.text import (TextDataset, column_value, infer_labels, load_text_dataset,
                         read_rows)
from common.errors import ConfigError, DataError
from common.tasks.base import Task, TaskConfig

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from transformers import PreTrainedTokenizerBase


class TextClassification(Task):
    name = pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # a text's mean-pooled frozen features + a linear head (BENCHMARKS.md, DP recipe)
    auto_finetune = "pooled-head"
    recipe_candidates = {
        "pooled-head": {"finetune": "pooled-head"},
        "ffa-lora": {"finetune": "pooled-lora", "lora-freeze-a": True},
        "ffa-lora-top1": {"finetune": "pooled-lora", "lora-freeze-a": True, "lora-layers": 1},
        "bitfit": {"finetune": "bias"},  # DP-BiTFiT: the encoder's biases and the [CLS] head
    }
    main_metric = P.ACCURACY
    declares = ("the label set", "negative,positive")
    demo_name, label_kind = "data set", "labels"
    widget_text = "The striker scored twice as the home team won the cup final."
    one_label_per_text = True
    maskable_text = True
    count_sensitivity = math.sqrt(3)  # n, and tp of its class or fp and fn of two classes

    def infer_labels(self, config: TaskConfig) -> tuple[str, ...]:
        return infer_labels(config.data, config.label_column)

    def demo_labels(self) -> tuple[str, ...]:
        return synthetic.LABELS

    def read_texts(self, path: str | Path, config: TaskConfig) -> list[str]:
        path = Path(path)
        texts = [column_value(path, n, row, config.text_column, "text")
                 for n, row in read_rows(path)]
        for number, text in enumerate(texts, start=1):
            if not text:
                raise DataError(f"{path}: data row {number}: the text is empty; drop the row "
                                "or fill it in")
        return texts

    def has_labels(self, path: str | Path, config: TaskConfig) -> bool:
        return all(config.label_column in row for _, row in read_rows(path))

    def prediction_score(self, data: TextDataset, predicted: Sequence[str]) -> tuple[str, float]:
        gold = [data.label_names[y] for y in data.labels]
        return "accuracy", sum(g == p for g, p in zip(gold, predicted)) / max(len(gold), 1)

    def read(self, path: str | Path, config: TaskConfig, labels: Sequence[str],
             text_column: str = "", label_column: str = "", group_column: str | None = None,
             person_column: str | None = None,
             subgroup_column: str | None = None) -> TextDataset:
        return load_text_dataset(path, text_column or config.text_column,
                                 label_column or config.label_column, labels, group_column,
                                 person_column, subgroup_column)

    def demo_data(self, partner_id: int, config: TaskConfig,
                  labels: Sequence[str]) -> TextDataset:
        if tuple(labels) != synthetic.LABELS:
            raise ConfigError(f"labels {list(labels)} do not match the embedded data set's "
                              f"{list(synthetic.LABELS)}; leave labels empty, or set data")
        return synthetic.synthetic_partner_data(partner_id, config.examples_per_partner,
                                                config.seed)

    def encode(self, tokenizer: PreTrainedTokenizerBase, data: TextDataset,
               max_length: int) -> TensorDataset:
        from common.training.loop import encode

        return encode(tokenizer, data, max_length)

    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from common.training.loop import sequence_loss

        return sequence_loss(logits, labels)

    def evaluate(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: TextDataset,
                 max_length: int, min_group_size: int = 1) -> dict[str, float]:
        """Loss, accuracy, macro-F1 and per-class counts, per group too
        (common.evaluation.scoring.text_metrics)."""
        from common.evaluation.scoring import text_metrics

        return text_metrics(model, tokenizer, data, max_length, min_group_size)
