"""pooled-lora with adapters in the top layers only (lora-layers): the frozen layers below run in
eval mode, their output is computed once per text and kept on the partner's disk, the top layers
on it give the model's own logits, and a DP round on it trains the same weights and is
accounted like Opacus, empty Poisson batches included."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from client.data import PartnerSettings
from client.partner import train_round
from client.round_plan import trainable_view
from common.training import head_features as H
from common import protocol as P
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_tokenizer, trainable_state
from common.data.synthetic import LABELS
from common.training.encoder_layout import first_adapted_layer, frozen_below
from common.training.top_layers import TopLayers, can_cache
from common.training.loop import DPSettings, TrainSettings, _forward, encode, train_dp
from tests.test_partner_round import recomputed_epsilon
from tests.test_pooled_lora import _texts, lora_config

TEXTS = ("the market shares rise", "doctors", "the striker scores a goal in the match",
         "rain")


def _model(tiny_bert: str, tmp_path: Path, **changes):
    config = lora_config(tiny_bert, tmp_path, lora_layers=1, lora_freeze_a=True, **changes)
    model = build_model(config, LABELS)
    with torch.no_grad():  # adapters and a head with an opinion: the logits depend on them
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.5)
    return config, model


def test_layers_below_the_adapters_are_frozen_and_run_without_dropout(tiny_bert: str,
                                                                       tmp_path: Path) -> None:
    _, model = _model(tiny_bert, tmp_path)
    assert first_adapted_layer(model.encoder) == 1 and can_cache(model)
    below = frozen_below(model.encoder)
    assert len(below) == 2  # the embeddings and layer 0
    model.train()
    assert all(not m.training for m in below) and not any(
        p.requires_grad for m in below for p in m.parameters())
    assert TopLayers(model).layers[0].training  # the adapted layer keeps its dropout
    every = build_model(lora_config(tiny_bert, tmp_path), LABELS)  # adapters everywhere
    assert first_adapted_layer(every.encoder) == 0 and not can_cache(every)
    assert not frozen_below(every.encoder) and every.encoder.training
    assert trainable_view(every, encode(load_tokenizer(lora_config(tiny_bert, tmp_path)),
                                        _texts(TEXTS), 16))[0] is every


def test_top_layers_on_kept_inputs_give_the_models_own_logits(tiny_bert: str, tmp_path: Path,
                                                              monkeypatch) -> None:
    config, model = _model(tiny_bert, tmp_path)
    data = encode(load_tokenizer(config), _texts(TEXTS), config.max_length)
    top, inputs = trainable_view(model, data, tmp_path / "cache")
    assert isinstance(top, TopLayers) and top.head is model.head
    assert sorted(n for n, p in top.named_parameters() if p.requires_grad) == sorted(
        n.replace("encoder.base_model.model.encoder.layer.1.", "layers.0.")
        for n in trainable_state(model))  # the same trainable weights, nothing else
    [kept] = (tmp_path / "cache").glob("layer1-inputs-*.pt")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    hidden, mask, labels = inputs.tensors
    assert hidden.shape == (4, int(data.tensors[1].sum(dim=1).max()), 32)
    assert torch.equal(labels, data.tensors[2])
    model.eval()
    with torch.no_grad():
        direct = _forward(model, *data.tensors[:2])
        cached = top(hidden, mask)
        pieces = torch.cat([top(hidden[i:i + 1], mask[i:i + 1]) for i in range(4)])
        empty = top(hidden[:0], mask[:0])
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pieces, direct, atol=1e-5, rtol=1e-5)  # padding never counts
    assert empty.shape == (0, len(LABELS))
    real = H.head_inputs  # kept: a second view reads the file instead of running the encoder
    monkeypatch.setattr(H, "head_inputs", lambda m, h, d, **k: (
        real(m, h, d, **k) if len(d[0]) == 1 else pytest.fail("recomputed")))
    assert torch.equal(trainable_view(model, data, tmp_path / "cache")[1].tensors[0], hidden)
    monkeypatch.setattr(H, "MAX_CACHED_BYTES", 10)  # too big to keep: the whole model runs
    assert trainable_view(model, data, tmp_path / "cache")[0] is model


def test_dp_round_on_kept_inputs_trains_the_model_and_accounts_like_opacus(
        tiny_bert: str, tmp_path: Path) -> None:
    config, model = _model(tiny_bert, tmp_path)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert list((tmp_path / "ledgers").rglob("layer1-inputs-*.pt"))  # it ran on kept inputs
    assert sorted(reply.arrays) == sorted(shared)
    moved = [n for n in shared if not np.array_equal(reply.arrays[n], shared[n])]
    assert any("layer.1." in n and "lora_B" in n for n in moved) and "head.weight" in moved
    assert reply.metrics[P.EPSILON] == pytest.approx(recomputed_epsilon(
        reply.metrics[P.NOISE_MULTIPLIER], reply.metrics[P.SAMPLE_RATE],
        int(reply.metrics[P.STEPS]), config.delta), rel=1e-6)


def test_the_same_seeded_dp_round_with_and_without_kept_inputs(tiny_bert: str,
                                                               tmp_path: Path) -> None:
    """One seed, one Poisson sample and noise draw: the model trained on kept inputs ends
    where the model that runs its whole encoder in every step does (empty batches included)."""
    config, whole = _model(tiny_bert, tmp_path)
    _, viewed = _model(tiny_bert, tmp_path)
    viewed.load_state_dict(whole.state_dict())
    data = encode(load_tokenizer(config), _texts(TEXTS), config.max_length)
    settings = TrainSettings(1e-2, 1, 6, 16, seed=5)  # q = 1/4: some batches are empty
    dp = DPSettings(1.0, 1.0, "hooks")
    _, history = train_dp(whole, TensorDataset(*data.tensors), settings, dp, [])
    top, inputs = trainable_view(viewed, data, tmp_path / "cache")
    _, again = train_dp(top, inputs, settings, dp, [])
    assert history == again
    for name, value in trainable_state(whole).items():
        np.testing.assert_allclose(trainable_state(viewed)[name], value, atol=1e-5)


def test_an_encoder_of_another_layout_runs_whole_and_the_log_says_so(caplog) -> None:
    import logging

    from transformers import DistilBertConfig, DistilBertModel

    from common.training.features import PooledHeadClassifier

    encoder = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, hidden_dim=32, n_layers=2,
                                               n_heads=2, max_position_embeddings=16))
    model = PooledHeadClassifier(encoder, 2, adapters=True)  # DistilBERT: transformer.layer
    data = TensorDataset(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long),
                         torch.zeros(2, dtype=torch.long))
    with caplog.at_level(logging.INFO, logger="common.training.top_layers"):
        assert trainable_view(model, data)[0] is model
    assert "no BERT-style encoder.layer list" in caplog.text
    assert not frozen_below(encoder) and not can_cache(model)
