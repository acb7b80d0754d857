"""The issue-12 benchmarks' own logic: reading an arm, the AG News and CoNLL-2003 loaders. (The σ a
linear-probe-then-LoRA arm shares is checked in each result: its row records the ε Opacus'
accountant gives for the history actually run.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.encoder_recipe import parse_arm
from benchmarks.utility import DATASETS, agnews_rows, conll_sentences, final_score, write_conll
from common.tasks.tokens import read_sentences


def test_an_arm_reads_its_keys_and_refuses_unknown_ones() -> None:
    arm = parse_arm("pooled-lora:r2:lr3e-3:eps8:lp2:ffa1:b1000:ep1")
    assert arm == {"mode": "pooled-lora", "r": 2, "lr": 3e-3, "eps": 8.0, "lp": 2, "ffa": 1,
                   "b": 1000, "ep": 1}
    assert parse_arm("full:epsinf")["eps"] == float("inf")
    assert parse_arm("pooled-lora")["lr"] == 1e-2  # the planner's DP default
    with pytest.raises(SystemExit, match="cannot read 'x3'"):
        parse_arm("pooled-lora:x3")


def test_ag_news_rows_sample_train_and_the_official_test(tmp_path: Path) -> None:
    names = DATASETS["agnews"]["labels"].split(",")
    rows = [f"headline {i}  with  spaces\t{names[i % 4]}" for i in range(40)]
    (tmp_path / "train_subset10k.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.tsv").write_text("\n".join(r.replace("headline", "test") for r in rows))
    train, held = agnews_rows(tmp_path, 30, 10, seed=1)
    assert len(train) == 30 and len(held) == 10
    assert {label for _, label, _ in train + held} <= set(names)
    assert all(t.startswith("headline") and "  " not in t for t, _, _ in train)
    assert all(t.startswith("test") for t, _, _ in held)
    assert agnews_rows(tmp_path, 30, 10, seed=1) == (train, held)  # seeded


def test_probe_and_ffa_arms_need_adapters() -> None:
    with pytest.raises(SystemExit, match="lp needs pooled-lora"):
        parse_arm("full:lp2")
    assert parse_arm("lora:ffa1")["ffa"] == 1


def test_conll_rows_sample_both_files_and_round_trip(tmp_path: Path) -> None:
    def sentence(i: int) -> str:
        return (f"-DOCSTART- -X- -X- O\n\nw{i} NNP B-NP B-PER\nsaid VBD B-VP O\n"
                "Paris NNP B-NP I-LOC\n")
    (tmp_path / "train.txt").write_text("\n".join(sentence(i) for i in range(12)))
    (tmp_path / "test.txt").write_text("\n".join(sentence(100 + i) for i in range(6)))
    train, held = conll_sentences(tmp_path, 5, 4, seed=3)
    assert len(train) == 5 and len(held) == 4
    assert all(words[0].startswith("w") and int(words[0][1:]) < 12 for words, _ in train)
    assert all(int(words[0][1:]) >= 100 for words, _ in held)
    assert tuple(train[0][1]) == ("B-PER", "O", "B-LOC")  # IOB1 read as IOB2
    write_conll(train, tmp_path / "out.conll")
    assert read_sentences(tmp_path / "out.conll") == train


def test_an_arm_is_scored_by_its_main_metric() -> None:
    assert final_score({"final_score": 0.7, "final_accuracy": 0.9}) == 0.7  # entity F1
    assert final_score({"final_accuracy": 0.8}) == 0.8  # results written before entity F1


def test_layer_feature_views_train_a_dp_head_that_learns() -> None:
    """benchmarks.layer_features: each view's width, and its DP and non-private arms learn a
    separable toy task (the label is in layer 3 only: the last-layer view cannot see it)."""
    import torch
    from torch.utils.data import TensorDataset

    from benchmarks.harness import Arm
    from benchmarks.layer_features import VIEWS, measure

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (600,), generator=generator)
    x = torch.randn(600, 9, 4, generator=generator) * 0.1  # 7 layers' means, max, [CLS]
    x[:, 3, 0] += (labels * 2 - 1).float()
    train, dev = TensorDataset(x[:400], labels[:400]), TensorDataset(x[400:], labels[400:])
    assert {v: VIEWS[v](x).shape[1] for v in VIEWS} == {
        "last": 4, "average": 4, "concat": 24, "max": 4, "mean+max": 8, "mean+cls": 8}
    assert torch.equal(VIEWS["mean+max"](x), torch.cat([x[:, 6], x[:, 7]], dim=1))
    assert torch.equal(VIEWS["mean+cls"](x), torch.cat([x[:, 6], x[:, 8]], dim=1))
    rows = {(v, e): measure(train, dev, 1, Arm(v, {"view": v, "n": 400, "epsilon": e}))
            for v, e in (("last", 8.0), ("concat", 8.0), ("concat", None))}
    assert rows[("concat", 8.0)]["trainable"] == 24 * 2 + 2 and "batch" in rows[("concat", 8.0)]
    assert rows[("concat", 8.0)]["accuracy"] > 0.9 and rows[("concat", None)]["accuracy"] > 0.9
    assert rows[("last", 8.0)]["accuracy"] < 0.7
