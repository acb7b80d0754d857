"""Length-sorted micro-batches (common.training.batching): how a batch is cut, and that a DP round
run in pieces is the same DP-SGD as the batch in one pass (same weights, steps and accountant
history, with noise), while evaluation keeps every result at its text's place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.training.batching import micro_batches, sorted_batches
from common.config import RunConfig
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS
from common.evaluation.scoring import evaluate, evaluate_tokens
from common.training.loop import DPSettings, TrainSettings, train_dp, train_plain


def _mask(lengths: list[int], width: int = 16) -> torch.Tensor:
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def test_pieces_cover_every_row_once_within_the_budget() -> None:
    lengths = [3, 16, 7, 1, 16, 9, 2, 12, 5, 4]
    mask = _mask(lengths)
    pieces = micro_batches(mask, token_budget=32)
    rows = torch.cat(pieces).tolist()
    assert sorted(rows) == list(range(len(lengths)))
    for piece in pieces:
        longest = max(lengths[r] for r in piece)
        assert len(piece) * longest <= 32
    assert [lengths[r] for r in pieces[0]] == [16, 16]  # longest first
    assert len(pieces) == 4  # [16, 16], [12, 9], [7, 5, 4], [3, 2, 1]


def test_budget_zero_or_an_empty_batch_is_one_piece() -> None:
    mask = _mask([3, 16, 7])
    assert [p.tolist() for p in micro_batches(mask, 0)] == [[0, 1, 2]]
    assert [p.tolist() for p in micro_batches(mask[:0], 64)] == [[]]
    # a text longer than the budget still runs, alone
    assert [p.tolist() for p in micro_batches(mask, 4)] == [[1], [2], [0]]
    with pytest.raises(ValueError, match="token_budget"):
        micro_batches(mask, -1)


def test_sorted_batches_partition_the_rows() -> None:
    mask = _mask([5, 1, 9, 3, 7])
    batches = sorted_batches(mask, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 4], [2]]
    with pytest.raises(ValueError, match="batch_size"):
        sorted_batches(mask, 0)


def _texts(n: int, vocab: int, seed: int) -> TensorDataset:
    """n texts of 2 to 16 tokens (random ids, padded to 16) with random labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 17, (n,), generator=g).tolist()
    mask = _mask(lengths)
    ids = torch.randint(5, vocab, (n, 16), generator=g) * mask
    return TensorDataset(ids, mask, torch.randint(0, len(LABELS), (n,), generator=g))


def _model(tiny_bert: str) -> nn.Module:
    config = RunConfig(base_model=tiny_bert, finetune="lora", max_length=16)
    torch.manual_seed(0)
    model = build_model(config, LABELS)
    for module in model.modules():  # no dropout: the two runs must draw the same random numbers
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


def _dp_round(tiny_bert: str, token_budget: int) -> tuple[dict, object, list]:
    model = _model(tiny_bert)
    data = _texts(60, model.config.vocab_size, seed=1)
    settings = TrainSettings(1e-2, 20, 2, 16, seed=5, token_budget=token_budget)
    stats, history = train_dp(model, data, settings, DPSettings(0.7, 0.5), [(0.1, 0.7, 4)])
    return trainable_state(model), stats, history


def test_a_dp_round_in_pieces_is_the_same_dp_sgd(tiny_bert: str) -> None:
    """Pieces of at most 24 padded tokens (1 to 12 texts each) against each batch in one pass:
    the same Poisson batches, clipping, noise (σ = 0.7) and steps give the same weights, and the
    accountant counts one step per batch, not per piece."""
    whole, whole_stats, whole_history = _dp_round(tiny_bert, token_budget=0)
    split, split_stats, split_history = _dp_round(tiny_bert, token_budget=24)
    config = RunConfig(base_model=tiny_bert, finetune="lora", max_length=16)
    torch.manual_seed(0)
    before = trainable_state(build_model(config, LABELS))
    assert max(float(np.abs(whole[k] - before[k]).max()) for k in whole) > 1e-3  # it trained
    for k in whole:
        np.testing.assert_allclose(split[k], whole[k], atol=1e-5, err_msg=k)
    assert split_history == whole_history == [(0.1, 0.7, 4), (0.7, 1 / 3, 6)]  # (σ, q, steps)
    assert split_stats.steps == whole_stats.steps == 6
    assert split_stats.examples_seen == whole_stats.examples_seen
    assert split_stats.loss == pytest.approx(whole_stats.loss, rel=1e-5)
    assert split_stats.clipped_fraction == pytest.approx(whole_stats.clipped_fraction)


def test_a_plain_round_in_pieces_takes_the_same_steps(tiny_bert: str) -> None:
    """Without DP each batch's mean gradient is accumulated piece by piece: the same weights."""
    def round_(token_budget: int) -> tuple[dict, float]:
        model = _model(tiny_bert)
        data = _texts(60, model.config.vocab_size, seed=1)
        stats = train_plain(model, data, TrainSettings(1e-2, 20, 2, 16, seed=5,
                                                       token_budget=token_budget))
        return trainable_state(model), stats.loss

    (whole, whole_loss), (split, split_loss) = round_(0), round_(24)
    for k in whole:
        np.testing.assert_allclose(split[k], whole[k], atol=1e-5, err_msg=k)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)


class _Echo(nn.Module):
    """Logits that depend on each text alone (its token ids and its length), never on the
    padding or the other texts of a batch; per token, or of the first token for the text."""

    def __init__(self, labels: int, token_level: bool = False) -> None:
        super().__init__()
        self.factors = nn.Parameter(torch.arange(1.0, labels + 1))
        self.token_level = token_level

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **_: torch.Tensor) -> object:
        per_token = (input_ids + attention_mask.sum(1, keepdim=True)).float().unsqueeze(-1)
        logits = (per_token * self.factors) % 7.0
        return type("Out", (), {"logits": logits if self.token_level else logits[:, 0]})()


def test_evaluation_keeps_each_text_at_its_place() -> None:
    """Evaluated in length-sorted batches, every prediction is the one its own text gets alone."""
    data = _texts(23, 40, seed=2)
    model = _Echo(len(LABELS))
    alone = [int(model(data.tensors[0][i:i + 1], data.tensors[1][i:i + 1]).logits.argmax())
             for i in range(23)]
    assert list(evaluate(model, data, batch_size=4).predictions) == alone
    model = _Echo(len(LABELS), token_level=True)
    tags = torch.randint(0, len(LABELS), (23, 16)) * data.tensors[1] - 100 * (1 - data.tensors[1])
    tokens = TensorDataset(data.tensors[0], data.tensors[1], tags)
    out = evaluate_tokens(model, tokens, batch_size=4)
    for i in range(23):
        n = int(data.tensors[1][i].sum())
        single = model(data.tensors[0][i:i + 1, :n], data.tensors[1][i:i + 1, :n]).logits
        assert out.predictions[i] == tuple(single[0].argmax(-1).tolist())


def test_memory_is_planned_for_one_piece() -> None:
    """The memory check sizes a DP step with per-sample hooks by its largest piece, not by the
    expected batch; ghost clipping and a budget of 0 keep the whole batch, ghost without
    per-sample gradients, and a per-person step holds up to max-rows-per-person rows of each
    expected person."""
    from client.round_plan import memory_batch

    lora = RunConfig(finetune="lora", max_length=64, clipping="hooks")
    assert memory_batch(lora, 256) == (16, True)  # 1024 tokens ÷ 64
    assert memory_batch(RunConfig(finetune="lora", max_length=64, batch_tokens=0), 256) == (
        256, True)
    assert memory_batch(RunConfig(finetune="full", clipping="ghost"), 256) == (256, False)
    assert memory_batch(RunConfig(finetune="full", clipping="hooks", batch_tokens=0), 256) == (
        256, True)
    assert memory_batch(RunConfig(finetune="lora", dp=False), 32) == (32, False)
    people = RunConfig(finetune="lora", max_length=64, max_rows_per_person=4)
    assert memory_batch(people, 50, per_person=True) == (200, True)
    assert memory_batch(RunConfig(finetune="head", max_rows_per_person=4), 50,
                        per_person=True) == (50, False)
