"""A token warm start keeps its tagger head, and a run starts from that head only when its tags
are the head's, in order (`--label-map` renames public entity types to the federation's). A
base model whose head is for other labels gets a fresh head, never a silently reused one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from common.config import RunConfig
from common.errors import ConfigError
from common.model.factory import build_model
from common.model.warm_start import LINEAGE_FILE
from common.tasks.synthetic_ner import synthetic_ner_data
from common.tasks.tokens import (TokenDataset, encode_tokens, parse_type_map, remap_types,
                                 tag_names)
from simulations.cli import main

PUBLIC_TYPES = {"LOC": "place", "ORG": "company", "PER": "person"}  # the public set's own names
LABEL_MAP = "place=LOC,company=ORG,person=PER"


def public_conll(path: Path, rows: int = 80) -> Path:
    """Synthetic NER sentences whose entity types carry the public set's own names."""
    data = synthetic_ner_data(5, rows, seed=3)
    lines = []
    for words, tags in zip(data.tokens, data.tag_strings()):
        lines += [f"{w} {t if t == 'O' else t[:2] + PUBLIC_TYPES[t[2:]]}"
                  for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def tagger(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("warm-tagger")
    public, out = public_conll(root / "public.conll"), root / "warm-tagger"
    assert main(["warm-start", "--public-data", str(public), "--task", "token-classification",
                 "--label-map", LABEL_MAP, "--base-model", tiny_bert, "--out", str(out),
                 "--max-length", "16", "--epochs", "2", "--learning-rate", "1e-3"]) == 0
    return out, public


def run_on(base: Path | str, labels: str) -> RunConfig:
    return RunConfig(task="token-classification", base_model=str(base), labels=labels,
                     finetune="lora", lora_freeze_a=True, max_length=16)


def logits(model: torch.nn.Module, base: Path) -> torch.Tensor:
    data = synthetic_ner_data(9, 8, seed=4)
    batch = encode_tokens(AutoTokenizer.from_pretrained(base), data, 16).tensors
    with torch.no_grad():
        return model.eval()(input_ids=batch[0], attention_mask=batch[1]).logits


def test_type_maps_are_parsed_strictly() -> None:
    assert parse_type_map("person=PER, Disease=O") == {"person": "PER", "Disease": "O"}
    for bad in ("person", "person=", "=PER", "person=PER,person=ORG", " , "):
        with pytest.raises(ConfigError, match="--label-map"):
            parse_type_map(bad)


def test_remapping_renames_merges_and_drops_types() -> None:
    names = tag_names(("person", "group", "corporation", "Disease"))
    ids = {n: i for i, n in enumerate(names)}
    words = ("Ann", "of", "Acme", "Inc", "has", "flu", "and", "the", "Jets")
    tags = ("B-person", "O", "B-corporation", "I-corporation", "O", "B-Disease", "O", "O",
            "B-group")
    data = TokenDataset((words,), (tuple(ids[t] for t in tags),), names)
    out = remap_types(data, parse_type_map("person=PER,group=ORG,corporation=ORG,Disease=O"))
    assert out.label_names == tag_names(("ORG", "PER"))
    assert out.tag_strings() == [["B-PER", "O", "B-ORG", "I-ORG", "O", "O", "O", "O", "B-ORG"]]
    with pytest.raises(ConfigError, match=r"\['Disease'\]"):
        remap_types(data, parse_type_map("person=PER,group=ORG,corporation=ORG"))


def test_a_run_with_the_heads_tags_starts_from_the_warm_started_tagger(tagger) -> None:
    out, public = tagger
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    assert lineage["head"] == list(tag_names(("LOC", "ORG", "PER")))
    assert lineage["label_map"] == LABEL_MAP and lineage["public_data"][0]["path"] == str(
        public.resolve())
    assert "Tagger head kept for the tags O, B-LOC" in (out / "README.md").read_text()
    saved = AutoModelForTokenClassification.from_pretrained(out)
    # the run's model, before any training, answers as the warm-started tagger does
    kept = build_model(run_on(out, "LOC,ORG,PER"), tag_names(("LOC", "ORG", "PER")))
    assert torch.allclose(logits(kept, out), logits(saved, out), atol=1e-5)
    # the tagger learnt something on the public rows: it is not a fresh head's guess
    assert logits(saved, out).argmax(-1).unique().numel() > 1


def test_a_run_with_other_tags_or_order_gets_a_fresh_head(tagger) -> None:
    out, _ = tagger
    saved = AutoModelForTokenClassification.from_pretrained(out).classifier.weight
    reordered = tag_names(("PER", "ORG", "LOC"))  # same size, same types, another order
    first = build_model(run_on(out, "PER,ORG,LOC"), reordered)
    again = build_model(run_on(out, "PER,ORG,LOC"), reordered)
    head = first.base_model.model.classifier.modules_to_save["default"].weight
    assert head.shape == saved.shape and not torch.allclose(head, saved)
    # seeded: every partner and the coordinator draw the same fresh head
    assert torch.equal(head, again.base_model.model.classifier.modules_to_save["default"].weight)


def test_a_run_with_another_number_of_tags_loads_and_gets_a_fresh_head(tagger) -> None:
    """Before the fix a run whose tag count differs from the kept head's (CoNLL's 9 on a
    warm start with WNUT's 13) failed to load the base model at all."""
    out, _ = tagger
    fewer = tag_names(("LOC", "PER"))
    model = build_model(run_on(out, "LOC,PER"), fewer)
    head = model.base_model.model.classifier.modules_to_save["default"].weight
    assert head.shape[0] == len(fewer) and head.std() < 0.2  # fresh, at initializer_range
    saved = AutoModelForTokenClassification.from_pretrained(out)
    assert torch.equal(model.base_model.model.bert.embeddings.word_embeddings.weight,
                       saved.bert.embeddings.word_embeddings.weight)  # the encoder is kept


def test_a_checkpoint_head_for_other_labels_is_never_reused(tiny_bert: str,
                                                            tmp_path: Path) -> None:
    """Before the fix transformers loaded any head whose shape fit: a NER checkpoint for
    PER/ORG/LOC started a LOC/ORG/PER run with its rows swapped."""
    other = AutoModelForTokenClassification.from_pretrained(
        tiny_bert, num_labels=7, id2label=dict(enumerate(tag_names(("PER", "ORG", "LOC")))))
    torch.nn.init.normal_(other.classifier.weight, std=1.0)
    other.save_pretrained(tmp_path / "ner-checkpoint")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "ner-checkpoint")
    config = run_on(tmp_path / "ner-checkpoint", "LOC,ORG,PER").replace(finetune="head")
    model = build_model(config, tag_names(("LOC", "ORG", "PER")))
    assert not torch.allclose(model.classifier.weight, other.classifier.weight)
    assert model.classifier.weight.std() < 0.2  # a fresh head at initializer_range


def test_a_type_the_map_leaves_out_is_one_line_and_nothing_is_written(
        tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public, out = public_conll(tmp_path / "public.conll", rows=20), tmp_path / "warm"
    assert main(["warm-start", "--public-data", str(public), "--task", "token-classification",
                 "--label-map", "place=LOC,person=PER", "--base-model", tiny_bert,
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and "['company']" in errors[0]
    assert main(["warm-start", "--public-data", str(public), "--label-map", "a=b",
                 "--base-model", tiny_bert, "--out", str(out)]) == 2
    assert "needs --task token-classification" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public.conll"]
