"""A partner's token-classification (NER) data: CoNLL-style files or JSONL, and word-piece
alignment.

Label convention: the run's ``labels`` lists entity types (``PER,ORG``); the tag set every partner
maps ids through is derived from them, ``O`` first and then ``B-T, I-T`` per type in the declared
order (``tag_names``). Input may be IOB1 or IOB2; it is stored as IOB2. A CoNLL file holds a word
and its columns per line, a blank line between sentences; ``-DOCSTART-`` lines are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from common import protocol as P
from common.data.text import parse_jsonl, read_text
from common.errors import ConfigError, DataError, ModelError
from common.evaluation.metrics import entity_count_metrics, entity_scores
from common.evaluation.scoring import evaluate_tokens

logger = logging.getLogger(__name__)

IGNORE = -100  # the label of sub-tokens and special tokens: ignored by the loss and the metrics
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class TokenDataset:
    """Sentences as words and tag ids (IOB2), with the run's tag names (id = position)."""

    tokens: tuple[tuple[str, ...], ...]
    tags: tuple[tuple[int, ...], ...]
    label_names: tuple[str, ...]

    # the names TextDataset uses, so splitting, partitioning and ledger fingerprints treat both
    @property
    def texts(self) -> tuple[tuple[str, ...], ...]:
        return self.tokens

    @property
    def labels(self) -> tuple[tuple[int, ...], ...]:
        return self.tags

    @property
    def groups(self) -> tuple[str, ...]:
        return ()

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, indices: Sequence[int]) -> TokenDataset:
        pick = [int(i) for i in indices]
        return TokenDataset(tuple(self.tokens[i] for i in pick), tuple(self.tags[i] for i in pick),
                            self.label_names)

    def tag_strings(self) -> list[list[str]]:
        return [[self.label_names[t] for t in sentence] for sentence in self.tags]


def tag_names(entity_types: Sequence[str]) -> tuple[str, ...]:
    """``O`` then ``B-T``, ``I-T`` for each type, in the given order: the ids every partner uses."""
    return ("O", *(f"{prefix}-{t}" for t in entity_types for prefix in "BI"))


def entity_types(names: Sequence[str]) -> tuple[str, ...]:
    """The entity types of a tag list made by ``tag_names``, in order."""
    return tuple(n[2:] for n in names if n.startswith("B-"))


@dataclass(frozen=True)
class _Sentence:
    line: int  # where the sentence starts, for error messages
    words: tuple[str, ...]
    tags: tuple[str, ...]  # as read
    lines: tuple[int, ...]  # line of each word


def _read_conll(path: Path, text: str, tag_column: int) -> list[_Sentence]:
    sentences: list[_Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def close() -> None:
        if words:
            sentences.append(_Sentence(lines[0], tuple(words), tuple(tags), tuple(lines)))
            words.clear(), tags.clear(), lines.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: {line.strip()!r} has 1 column; a CoNLL line needs "
                            "the word and its tag, separated by whitespace")
        try:
            tag = fields[tag_column]
        except IndexError:
            raise DataError(f"{path}:{number}: {len(fields)} columns, but tag-column is "
                            f"{tag_column}; set tag-column to the tag's column") from None
        words.append(fields[0])
        tags.append(tag)
        lines.append(number)
    close()
    return sentences


def _read_jsonl(path: Path, text: str, tokens_key: str, tags_key: str) -> list[_Sentence]:
    sentences = []
    for number, row in parse_jsonl(path, text):
        words, tags = row.get(tokens_key), row.get(tags_key)
        if not _strings(words) or not _strings(tags):
            raise DataError(f"{path}:{number}: expected an object with lists of strings "
                            f"{tokens_key!r} and {tags_key!r} (tags as text, e.g. \"B-PER\"); "
                            "set text-column / label-column to other key names")
        if len(words) != len(tags):
            raise DataError(f"{path}:{number}: {len(words)} tokens but {len(tags)} tags")
        if words:
            sentences.append(_Sentence(number, tuple(words), tuple(tags), (number,) * len(words)))
    return sentences


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 -> IOB2: an ``I-T`` that does not continue a ``T`` entity starts one (``B-T``).
    IOB2 input comes back unchanged."""
    out: list[str] = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or out[i - 1] == "O" or out[i - 1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return tuple(out)


def _check_tag(path: Path, line: int, tag: str, types: Sequence[str] | None) -> None:
    if tag != "O" and tag[:2] not in ("B-", "I-"):
        raise DataError(f"{path}:{line}: tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1 / IOB2; "
                        "convert IOBES or BILOU files first)")
    if types is not None and tag != "O" and tag[2:] not in types:
        raise DataError(f"{path}:{line}: tag {tag!r}: entity type {tag[2:]!r} is not in the run's "
                        f"label set {list(types)}; fix the tag or declare the type in `labels`")


Sentence = tuple[tuple[str, ...], tuple[str, ...]]  # words, IOB2 tags


def read_sentences(path: str | Path, tag_column: int = -1, tokens_key: str = "tokens",
                   tags_key: str = "tags", types: Sequence[str] | None = None) -> list[Sentence]:
    """(words, IOB2 tags) per sentence of a CoNLL or JSONL file; checks every tag against
    ``types`` when given."""
    path = Path(path)
    text = read_text(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in JSONL_SUFFIXES:
        raw = _read_jsonl(path, text, tokens_key, tags_key)
    else:
        raw = _read_conll(path, text, tag_column)
    if not raw:
        raise DataError(f"{path}: no sentences found (CoNLL: one word and tag per line; JSONL: "
                        f"{tokens_key!r} and {tags_key!r} per line)")
    out, converted = [], 0
    for sentence in raw:
        for line, tag in zip(sentence.lines, sentence.tags):
            _check_tag(path, line, tag, types)
        iob2 = to_iob2(sentence.tags)
        converted += sum(a != b for a, b in zip(iob2, sentence.tags))
        out.append((sentence.words, iob2))
    if converted:
        logger.info("%s: %d tags read as IOB1 and converted to IOB2", path, converted)
    return out


def infer_entity_types(path: str | Path, tag_column: int = -1, tokens_key: str = "tokens",
                       tags_key: str = "tags") -> tuple[str, ...]:
    """The sorted entity types of a file (for simulation, where one file is the whole data)."""
    types = {t[2:] for _, tags in read_sentences(path, tag_column, tokens_key, tags_key)
             for t in tags if t != "O"}
    return tuple(sorted(types))


def load_token_dataset(path: str | Path, names: Sequence[str], tag_column: int = -1,
                       tokens_key: str = "tokens", tags_key: str = "tags") -> TokenDataset:
    """Read a partner's file and map its tags to the run's ids (``names`` from ``tag_names``)."""
    ids = {name: i for i, name in enumerate(names)}
    sentences = read_sentences(path, tag_column, tokens_key, tags_key, entity_types(names))
    logger.info("read %d sentences from %s", len(sentences), path)
    return TokenDataset(tuple(words for words, _ in sentences),
                        tuple(tuple(ids[t] for t in tags) for _, tags in sentences), tuple(names))


def parse_type_map(text: str) -> dict[str, str]:
    """``"person=PER,group=ORG,Disease=O"`` -> {source type: target type}; ``O``: not an entity."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        source, sep, target = (x.strip() for x in item.partition("="))
        if not sep or not source or not target or " " in target:
            raise ConfigError(f"--label-map {item!r}: write SOURCE=TARGET (e.g. person=PER; "
                              "TARGET O drops the type)")
        if source in mapping and mapping[source] != target:
            raise ConfigError(f"--label-map maps {source!r} twice ({mapping[source]!r}, "
                              f"{target!r})")
        mapping[source] = target
    if not mapping:
        raise ConfigError("--label-map is empty: write SOURCE=TARGET pairs, comma-separated")
    return mapping


def remap_types(data: TokenDataset, mapping: dict[str, str]) -> TokenDataset:
    """``data`` with its entity types renamed by ``mapping`` (a type mapped to ``O`` is no
    entity), tagged with ``tag_names`` of the sorted target types: the order a run infers."""
    missing = sorted(set(entity_types(data.label_names)) - set(mapping))
    if missing:
        raise ConfigError(f"--label-map does not say what {missing} become; map each entity "
                          "type of the public files (TYPE=O drops one)")
    names = tag_names(sorted({t for t in mapping.values() if t != "O"}))
    ids = {n: i for i, n in enumerate(names)}

    def new_id(old: int) -> int:
        tag = data.label_names[old]
        target = "O" if tag == "O" else mapping[tag[2:]]
        return ids["O" if target == "O" else f"{tag[:2]}{target}"]

    table = [new_id(i) for i in range(len(data.label_names))]
    return TokenDataset(data.tokens, tuple(tuple(table[t] for t in s) for s in data.tags), names)


def align_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> list[int]:
    """A label per sub-token: a word's first sub-token gets its tag; the word's other sub-tokens
    and special tokens (word id None) get IGNORE."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else word_tags[word])
        previous = word
    return labels


def encode_tokens(tokenizer: PreTrainedTokenizerBase, data: TokenDataset,
                  max_length: int) -> TensorDataset:
    """input_ids, attention_mask and aligned labels (IGNORE where no tag), padded to max_length."""
    if not tokenizer.is_fast:
        raise ModelError(f"token-classification needs a fast tokenizer (word_ids); "
                         f"{type(tokenizer).__name__} is not one")
    enc = tokenizer([list(words) for words in data.tokens], is_split_into_words=True,
                    truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    labels = [align_labels(enc.word_ids(i), tags) for i, tags in enumerate(data.tags)]
    kept = sum(sum(x != IGNORE for x in row) for row in labels)
    total = sum(len(tags) for tags in data.tags)
    if kept < total:
        logger.info("max-length %d truncates %d of %d words; they are not trained on and are "
                    "predicted O in evaluation", max_length, total - kept, total)
    return TensorDataset(enc["input_ids"], enc["attention_mask"],
                         torch.tensor(labels, dtype=torch.long))


def predicted_tags(data: TokenDataset, predictions: Sequence[Sequence[int]]) -> list[list[str]]:
    """Tag strings per word, from the predictions at first sub-tokens; words cut off by
    max-length are predicted O, so the gold entities they hold count as missed."""
    out = []
    for gold, pred in zip(data.tags, predictions):
        names = [data.label_names[p] for p in pred[: len(gold)]]
        out.append(names + ["O"] * (len(gold) - len(names)))
    return out


def entity_metrics(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: TokenDataset,
                   max_length: int) -> dict[str, float]:
    """A partner's evaluate reply for token-classification: token accuracy (ACCURACY), macro-F1
    over entity types, entity-level micro precision / recall / F1 and per-type counts."""
    stats = evaluate_tokens(model, encode_tokens(tokenizer, data, max_length))
    scores = entity_scores(data.tag_strings(), predicted_tags(data, stats.predictions),
                           entity_types(data.label_names))
    return {P.NUM_EXAMPLES: float(stats.num_examples), P.EVAL_LOSS: stats.loss,
            P.ACCURACY: scores.token_accuracy, P.MACRO_F1: scores.macro_f1,
            P.ENTITY_F1: scores.f1, P.ENTITY_PRECISION: scores.precision,
            P.ENTITY_RECALL: scores.recall, **entity_count_metrics(scores)}
