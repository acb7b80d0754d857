"""The exported model directory and the loaders that reproduce it.

Every export names the loaders that give the coordinator's own predictions, and only those:

- ``head`` / ``lora`` / ``full``: a transformers directory. ``transformers.pipeline`` for the task
  and ``AutoModelFor…Classification`` load it with the label names (``config.json``'s
  ``id2label``). The tokenizer's ``model_max_length`` is the run's ``max-length``, so
  ``truncation=True`` cuts a text where training and evaluation cut it.
- ``pooled-head`` / ``pooled-lora``: a sentence-transformers directory (encoder, mean pooling,
  a Dense head whose output is the logits). BERT's [CLS] pooler cannot express mean pooling, so
  the plain text-classification pipeline must not load it: ``config.json`` registers the custom
  pipeline of ``common.model.pooled_pipeline`` (copied in as ``consortium_pipeline.py``), which
  transformers runs only with ``trust_remote_code=True`` and refuses loudly without it.

``Predictor`` gives label names through the same loaders (``consortium predict``), without running
code from the directory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.model import pooled_pipeline
from common.errors import ModelError
from common.infra.storage import atomic_write_json

PIPELINE_FILE = "consortium_pipeline.py"
PIPELINE_CLASS = f"{Path(PIPELINE_FILE).stem}.MeanPooledClassificationPipeline"
POOLED_MODES = ("pooled-head", "pooled-lora")


@dataclass(frozen=True)
class Loader:
    """A way to open the export that the model card names, as one line of Python."""

    name: str
    code: str


def loaders(finetune: str, task: str) -> tuple[Loader, ...]:
    """The loaders that reproduce an export of ``finetune`` for ``task`` (the card lists these,
    the export test checks each)."""
    from common.tasks import get_task

    if finetune in POOLED_MODES:
        return (Loader("sentence-transformers",
                       "SentenceTransformer(DIR).encode(texts).argmax(1)  # label ids, "
                       "labels.json names them"),
                Loader("transformers-pipeline",
                       f'pipeline("{task}", model=DIR, trust_remote_code=True)'
                       "  # runs consortium_pipeline.py from DIR: read it first"))
    kind = get_task(task)
    return (Loader("transformers-pipeline", f'pipeline("{kind.pipeline_tag}", model=DIR'
                                            f'{kind.pipeline_options})(texts, truncation=True)'),
            Loader(kind.auto_class, f"{kind.auto_class}.from_pretrained(DIR)"))


def finish_export(directory: Path, finetune: str, task: str, labels: Sequence[str],
                  max_length: int) -> None:
    """What the loaders need beyond the library's own save: the label names and the pooled
    pipeline's registration, or the tokenizer's length limit."""
    from common.tasks import get_task

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    if finetune in POOLED_MODES:
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
        tag = get_task(task).pipeline_tag
        config["custom_pipelines"] = {tag: {"impl": PIPELINE_CLASS, "pt": ["AutoModel"],
                                            "tf": [], "type": "text"}}
        shutil.copyfile(pooled_pipeline.__file__, directory / PIPELINE_FILE)
        atomic_write_json(config_path, config)
        return
    tokenizer_path = directory / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_path.read_text())
    tokenizer["model_max_length"] = max_length
    atomic_write_json(tokenizer_path, tokenizer)


@dataclass(frozen=True)
class Prediction:
    """One text's label (or, for token-classification, one tag per word) and its probability
    (the mean over words for tags)."""

    label: str | tuple[str, ...]
    score: float


class Predictor:
    """Predictions of an exported model through a loader its card names: sentence-transformers
    for pooled models, transformers for the others. No code from the directory runs."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.settings = settings = _run_config(self.directory)
        self.task = str(settings.get("task", "text-classification"))
        self.finetune = str(settings.get("finetune", ""))
        self.max_length = int(settings.get("max-length", 512))
        config = json.loads((self.directory / "config.json").read_text())
        self.labels = tuple(config["id2label"][str(i)] for i in range(len(config["id2label"])))
        from common.tasks import get_task

        self.kind = get_task(self.task)
        self._model: Any = None

    def predict(self, texts: Sequence[Any], batch_size: int = 64) -> list[Prediction]:
        """``texts``: strings, or word lists for token-classification."""
        out: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            out += self._token_batch(batch) if self.kind.tags_words else self._text_batch(batch)
        return out

    def _text_batch(self, batch: list[str]) -> list[Prediction]:
        import torch

        if self.finetune in POOLED_MODES:
            logits = torch.as_tensor(self._sentence_transformer().encode(
                batch, convert_to_numpy=True))
        else:
            model, tokenizer = self._transformers()
            enc = tokenizer(batch, truncation=True, max_length=self.max_length, padding=True,
                            return_tensors="pt")
            with torch.no_grad():
                logits = model(input_ids=enc["input_ids"],
                               attention_mask=enc["attention_mask"]).logits
        best = torch.softmax(logits.float(), dim=-1).max(dim=-1)
        return [Prediction(self.labels[int(i)], float(s))
                for s, i in zip(best.values, best.indices)]

    def _token_batch(self, batch: list[Sequence[str]]) -> list[Prediction]:
        """A tag per word from its first sub-token; words cut off by max-length are O."""
        import torch

        model, tokenizer = self._transformers()
        enc = tokenizer([list(words) for words in batch], is_split_into_words=True,
                        truncation=True, max_length=self.max_length, padding=True,
                        return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=enc["input_ids"],
                                        attention_mask=enc["attention_mask"]).logits.float(), -1)
        out = []
        for row, words in enumerate(batch):
            tags, scores, previous = ["O"] * len(words), [], None
            for position, word in enumerate(enc.word_ids(row)):
                if word is not None and word != previous:
                    best = int(probs[row, position].argmax())
                    tags[word] = self.labels[best]
                    scores.append(float(probs[row, position, best]))
                previous = word
            out.append(Prediction(tuple(tags), sum(scores) / len(scores) if scores else 1.0))
        return out

    def _sentence_transformer(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.directory), device="cpu")
        return self._model

    def _transformers(self):
        if self._model is None:
            import transformers
            from transformers import AutoTokenizer

            auto = getattr(transformers, self.kind.auto_class)
            self._model = (auto.from_pretrained(self.directory).eval(),
                           AutoTokenizer.from_pretrained(self.directory))
        return self._model


def _run_config(directory: Path) -> dict[str, Any]:
    path = directory / "run_config.json"
    if not path.is_file():
        raise ModelError(f"{directory}: no run_config.json; is this a Consortium export "
                         "(a run's OUT/model)?")
    return json.loads(path.read_text())
