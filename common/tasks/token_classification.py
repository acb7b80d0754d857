"""token-classification (NER): a tag per word (CoNLL / JSONL files, common.tasks.tokens).

`labels` declares entity types (``PER,ORG``); the model's labels are the IOB2 tags derived from
them (``common.tasks.tokens.tag_names``). Training and evaluation label a word at its first word
piece.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from common import protocol as P
from common.errors import ConfigError
from common.tasks.base import Task, TaskConfig

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from transformers import PreTrainedTokenizerBase

    from common.tasks.tokens import TokenDataset


def token_keys(config: TaskConfig, text_column: str = "",
               label_column: str = "") -> tuple[str, str]:
    """The JSONL keys of a sentence's words and tags: ``tokens`` / ``tags`` unless text-column /
    label-column (or the partner's own) are set away from their defaults."""
    text, label = text_column or config.text_column, label_column or config.label_column
    return ("tokens" if text == "text" else text), ("tags" if label == "label" else label)


class TokenClassification(Task):
    name = pipeline_tag = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    auto_finetune = "head"  # a word's tag from a head on the encoder (BENCHMARKS.md, DP recipe)
    recipe_candidates = {
        "head": {"finetune": "head"},
        "ffa-lora": {"finetune": "lora", "lora-freeze-a": True},
        "ffa-lora-top1": {"finetune": "lora", "lora-freeze-a": True, "lora-layers": 1},
        "bitfit": {"finetune": "bias"},  # DP-BiTFiT: the encoder's biases and the tagger
    }
    main_metric = P.ENTITY_F1
    declares = ("the entity types", "PER,ORG,LOC")
    demo_name, label_kind = "NER data set", "entity types"
    widget_text = "Anna Schmidt joined Siemens in Munich last spring."
    tags_words = True
    pipeline_options = ', aggregation_strategy="first"'  # a word's tag from its first piece

    def check_config(self, config: TaskConfig) -> None:
        tags = [t for t in config.label_list if t == "O" or t[:2] in ("B-", "I-")]
        if tags:
            raise ConfigError(f"labels={config.labels!r}: for token-classification list the "
                              f"entity types (e.g. PER,ORG), not tags {tags[:3]}; O, B-TYPE and "
                              "I-TYPE are derived from the types")
        if config.partition != "iid":
            raise ConfigError(f"partition={config.partition!r}: token-classification data can "
                              "only be split iid (a sentence has no single label or group)")
        if config.finetune in ("pooled-head", "pooled-lora"):
            raise ConfigError(f'finetune = "{config.finetune}" pools a whole text into one '
                              'vector; '
                              'token-classification needs a tag per word: use "lora", "bias" or '
                              '"head"')
        if config.tag_column == 0:
            raise ConfigError("tag-column = 0 is the word column; use the tag's column, e.g. -1 "
                              "(the last) or 3 (CoNLL-2003's NER column)")

    def label_names(self, declared: Sequence[str]) -> tuple[str, ...]:
        from common.tasks.tokens import tag_names

        return tag_names(declared)

    def infer_labels(self, config: TaskConfig) -> tuple[str, ...]:
        from common.tasks.tokens import infer_entity_types

        return infer_entity_types(config.data, config.tag_column, *token_keys(config))

    def demo_labels(self) -> tuple[str, ...]:
        from common.tasks.synthetic_ner import ENTITY_TYPES

        return ENTITY_TYPES

    def read(self, path: str | Path, config: TaskConfig, labels: Sequence[str],
             text_column: str = "", label_column: str = "", group_column: str | None = None,
             person_column: str | None = None,
             subgroup_column: str | None = None) -> TokenDataset:
        """Sentences of a CoNLL or JSONL file; no groups (config.partition is iid), and no
        person or group column yet (CoNLL has no columns per sentence): ConfigError."""
        from common.tasks.tokens import load_token_dataset

        for key, column in (("person-column", person_column), ("group-column", subgroup_column)):
            if column:
                raise ConfigError(f"{key} = {column!r}: token-classification does not read a "
                                  "column per sentence yet; per-person DP and per-group scores "
                                  "are for text-classification")

        keys = token_keys(config, text_column, label_column)
        return load_token_dataset(path, labels, config.tag_column, *keys)

    def read_texts(self, path: str | Path, config: TaskConfig) -> list[list[str]]:
        from common.tasks.tokens import read_sentences

        return [list(words) for words, _ in read_sentences(path, config.tag_column,
                                                           *token_keys(config))]

    def has_labels(self, path: str | Path, config: TaskConfig) -> bool:
        return True  # CoNLL and JSONL sentences carry their tags

    def prediction_score(self, data: TokenDataset,
                         predicted: Sequence[Sequence[str]]) -> tuple[str, float]:
        from common.evaluation.metrics import entity_scores
        from common.tasks.tokens import entity_types

        scores = entity_scores(data.tag_strings(), [list(p) for p in predicted],
                               entity_types(data.label_names))
        return "entity-f1", scores.f1

    def demo_data(self, partner_id: int, config: TaskConfig,
                  labels: Sequence[str]) -> TokenDataset:
        import common.tasks.synthetic_ner as synthetic_ner
        from common.tasks.tokens import entity_types

        if tuple(labels) != synthetic_ner.TAGS:
            raise ConfigError(f"labels {list(entity_types(labels))} do not match the embedded NER "
                              f"data set's entity types {list(synthetic_ner.ENTITY_TYPES)}; leave "
                              "labels empty, or set data")
        return synthetic_ner.synthetic_ner_data(partner_id, config.examples_per_partner,
                                                config.seed)

    def encode(self, tokenizer: PreTrainedTokenizerBase, data: TokenDataset,
               max_length: int) -> TensorDataset:
        """Word-piece aligned tags: a word's first piece carries its tag, the rest IGNORE."""
        from common.tasks.tokens import encode_tokens

        return encode_tokens(tokenizer, data, max_length)

    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from common.training.loop import token_loss

        return token_loss(logits, labels)

    def evaluate(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: TokenDataset,
                 max_length: int, min_group_size: int = 1) -> dict[str, float]:
        """Token accuracy, entity P / R / F1, macro-F1 over types and per-type entity counts
        (common.tasks.tokens.entity_metrics); no groups (``read`` refuses a group column)."""
        from common.tasks.tokens import entity_metrics

        return entity_metrics(model, tokenizer, data, max_length)
