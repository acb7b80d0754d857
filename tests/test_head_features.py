"""finetune = "head" on cached inputs (common.training.head_features): the classifier sees exactly
what it sees inside the model, the inputs are computed once and kept on the partner's disk, and a DP
round on them spends what Opacus' accountant says and trains the model that is exported."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

from client.data import PartnerSettings
from client.partner import train_round
from client.round_plan import trainable_view
from common.training import head_features as H
from common import protocol as P
from common.config import RunConfig
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_tokenizer, trainable_state
from common.sources import run_labels
from common.data.synthetic import LABELS
from common.tasks.tokens import TokenDataset, encode_tokens
from common.training.loop import encode, model_logits
from tests.test_ner import ner_config
from tests.test_partner_round import recomputed_epsilon
from tests.test_pooled_head import _texts

WORDS = (("peter", "visited", "paris"), ("the", "bank", "in", "berlin", "opened"), ("anna",))


def token_data(config: RunConfig):
    tags = run_labels(config)
    sentences = TokenDataset(WORDS, tuple(tuple(0 for _ in w) for w in WORDS), tags)
    return tags, encode_tokens(load_tokenizer(config), sentences, config.max_length)


def test_token_head_inputs_give_the_models_own_logits(ner_bert: str, tmp_path: Path) -> None:
    config = ner_config(ner_bert, tmp_path, finetune="head")
    tags, data = token_data(config)
    model = build_model(config, tags)
    head = H.trainable_head(model)
    assert head is model.classifier
    inputs = H.head_inputs(model, head, data, batch_size=2)  # two batches, length-sorted
    longest = int(data.tensors[1].sum(dim=1).max())
    assert inputs.shape == (3, longest, 32)
    assert model.training  # head_inputs left the mode as it found it
    with torch.no_grad():
        model.classifier.weight.normal_()
        model.eval()
        direct = model_logits(model, list(data.tensors[:2]))
    cached = head(inputs)
    for row in range(3):  # every real position agrees; padding is never labelled
        length = int(data.tensors[1][row].sum())
        assert torch.allclose(cached[row, :length], direct[row, :length], atol=1e-5)


def test_text_head_and_non_head_modes(tiny_bert: str, tmp_path: Path) -> None:
    config = RunConfig(base_model=tiny_bert, finetune="head", max_length=16)
    model = build_model(config, LABELS)
    data = encode(load_tokenizer(config), _texts(("the market", "a goal was scored")), 16)
    inputs = H.head_inputs(model, model.classifier, data)
    assert inputs.shape == (2, 32)  # BERT's sequence head reads the pooled output
    with torch.no_grad():
        model.classifier.weight.normal_()
        model.eval()
        direct = model_logits(model, list(data.tensors[:2]))
    assert torch.allclose(model.classifier(inputs), direct, atol=1e-5)
    for finetune in ("lora", "full"):  # the encoder trains too: nothing to cache
        other = build_model(config.replace(finetune=finetune), LABELS)
        assert H.trainable_head(other) is None
        assert trainable_view(other, data, tmp_path / "cache")[0] is other


def test_inputs_are_kept_on_the_partners_disk_and_reused(ner_bert: str, tmp_path: Path,
                                                         monkeypatch) -> None:
    config = ner_config(ner_bert, tmp_path, finetune="head")
    tags, data = token_data(config)
    model = build_model(config, tags)
    trained, first = trainable_view(model, data, tmp_path / "cache")
    assert trained is model.classifier
    [kept] = (tmp_path / "cache").glob("head-inputs-*.pt")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert torch.equal(first.tensors[1], data.tensors[2])  # the labels ride along, not stored
    real = H.head_inputs
    monkeypatch.setattr(H, "head_inputs", lambda m, h, d, **k: (
        real(m, h, d, **k) if len(d[0]) == 1 else pytest.fail("recomputed")))
    again = trainable_view(model, data, tmp_path / "cache")[1]
    assert torch.equal(first.tensors[0], again.tensors[0])
    with torch.no_grad():  # other frozen weights: another key, computed afresh
        model.bert.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        trainable_view(model, data, tmp_path / "cache")
    monkeypatch.setattr(H, "MAX_CACHED_BYTES", 10)  # too big to keep: the whole model runs
    assert trainable_view(model, data, tmp_path / "cache")[0] is model


def test_dp_round_on_cached_inputs_accounts_like_opacus(ner_bert: str, tmp_path: Path) -> None:
    config = ner_config(ner_bert, tmp_path, finetune="head", learning_rate=1e-2)
    tags = run_labels(config)
    model = build_model(config, tags)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert sorted(reply.arrays) == ["classifier.bias", "classifier.weight"]
    assert list((tmp_path / "ledgers").rglob("head-inputs-*.pt"))  # it ran on cached inputs
    assert reply.metrics[P.EPSILON] == pytest.approx(recomputed_epsilon(
        reply.metrics[P.NOISE_MULTIPLIER], reply.metrics[P.SAMPLE_RATE],
        int(reply.metrics[P.STEPS]), config.delta), rel=1e-6)
    assert any(not torch.equal(torch.as_tensor(reply.arrays[k]), torch.as_tensor(shared[k]))
               for k in shared)
