"""finetune = "pooled-lora" (LoRA in the encoder + a head on mean-pooled output) and FFA-LoRA
(lora-freeze-a) on a tiny BERT: what trains, a DP round accounted like Opacus, the export that
reloads in one line with the merged adapters, and DP-SGD over an empty Poisson batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import TensorDataset

from client.data import PartnerSettings
from client.partner import train_round
from common import protocol as P
from common.config import RunConfig
from common.errors import ConfigError
from common.training.features import PooledHeadClassifier
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_tokenizer, save_model, trainable_state
from common.data.synthetic import LABELS
from common.training.loop import DPSettings, TrainSettings, _forward, encode, train_dp


def lora_config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, finetune="pooled-lora", examples_per_partner=200,
                  max_length=16, local_epochs=1, num_rounds=1, epsilon=8.0, lora_r=2,
                  lora_alpha=4, dp_plan_check=False, out_dir=str(tmp_path / "out"),
                  ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def test_adapters_and_head_train_and_ffa_freezes_a(tiny_bert: str, tmp_path: Path) -> None:
    model = build_model(lora_config(tiny_bert, tmp_path), LABELS)
    assert isinstance(model, PooledHeadClassifier) and model.adapters
    names = sorted(trainable_state(model))
    assert {"head.weight", "head.bias"} <= set(names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert all("lora_" in n or n.startswith("head.") for n in names)
    assert model.training and model.encoder.training  # the encoder trains: dropout on
    ffa = build_model(lora_config(tiny_bert, tmp_path, lora_freeze_a=True), LABELS)
    ffa_names = sorted(trainable_state(ffa))
    assert ffa_names == [n for n in names if "lora_A" not in n]
    # A is frozen, so it is in the fingerprint: the seed that draws it must match everywhere
    again = build_model(lora_config(tiny_bert, tmp_path, lora_freeze_a=True), LABELS)
    other = build_model(lora_config(tiny_bert, tmp_path, lora_freeze_a=True, seed=7), LABELS)
    assert frozen_fingerprint(ffa) == frozen_fingerprint(again) != frozen_fingerprint(other)


@pytest.mark.parametrize("finetune", ["pooled-lora", "lora"])
def test_lora_layers_puts_adapters_in_the_top_layers_only(tiny_bert: str, tmp_path: Path,
                                                          finetune: str) -> None:
    every = trainable_state(build_model(lora_config(tiny_bert, tmp_path, finetune=finetune),
                                        LABELS))
    top = trainable_state(build_model(lora_config(tiny_bert, tmp_path, finetune=finetune,
                                                  lora_layers=1), LABELS))
    assert {n for n in every if "layer.0." in n and "lora_" in n}  # 2 layers: 0 and 1
    assert sorted(top) == [n for n in sorted(every) if "layer.0." not in n]
    with pytest.raises(ConfigError, match="lora-layers = 3, but .* has 2 encoder layers"):
        build_model(lora_config(tiny_bert, tmp_path, finetune=finetune, lora_layers=3), LABELS)


def test_head_lr_scale_gives_the_head_its_own_learning_rate(tiny_bert: str,
                                                            tmp_path: Path) -> None:
    from common.training.loop import make_optimizer

    model = build_model(lora_config(tiny_bert, tmp_path, lora_freeze_a=True), LABELS)
    names = {id(p): n for n, p in model.named_parameters()}
    adapters, head = make_optimizer(model, 1e-2, head_scale=10.0).param_groups
    assert adapters["lr"] == 1e-2 and head["lr"] == pytest.approx(0.1)
    assert all("lora_B" in names[id(p)] for p in adapters["params"])
    assert sorted(names[id(p)] for p in head["params"]) == ["head.bias", "head.weight"]
    assert len(make_optimizer(model, 1e-2).param_groups) == 1  # scale 1: one group
    plain = build_model(lora_config(tiny_bert, tmp_path, finetune="full"), LABELS)
    assert len(make_optimizer(plain, 1e-3, head_scale=10.0).param_groups) == 1  # no adapters


def test_ffa_dp_round_moves_b_only_and_accounts_like_opacus(tiny_bert: str,
                                                            tmp_path: Path) -> None:
    config = lora_config(tiny_bert, tmp_path, lora_freeze_a=True)
    model = build_model(config, LABELS)
    with torch.no_grad():  # a head with an opinion, so the adapters get a gradient
        model.head.weight.normal_()
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert sorted(reply.arrays) == sorted(shared)
    moved = [n for n in shared if not np.array_equal(reply.arrays[n], shared[n])]
    assert any("lora_B" in n for n in moved) and "head.weight" in moved
    accountant = RDPAccountant()
    for _ in range(int(reply.metrics[P.STEPS])):
        accountant.step(noise_multiplier=reply.metrics[P.NOISE_MULTIPLIER],
                        sample_rate=reply.metrics[P.SAMPLE_RATE])
    assert reply.metrics[P.EPSILON] == pytest.approx(accountant.get_epsilon(config.delta),
                                                     rel=1e-6)


def test_export_merges_the_adapters_and_reloads_with_the_same_logits(tiny_bert: str,
                                                                     tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    config = lora_config(tiny_bert, tmp_path)
    model = build_model(config, LABELS)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.normal_(std=0.5)
    before = trainable_state(model)
    save_model(model, config, tmp_path / "model", LABELS)
    assert all(np.array_equal(v, trainable_state(model)[k]) for k, v in before.items())
    texts = ["the market shares rise", "doctors", "the striker scores a goal in the match"]
    logits = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(
        texts, convert_to_numpy=True)
    data = encode(load_tokenizer(config), _texts(tuple(texts)), config.max_length)
    model.eval()
    with torch.no_grad():
        expected = _forward(model, *data.tensors[:2]).numpy()
        with model.encoder.disable_adapter():  # the same head on the encoder without adapters
            frozen = _forward(model, *data.tensors[:2])
    assert not np.allclose(expected, frozen.numpy(), atol=1e-3)  # the adapters matter
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_dp_sgd_runs_through_empty_poisson_batches(tiny_bert: str, tmp_path: Path,
                                                   monkeypatch) -> None:
    """Any mode that runs the encoder per step (here LoRA on [CLS]; the fix is in _forward)."""
    from common.training import loop as training

    sizes: list[int] = []
    forward = training.model_logits
    monkeypatch.setattr(training, "model_logits", lambda model, inputs: (
        sizes.append(len(inputs[0])) or forward(model, inputs)))
    config = lora_config(tiny_bert, tmp_path, finetune="lora")
    model = build_model(config, LABELS)
    data = encode(load_tokenizer(config), _texts(("a goal", "the market", "doctors")), 16)
    assert len(_forward(model, data.tensors[0][:0], data.tensors[1][:0])) == 0
    settings = TrainSettings(1e-2, 1, 8, 16, seed=3)  # q = 1/3: ~30 % of batches are empty
    before = trainable_state(model)
    stats, history = train_dp(model, TensorDataset(*data.tensors), settings,
                              DPSettings(1.0, 1.0, "hooks"), [])
    assert len(sizes) == stats.steps == 24 and 0 in sizes  # empty batches ran too
    assert history[-1][2] == 24  # every step, empty or not, is accounted
    assert any(not np.array_equal(v, trainable_state(model)[k]) for k, v in before.items())


def test_token_classification_refuses_pooled_lora() -> None:
    with pytest.raises(ConfigError, match="pooled-lora.*tag per word"):
        RunConfig(task="token-classification", finetune="pooled-lora", labels="PER")


def _texts(texts: tuple[str, ...]):
    from common.data.text import TextDataset

    return TextDataset(texts, (0,) * len(texts), LABELS)
