"""The warm start's objectives on public data, without DP (no partner row is used):

- ``supervised``: the encoder and a linear head on the public labels, all weights trained; a text
  is classified from its mean-pooled tokens (the pooling every pooled recipe uses after), a word
  from its first word piece (as the token recipes do). A text head is dropped; a token head is
  kept beside the encoder (a run whose tags are the head's starts from it).
- ``simcse``: unsupervised SimCSE (Gao et al., 2021) for text with no labels: the same text twice
  through dropout is a positive pair, the batch's other texts the negatives
  (sentence-transformers' MultipleNegativesRankingLoss over mean-pooled embeddings).
- ``mlm``: masked-language modelling (transformers' collator), for a base model that ships its MLM
  head; refused for one that does not (sentence-transformers checkpoints, the bundled MiniLM).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import TensorDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.errors import ConfigError
from common.training.features import mean_pool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    warmup: float = 0.1
    seed: int = 42
    device: str = "cpu"  # a torch device name (the CLI resolves "auto")


def _batches(n: int, settings: TrainSettings, generator: torch.Generator) -> Iterator[torch.Tensor]:
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            yield order[start:start + settings.batch_size]


def _optimise(params: list[nn.Parameter], n: int, settings: TrainSettings,
              loss_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """AdamW with linear warm-up and decay over every batch of every epoch."""
    from transformers import get_linear_schedule_with_warmup

    steps = settings.epochs * math.ceil(n / settings.batch_size)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup * steps), steps)
    generator = torch.Generator().manual_seed(settings.seed)
    started, running = time.time(), 0.0
    for step, rows in enumerate(_batches(n, settings, generator), start=1):
        loss = loss_of(rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 50 == 0 or step == steps:
            logger.info("warm start step %d/%d, loss %.4f, %.0f s", step, steps, running,
                        time.time() - started)


def _trimmed(data: TensorDataset, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The batch's rows, cut to its longest text (less padding)."""
    ids, mask, labels = (t[rows] for t in data.tensors)
    length = max(1, int(mask.sum(dim=1).max()))
    return ids[:, :length], mask[:, :length], labels[:, :length] if labels.dim() == 2 else labels


def supervised(encoder: PreTrainedModel, data: TensorDataset, num_labels: int, token_level: bool,
               settings: TrainSettings) -> tuple[PreTrainedModel, nn.Linear]:
    """Train ``encoder`` and a linear head on ``data`` (input_ids, attention_mask, labels:
    a label per text, or a tag per word piece with -100 where none); both, on the CPU."""
    torch.manual_seed(settings.seed)
    head = nn.Linear(encoder.config.hidden_size, num_labels).to(settings.device)
    encoder.to(settings.device).train()

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        ids, mask, labels = (t.to(settings.device) for t in _trimmed(data, rows))
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if token_level:
            logits = head(hidden)
            return nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
        return nn.functional.cross_entropy(head(mean_pool(hidden, mask)), labels)

    _optimise([*encoder.parameters(), *head.parameters()], len(data), settings, loss_of)
    return encoder.cpu().eval(), head.cpu()


def simcse(encoder_path: str, texts: list[str], settings: TrainSettings) -> PreTrainedModel:
    """Unsupervised SimCSE with sentence-transformers' loss; returns the trained encoder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    torch.manual_seed(settings.seed)
    word = Transformer(encoder_path, max_seq_length=settings.max_length)
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")],
                                device=settings.device)
    loss = MultipleNegativesRankingLoss(model)  # scale 20: temperature 0.05, as SimCSE
    model.train()

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        batch = [texts[int(i)] for i in rows]
        features = {k: v.to(settings.device) for k, v in model.tokenize(batch).items()}
        return loss([features, dict(features)], None)  # two dropout passes: the positive pairs

    _optimise(list(model.parameters()), len(texts), settings, loss_of)
    return word.auto_model.cpu().eval()


def mlm(encoder_path: str, tokenizer: PreTrainedTokenizerBase, texts: list[str],
        settings: TrainSettings) -> PreTrainedModel:
    """Masked-language modelling (15 % of pieces); ConfigError when the checkpoint has no MLM
    head (a random head would only teach the encoder to fit noise)."""
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    model, info = AutoModelForMaskedLM.from_pretrained(encoder_path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "embeddings" not in k]
    if missing:
        raise ConfigError(f"--objective mlm: {encoder_path!r} has no MLM head (missing "
                          f"{missing[:2]}); use --objective simcse for text without labels")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    encoded = tokenizer(texts, truncation=True, max_length=settings.max_length)
    torch.manual_seed(settings.seed)  # the collator draws its masks from torch's generator
    model.to(settings.device).train()

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        batch = collator([{"input_ids": encoded["input_ids"][int(i)]} for i in rows])
        return model(**{k: v.to(settings.device) for k, v in batch.items()}).loss

    _optimise(list(model.parameters()), len(texts), settings, loss_of)
    return model.base_model.cpu().eval()


def with_token_head(encoder: PreTrainedModel, head: nn.Linear,
                    tags: tuple[str, ...]) -> PreTrainedModel | None:
    """The encoder and its trained head as the task's token classifier (``id2label`` = the
    tags), so that a run whose tags are these same ones starts from the head
    (common.model.factory keeps a base model's head only then); None for an architecture
    without a linear ``classifier`` to hold it."""
    import copy

    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(encoder.config)
    config.num_labels = len(tags)
    config.id2label = dict(enumerate(tags))
    config.label2id = {t: i for i, t in enumerate(tags)}
    model = AutoModelForTokenClassification.from_config(config)
    classifier = getattr(model, "classifier", None)
    prefix = model.base_model_prefix
    if (not isinstance(classifier, nn.Linear) or classifier.weight.shape != head.weight.shape
            or type(getattr(model, prefix, None)) is not type(encoder)):
        return None
    setattr(model, prefix, encoder)  # the whole encoder, its pooler too (a text run uses it)
    classifier.load_state_dict(head.state_dict())
    return model.eval()
