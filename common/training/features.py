"""A linear head on the mean-pooled output of the encoder: finetune = "pooled-head" (the encoder
frozen) and "pooled-lora" (LoRA adapters in the encoder's attention train with the head).

pooled-head: the encoder never trains, so its features are computed once per example per partner
(``pooled_features``, cached on the partner's disk) and DP-SGD runs over the head alone on those
features: the same Opacus mechanism and accounting as every other mode, on a module of
hidden × labels + labels weights. pooled-lora runs the encoder in every step (its adapters
train), with the same mean pooling the encoder was pre-trained with, so the head starts on good
features and the adapters only refine them.

Both export a sentence-transformers directory ([Transformer, Pooling(mean), Dense(identity)];
pooled-lora's adapters merged into the Transformer) that loads in one line:
``SentenceTransformer(dir).encode(texts)`` gives logits.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from common.training.encoder_layout import frozen_below
from common.training.fingerprint import frozen_fingerprint
from common.infra.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

FEATURE_BATCH = 64  # texts per no-grad encoder pass


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask-weighted mean of token embeddings, as sentence-transformers' Pooling(mean)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class PooledHeadClassifier(nn.Module):
    """An encoder, mean pooling and a trainable ``head`` (nn.Linear); forward returns an object
    with ``.logits`` like a transformers classifier, so evaluation code is shared.

    ``encoder`` is frozen (pooled-head), or a PEFT model whose LoRA adapters train
    (pooled-lora: ``adapters`` True; every other encoder weight stays frozen)."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, adapters: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapters = adapters
        self.config = encoder.config
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(adapters and "lora_" in name)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.zeros_(self.head.weight)  # a linear probe starts at "no opinion": logits 0
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> PooledHeadClassifier:
        """A frozen encoder stays in eval mode (no dropout): features are fixed per text, the
        same in training, evaluation and the exported model. So do the embeddings and layers
        below the lowest adapter (common.training.top_layers caches their output)."""
        super().train(mode)
        if not self.adapters:
            self.encoder.eval()
        else:  # adapters in the top layers only (lora-layers): the layers below are frozen too
            for module in frozen_below(self.encoder):
                module.eval()
        return self

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids,
                              token_type_ids=token_type_ids).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        if not self.adapters:
            feats = self.features(input_ids, attention_mask, position_ids, token_type_ids)
            return SequenceClassifierOutput(logits=self.head(feats))
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids,
                              token_type_ids=token_type_ids).last_hidden_state
        return SequenceClassifierOutput(logits=self.head(mean_pool(hidden, attention_mask)))

    def plain_encoder(self) -> PreTrainedModel:
        """The encoder as a plain transformers model: a copy with the adapters merged in
        (pooled-lora), or the frozen encoder itself (pooled-head)."""
        if not self.adapters:
            return self.encoder
        return copy.deepcopy(self.encoder).merge_and_unload()


def cached_pooled_features(model: PooledHeadClassifier, data: TensorDataset,
                           cache: Path | None) -> TensorDataset:
    """``pooled_features``, kept in ``cache`` (the partner's ledger dir: its own disk, 0600) so
    the frozen encoder runs over a text once per partner, not once per round. Keyed by the
    frozen weights and the encoded texts (not the labels): a cached file is exactly what the
    encoder would compute again, and holds nothing the partner's data file does not."""
    labels = data.tensors[2]
    features = cached_tensor(cache, "features", feature_key(model.encoder, data),
                             (len(labels), model.head.in_features),
                             lambda: pooled_features(model, data).tensors[0])
    return TensorDataset(features, labels)


def feature_key(frozen: nn.Module, data: TensorDataset) -> str:
    """A cache key for what ``frozen`` computes from ``data``'s encoded texts: its frozen
    weights and the (input_ids, mask) tensors, never the labels."""
    digest = hashlib.sha256(frozen_fingerprint(frozen).encode())
    for tensor in data.tensors[:2]:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:40]


def cached_tensor(cache: Path | None, kind: str, key: str, shape: tuple[int, ...],
                  compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, or the copy kept at ``cache/<kind>-<key>.pt`` (written atomically, 0600,
    in a 0700 folder); a kept file of another shape is logged and computed again."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{kind}-{key}.pt"
    if path.is_file():
        kept = torch.load(path, weights_only=True)
        if tuple(kept.shape) == tuple(shape):
            return kept
        logger.warning("%s does not fit this data; computing the features again", path)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    atomic_write_bytes(path, buffer.getvalue(), mode=0o600)
    return result


@torch.no_grad()
def pooled_features(model: PooledHeadClassifier, data: TensorDataset,
                    batch_size: int = FEATURE_BATCH) -> TensorDataset:
    """(features, labels) for an encoded (input_ids, mask, labels) set, one frozen-encoder pass
    per text, in length-sorted batches (less padding); rows keep the order of ``data``."""
    input_ids, mask, labels = data.tensors
    device = next(model.parameters()).device
    order = torch.argsort(mask.sum(dim=1), stable=True)
    out = torch.empty(len(labels), model.head.in_features)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = max(1, int(mask[rows].sum(dim=1).max()))
        ids, m = input_ids[rows, :length].to(device), mask[rows, :length].to(device)
        positions = torch.arange(length, device=device).unsqueeze(0).repeat(len(rows), 1)
        out[rows] = model.features(ids, m, positions, torch.zeros_like(ids)).float().cpu()
    return TensorDataset(out, labels)


def save_sentence_transformer(model: PooledHeadClassifier, base_model: str, directory: Path,
                              max_length: int) -> None:
    """Write ``directory`` as a sentence-transformers model: the frozen encoder and tokenizer,
    mean pooling, and the head as a Dense layer with identity activation (its output = logits).
    pooled-lora's adapters are merged into the encoder's weights first."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    word = Transformer(base_model, max_seq_length=max_length)
    word.auto_model.load_state_dict(model.plain_encoder().state_dict())
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    head = Dense(model.head.in_features, model.head.out_features,
                 activation_function=nn.Identity(),
                 init_weight=model.head.weight.detach().cpu().clone(),
                 init_bias=model.head.bias.detach().cpu().clone())
    SentenceTransformer(modules=[word, pool, head], device="cpu").save(str(directory))
    logger.info("pooled-head model saved as sentence-transformers to %s", directory)
