"""finetune = "pooled-head" on a tiny BERT: cached features, a DP partner round that learns, the
planner's refusal before any ε is spent, and a sentence-transformers export that reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from client.data import PartnerSettings, partner_dataset
from client.partner import train_round
from common import protocol as P
from common.config import RunConfig
from common.errors import UnlearnablePlanError
from common.training.features import PooledHeadClassifier, pooled_features
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import (build_model, load_tokenizer, load_trainable_state, save_model,
                          trainable_state)
from common.data.synthetic import LABELS
from common.evaluation.scoring import text_metrics
from common.training.loop import _forward, encode


def pooled_config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, finetune="pooled-head", examples_per_partner=600,
                  max_length=16, local_epochs=3, num_rounds=1, epsilon=8.0,
                  out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def test_model_trains_only_the_head_and_caches_features_once(tiny_bert: str,
                                                            tmp_path: Path) -> None:
    config = pooled_config(tiny_bert, tmp_path)
    model = build_model(config, LABELS)
    assert isinstance(model, PooledHeadClassifier)
    assert sorted(trainable_state(model)) == ["head.bias", "head.weight"]
    model.train()
    assert model.training and not model.encoder.training  # no dropout in the features
    texts = ("the market shares rise", "doctors at the hospital", "the striker scores a goal")
    data = encode(load_tokenizer(config), _texts(texts), config.max_length)
    features = pooled_features(model, data, batch_size=2)
    assert features.tensors[0].shape == (3, 32)
    with torch.no_grad():
        model.head.weight.normal_()
        direct = _forward(model, *data.tensors[:2])
    assert torch.allclose(model.head(features.tensors[0]), direct, atol=1e-5)


def test_features_are_kept_on_the_partners_disk_and_reused(tiny_bert: str, tmp_path: Path,
                                                           monkeypatch) -> None:
    import stat

    from common.training import features as F

    config = pooled_config(tiny_bert, tmp_path)
    model = build_model(config, LABELS)
    data = encode(load_tokenizer(config), _texts(("doctors at the hospital", "a goal")), 16)
    first = F.cached_pooled_features(model, data, tmp_path / "cache")
    [kept] = (tmp_path / "cache").glob("features-*.pt")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    monkeypatch.setattr(F, "pooled_features", lambda *a, **k: pytest.fail("recomputed"))
    again = F.cached_pooled_features(model, data, tmp_path / "cache")
    assert torch.equal(first.tensors[0], again.tensors[0])
    with torch.no_grad():  # other frozen weights: another key, computed afresh
        model.encoder.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        F.cached_pooled_features(model, data, tmp_path / "cache")


def test_dp_round_on_cached_features_learns_and_accounts_like_opacus(tiny_bert: str,
                                                                    tmp_path: Path) -> None:
    config = pooled_config(tiny_bert, tmp_path)
    model = build_model(config, LABELS)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    partner = PartnerSettings(name="p0")
    reply = train_round(config, partner, shared, fingerprint, 1, "r")
    assert sorted(reply.arrays) == ["head.bias", "head.weight"]
    sigma, q = reply.metrics[P.NOISE_MULTIPLIER], reply.metrics[P.SAMPLE_RATE]
    steps = int(reply.metrics[P.STEPS])
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    assert reply.metrics[P.EPSILON] == pytest.approx(accountant.get_epsilon(config.delta),
                                                     rel=1e-6)
    assert reply.metrics[P.EPSILON] == pytest.approx(8.0, rel=0.01)
    # the plan leaves with the update (public quantities only) and reaches the report
    assert reply.metrics[P.PLAN_EXPECTED_BATCH] == pytest.approx(q * reply.metrics[
        P.NUM_EXAMPLES])
    assert 0 < reply.metrics[P.PLAN_NOISE_TO_SIGNAL] <= 2.0
    load_trainable_state(model, reply.arrays)
    _, test = partner_dataset(config, partner, LABELS)
    scores = text_metrics(model, load_tokenizer(config), test, config.max_length)
    assert scores[P.ACCURACY] >= 0.5  # four topics: chance is 0.25


def test_unlearnable_plan_is_refused_before_anything_is_spent(tiny_bert: str,
                                                             tmp_path: Path) -> None:
    config = pooled_config(tiny_bert, tmp_path, examples_per_partner=30, num_rounds=3)
    model = build_model(config, LABELS)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    with pytest.raises(UnlearnablePlanError, match="expect no learning.*examples"):
        train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert not list((tmp_path / "ledgers").glob("*.json"))  # no ε spent
    anyway = config.replace(dp_plan_check=False)
    reply = train_round(anyway, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert reply.metrics[P.EPSILON] > 0


def test_export_reloads_in_one_line_with_the_same_logits(tiny_bert: str, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    config = pooled_config(tiny_bert, tmp_path)
    model = build_model(config, LABELS)
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.normal_()
    save_model(model, config, tmp_path / "model", LABELS)
    texts = ("the market shares rise", "doctors", "the striker scores a goal in the match")
    loaded = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    logits = loaded.encode(list(texts), convert_to_numpy=True)
    data = encode(load_tokenizer(config), _texts(texts), config.max_length)
    model.eval()
    with torch.no_grad():
        expected = _forward(model, *data.tensors[:2]).numpy()
    assert logits.shape == (3, len(LABELS))
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def _texts(texts: tuple[str, ...]):
    from common.data.text import TextDataset

    return TextDataset(texts, (0,) * len(texts), LABELS)
