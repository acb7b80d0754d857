"""Token classification (NER): CoNLL / JSONL reading, word-piece alignment, entity metrics, a DP
round on a tiny BERT, and the exported model in a plain transformers pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities

from client.data import PartnerSettings, partner_dataset
from client.partner import evaluate_round, train_round
from common import protocol as P
from common.tasks import synthetic_ner
from common.config import RunConfig
from common.errors import ConfigError, DataError
from common.evaluation.metrics import entity_count_metrics, entity_scores
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, load_tokenizer, load_trainable_state, trainable_state
from common.sources import run_labels
from common.tasks.tokens import (IGNORE, TokenDataset, align_labels, encode_tokens,
                           load_token_dataset, predicted_tags, read_sentences, tag_names, to_iob2)
from common.evaluation.scoring import evaluate_tokens
from common.training.loop import _loss

TOKEN_TASK = "token-classification"

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
Paris NNP B-NP B-LOC


"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_conll_docstart_blank_runs_and_trailing_blank_lines(tmp_path: Path) -> None:
    sentences = read_sentences(write(tmp_path, "a.conll", CONLL))
    assert sentences == [(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
                         (("Peter", "Blackburn"), ("B-PER", "I-PER")),
                         (("Paris",), ("B-LOC",))]
    # the tag column is selectable: 3 is the same as the last here; 2 holds chunk tags
    assert read_sentences(write(tmp_path, "b.txt", CONLL), tag_column=3) == sentences
    chunks = read_sentences(write(tmp_path, "c.txt", CONLL), tag_column=2)
    assert chunks[1][1] == ("B-NP", "I-NP")


def test_iob1_is_converted_to_iob2(tmp_path: Path) -> None:
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-LOC"]) == (
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-LOC")
    iob2 = ("B-PER", "I-PER", "B-PER", "O", "B-LOC")
    assert to_iob2(iob2) == iob2
    path = write(tmp_path, "iob1.tsv", "Peter\tI-PER\nBlackburn\tI-PER\nin\tO\nBonn\tI-LOC\n")
    data = load_token_dataset(path, tag_names(["PER", "LOC"]))
    assert data.tag_strings() == [["B-PER", "I-PER", "O", "B-LOC"]]


def test_tag_outside_the_label_set_names_file_line_and_tag(tmp_path: Path) -> None:
    path = write(tmp_path, "a.conll", CONLL)
    with pytest.raises(DataError, match=r"a\.conll:5: tag 'B-MISC'.*'MISC' is not in the run"):
        load_token_dataset(path, tag_names(["ORG", "PER", "LOC"]))
    with pytest.raises(DataError, match=r"b\.conll:2: tag 'PER' is not O, B-TYPE or I-TYPE"):
        read_sentences(write(tmp_path, "b.conll", "Peter B-PER\nSmith PER\n"))
    with pytest.raises(DataError, match=r"c\.conll:1: 2 columns, but tag-column is 3"):
        read_sentences(write(tmp_path, "c.conll", "Peter B-PER\n"), tag_column=3)
    with pytest.raises(DataError, match="no sentences"):
        read_sentences(write(tmp_path, "d.conll", "-DOCSTART- O\n\n\n"))


def test_jsonl_tokens_and_tags(tmp_path: Path) -> None:
    rows = [{"tokens": ["Peter", "left"], "tags": ["B-PER", "O"]}, {"tokens": [], "tags": []},
            {"words": ["Oslo"], "ner": ["I-LOC"]}]
    path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    assert read_sentences(path) == [(("Peter", "left"), ("B-PER", "O"))]
    other = write(tmp_path, "b.jsonl", json.dumps(rows[2]) + "\n")
    assert read_sentences(other, tokens_key="words", tags_key="ner") == [(("Oslo",), ("B-LOC",))]
    with pytest.raises(DataError, match=r"b\.jsonl:1: expected an object with lists"):
        read_sentences(other)
    bad = write(tmp_path, "c.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl:1: 2 tokens but 1 tags"):
        read_sentences(bad)


def test_label_convention_and_config_checks() -> None:
    assert tag_names(["PER", "ORG"]) == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG")
    config = RunConfig(task=TOKEN_TASK, labels="PER,ORG")
    assert run_labels(config, partner_has_own_data=True) == tag_names(["PER", "ORG"])
    assert run_labels(RunConfig(task=TOKEN_TASK)) == synthetic_ner.TAGS
    with pytest.raises(ConfigError, match="entity types"):
        RunConfig(task=TOKEN_TASK, labels="O,B-PER,I-PER")
    with pytest.raises(ConfigError, match="iid"):
        RunConfig(task=TOKEN_TASK, partition="dirichlet:0.5")
    with pytest.raises(ConfigError, match="declare the entity types"):
        run_labels(RunConfig(task=TOKEN_TASK), partner_has_own_data=True)


def ner_config(base: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(task=TOKEN_TASK, base_model=base, examples_per_partner=60, max_length=16,
                  batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=2,
                  out_dir=str(tmp_path / "out"),
                  ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def test_word_piece_alignment_against_hand_written_labels(ner_bert: str, tmp_path: Path) -> None:
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [5, 0, 3]) == [
        IGNORE, 5, IGNORE, 0, 3, IGNORE, IGNORE, IGNORE]
    tokenizer = load_tokenizer(ner_config(ner_bert, tmp_path))
    names = tag_names(["PER", "LOC"])  # O=0 B-PER=1 I-PER=2 B-LOC=3 I-LOC=4
    path = write(tmp_path, "a.conll", "johnson B-PER\nvisited O\nnew B-LOC\nyork I-LOC\n")
    encoded = encode_tokens(tokenizer, load_token_dataset(path, names), max_length=10)
    input_ids, mask, labels = encoded.tensors
    pieces = tokenizer.convert_ids_to_tokens(input_ids[0][: int(mask[0].sum())].tolist())
    assert pieces == ["[CLS]", "john", "##son", "visited", "new", "york", "[SEP]"]
    assert labels[0].tolist() == [IGNORE, 1, IGNORE, 0, 3, 4, IGNORE, IGNORE, IGNORE, IGNORE]


def test_token_loss_is_a_per_sentence_mean() -> None:
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE], [0, IGNORE, IGNORE, IGNORE]])
    ce = lambda b, t: -torch.log_softmax(logits[b, t], -1)[labels[b, t]]  # noqa: E731
    expected = ((ce(0, 1) + ce(0, 2)) / 2 + ce(1, 0)) / 2
    assert _loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_seqeval_scores_on_a_hand_computed_case() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    scores = entity_scores(gold, pred, ["PER", "ORG", "LOC", "MISC"])
    # gold: PER, LOC, ORG; predicted: PER, ORG (wrong span type), ORG -> 2 of 3 right both ways
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert scores.macro_f1 == pytest.approx((1 + 0 + 2 / 3) / 3)  # PER 1, LOC 0, ORG 2/3
    assert scores.token_accuracy == pytest.approx(5 / 6)
    assert scores.counts == {"PER": (1, 0, 0), "ORG": (1, 1, 0), "LOC": (0, 0, 1),
                             "MISC": (0, 0, 0)}
    assert entity_count_metrics(scores)["fp/ORG"] == 1.0


@pytest.mark.parametrize("finetune", ["lora", "head", "full", "bias"])
def test_dp_round_and_evaluation(ner_bert: str, tmp_path: Path, finetune: str) -> None:
    config = ner_config(ner_bert, tmp_path, finetune=finetune, learning_rate=1e-2)
    tags = run_labels(config)
    model = build_model(config, tags)
    assert model.config.id2label == dict(enumerate(tags))
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    partner = PartnerSettings(name="p0")
    reply = train_round(config, partner, shared, fingerprint, 1, "r")
    train, _ = partner_dataset(config, partner, tags)
    assert 0 < reply.metrics[P.EPSILON] < config.epsilon
    assert reply.metrics[P.NUM_EXAMPLES] == len(train)
    assert not all(np.array_equal(reply.arrays[k], shared[k]) for k in shared)
    metrics = evaluate_round(config, partner, reply.arrays, fingerprint, 1, "r")
    for key in (P.ACCURACY, P.MACRO_F1, P.ENTITY_F1, P.ENTITY_PRECISION, P.ENTITY_RECALL):
        assert 0.0 <= metrics[key] <= 1.0
    _, test = partner_dataset(config, partner, tags)
    gold_entities = sum(len(get_entities(s)) for s in test.tag_strings())
    assert sum(metrics[f"{k}/{t}"] for t in synthetic_ner.ENTITY_TYPES
               for k in ("tp", "fn")) == gold_entities


def test_exported_model_in_a_plain_pipeline_finds_our_entities(ner_bert: str,
                                                               tmp_path: Path) -> None:
    from transformers import pipeline

    from server.outputs import export_model

    config = ner_config(ner_bert, tmp_path, dp=False, local_epochs=3, learning_rate=3e-2)
    tags = run_labels(config)
    model = build_model(config, tags)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    partner = PartnerSettings(name="p0")
    arrays = train_round(config, partner, shared, fingerprint, 1, "r").arrays
    out = export_model(tmp_path, config, tags, arrays, {})
    _, test = partner_dataset(config, partner, tags)
    model = build_model(config, tags)
    load_trainable_state(model, arrays)
    # every demo word is one word piece, so "simple" (per sub-token) must agree with our
    # first-sub-token rule; "first" must agree also on words split into pieces (johnson)
    split = TokenDataset(tuple(("johnson", *w[1:]) for w in test.tokens[:8]), test.tags[:8], tags)
    for strategy, data in (("simple", test), ("first", split)):
        ours = predicted_tags(data, evaluate_tokens(
            model, encode_tokens(load_tokenizer(config), data, config.max_length)).predictions)
        ner = pipeline("token-classification", model=str(out), aggregation_strategy=strategy,
                       device="cpu")
        found = 0
        for words, predicted in zip(data.tokens, ours):
            text = " ".join(words)
            starts = np.cumsum([0] + [len(w) + 1 for w in words])
            expected = {(t, int(starts[a]), int(starts[b] + len(words[b])))
                        for t, a, b in get_entities(predicted)}
            theirs = {(e["entity_group"], e["start"], e["end"]) for e in ner(text)}
            assert theirs == expected, (strategy, text)
            found += len(expected)
        assert found > 0  # the comparison covered real entities
    card = (out / "README.md").read_text(encoding="utf-8")  # the model card, for this task
    assert "pipeline_tag: token-classification" in card and "- Task: token-classification" in card
    assert f"- Labels (id = position): {', '.join(tags)}" in card
