"""finetune = "bias" (DP-BiTFiT): only the encoder layers' biases and the head train and leave
a partner; every weight matrix and the embeddings stay the base model's (and the frozen-weight
hash covers them)."""

from __future__ import annotations

import torch

from common.config import RunConfig
from common.model.factory import build_model, trainable_size, trainable_state
from common.training.fingerprint import frozen_fingerprint
from common.data.synthetic import LABELS


def test_only_biases_and_the_head_train_and_the_weights_are_hashed(tiny_bert: str) -> None:
    model = build_model(RunConfig(base_model=tiny_bert, finetune="bias"), LABELS)
    sent = set(trainable_state(model))
    biases = {n for n, _ in model.named_parameters()
              if n.endswith(".bias") and ".encoder.layer." in n}
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier.")}
    pooler = {n for n, _ in model.named_parameters() if n.startswith("bert.pooler.")}
    assert sent == biases | head | {n for n in pooler if n.endswith(".bias")}
    assert any(".attention.self.query.bias" in n for n in sent)
    assert any(".LayerNorm.bias" in n for n in sent)  # the LayerNorm shifts too
    assert trainable_size(model) == sum(p.numel() for n, p in model.named_parameters()
                                        if n in sent)
    before = frozen_fingerprint(model)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.add_(1e-3)
    assert frozen_fingerprint(model) != before  # a weight is not the base model's: refused
