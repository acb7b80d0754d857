"""The exported model predicts the same however it is loaded: for every finetune mode and task,
each loader the model card names gives the coordinator's own predictions on 50 texts, and the
coordinator's score on its server-eval-data file is reproduced from the export; a loader that
cannot reproduce the model refuses it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import get_entities

from client.data import PartnerSettings
from client.partner import train_round
from common import protocol as P
from common.data import synthetic
from common.tasks import synthetic_ner
from common.config import RunConfig
from common.model.export import Predictor, loaders
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.sources import run_labels
from server.held_out import HeldOutSet
from server.outputs import export_model

TEXT, TOKEN = "text-classification", "token-classification"
CASES = [(TEXT, f) for f in ("pooled-head", "pooled-lora", "head", "lora", "full", "bias")] + \
        [(TOKEN, f) for f in ("head", "lora", "full", "bias")]
N_TEXTS = 50
LEARNING_RATE = {"pooled-head": 0.3, "pooled-lora": 0.3, "full": 3e-3}  # else 3e-2: they learn


def eval_file(task: str, directory: Path) -> Path:
    """50 labelled examples the partners never see (another synthetic partner's)."""
    if task == TEXT:
        data = synthetic.synthetic_partner_data(50, N_TEXTS, seed=7)
        path = directory / "coordinator_eval.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((t, data.label_names[y]) for t, y in zip(data.texts, data.labels))
        return path
    data = synthetic_ner.synthetic_ner_data(50, N_TEXTS, seed=7)
    path = directory / "coordinator_eval.conll"
    path.write_text("\n\n".join("\n".join(f"{w} {tag}" for w, tag in zip(words, tags))
                                for words, tags in zip(data.tokens, data.tag_strings())) + "\n")
    return path


def trained_export(task: str, finetune: str, base: str, tmp_path: Path):
    """One partner round (no DP: the export is what is tested), the coordinator's own
    evaluation of the result on server-eval-data, and the exported directory."""
    config = RunConfig(task=task, finetune=finetune, base_model=base, examples_per_partner=200,
                       max_length=16, batch_size=8, dp=False, local_epochs=2,
                       learning_rate=LEARNING_RATE.get(finetune, 3e-2), num_rounds=1, lora_r=4,
                       server_eval_data=str(eval_file(task, tmp_path)),
                       out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    labels = run_labels(config)
    model = build_model(config, labels)
    arrays = train_round(config, PartnerSettings(name="p0"), trainable_state(model),
                         frozen_fingerprint(model), 1, "r").arrays
    held_out = HeldOutSet.load(config, labels)
    coordinator = held_out.evaluate(arrays)
    out = export_model(tmp_path, config, labels, arrays, {})
    return config, held_out.data, coordinator, out


def card_loaders(out: Path) -> list[str]:
    """The loaders the model card names, by name."""
    card = (out / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^  - ([\w-]+): `", card, flags=re.MULTILINE)


def text_labels_by(loader: str, out: Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) per text, as ``loader`` gives them."""
    import torch

    if loader == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        names = Predictor(out).labels
        logits = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
        best = torch.softmax(logits.float(), -1).max(-1)
        return [(names[int(i)], float(p)) for p, i in zip(best.values, best.indices)]
    if loader == "transformers-pipeline":
        from transformers import pipeline

        trust = {"trust_remote_code": True} if "trust_remote_code" in str(
            [w.code for w in loaders(Predictor(out).finetune, TEXT)]) else {}
        pipe = pipeline(TEXT, model=str(out), device="cpu", **trust)
        return [(r["label"], r["score"]) for r in pipe(texts, truncation=True)]
    if loader == "AutoModelForSequenceClassification":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        enc = AutoTokenizer.from_pretrained(out)(texts, truncation=True, padding=True,
                                                 return_tensors="pt")
        with torch.no_grad():
            best = torch.softmax(model(**enc).logits, -1).max(-1)
        return [(model.config.id2label[int(i)], float(p))
                for p, i in zip(best.values, best.indices)]
    if loader == "consortium-predict":
        return [(p.label, p.score) for p in Predictor(out).predict(texts)]
    raise AssertionError(f"the card names a loader this test does not check: {loader}")


def entities_by(loader: str, out: Path, sentences: list[tuple[str, ...]]) -> list[set]:
    """Per sentence, the entities (type, first char, end char) in the joined text."""
    spans = []
    if loader == "transformers-pipeline":
        from transformers import pipeline

        ner = pipeline(TOKEN, model=str(out), aggregation_strategy="first", device="cpu")
        return [{(e["entity_group"], e["start"], e["end"]) for e in ner(" ".join(words))}
                for words in sentences]
    if loader in ("AutoModelForTokenClassification", "consortium-predict"):
        for words, p in zip(sentences, Predictor(out).predict(sentences)):
            starts = np.cumsum([0] + [len(w) + 1 for w in words])
            spans.append({(t, int(starts[a]), int(starts[b] + len(words[b])))
                          for t, a, b in get_entities(list(p.label))})
        return spans
    raise AssertionError(f"the card names a loader this test does not check: {loader}")


@pytest.mark.parametrize("task,finetune", CASES)
def test_every_loader_the_card_names_predicts_as_the_coordinator(
        task: str, finetune: str, tiny_bert: str, ner_bert: str, tmp_path: Path) -> None:
    config, data, coordinator, out = trained_export(
        task, finetune, tiny_bert if task == TEXT else ner_bert, tmp_path)
    named = card_loaders(out)
    assert named == [w.name for w in loaders(finetune, task)]
    if task == TEXT:
        texts = list(data.texts)
        results = {name: text_labels_by(name, out, texts)
                   for name in [*named, "consortium-predict"]}
        reference = results.pop("consortium-predict")
        scores = np.array([score for _, score in reference])
        assert scores.max() - scores.min() > 1e-4  # answers depend on the text
        for name, answers in results.items():
            assert [label for label, _ in answers] == [label for label, _ in reference], name
            np.testing.assert_allclose([score for _, score in answers], scores, atol=2e-6,
                                       err_msg=name)
        gold = [data.label_names[y] for y in data.labels]
        accuracy = np.mean([g == label for g, (label, _) in zip(gold, reference)])
        assert accuracy == pytest.approx(coordinator[P.ACCURACY], abs=1e-6)
    else:
        sentences = list(data.tokens)
        results = {name: entities_by(name, out, sentences)
                   for name in [*named, "consortium-predict"]}
        reference = results.pop("consortium-predict")
        assert sum(map(len, reference)) > 0  # real entities were compared
        for name, spans in results.items():
            assert spans == reference, name
        from common.evaluation.metrics import entity_scores

        predicted = [list(p.label) for p in Predictor(out).predict(sentences)]
        f1 = entity_scores(data.tag_strings(), predicted).f1
        assert f1 == pytest.approx(coordinator[P.ENTITY_F1], abs=1e-6)


def test_a_pooled_model_is_refused_by_loaders_that_cannot_reproduce_it(
        tiny_bert: str, tmp_path: Path) -> None:
    from transformers import pipeline

    _, _, _, out = trained_export(TEXT, "pooled-head", tiny_bert, tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline(TEXT, model=str(out))  # BERT's [CLS] pooler + a random classifier: never
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "library_name: sentence-transformers" in card and "widget:" not in card
    assert "Not `AutoModelForSequenceClassification`" in card


def test_consortium_predict_scores_a_labelled_file_as_the_coordinator(
        tiny_bert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    config, data, coordinator, out = trained_export(TEXT, "pooled-head", tiny_bert, tmp_path)
    capsys.readouterr()
    assert main(["predict", str(out), "--data", config.server_eval_data]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [p.label for p in Predictor(out).predict(data.texts)]
    assert printed.err.strip().splitlines()[-1] == (
        f"accuracy {coordinator[P.ACCURACY]:.6f} over {N_TEXTS} labelled rows")
    assert main(["predict", str(out), "--data", config.server_eval_data, "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["text"] for r in rows] == list(data.texts) and 0 < float(rows[0]["score"]) <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine words,business\n\"unclosed,health\n")
    assert main(["predict", str(out), "--data", str(bad)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1
    assert str(bad) in printed.err and "Traceback" not in printed.err
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\nfine words,weather\n")
    assert main(["predict", str(out), "--data", str(unknown)]) == 2
    assert "unknown.csv:2: label 'weather'" in capsys.readouterr().err
