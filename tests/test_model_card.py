"""server.model_card: the exported model's README.md says what a model user needs to know."""

from __future__ import annotations

from pathlib import Path

from common import protocol as P
from common.config import RunConfig
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS
from server.evaluation import summarize_round
from server.model_card import model_card
from server.outputs import export_model

REPORT = {"dp": True, "partners": {
    "hospital-a": {"epsilon": 7.912, "delta": 1e-5, "noise_multiplier": 0.93, "steps": 90,
                   "rounds_trained": 3, "examples": 480},
    "hospital-b": {"epsilon": 5.5, "delta": 1e-5, "noise_multiplier": 0.93, "steps": 60,
                   "rounds_trained": 2, "examples": 320}}}
FINAL = {"round": 3, **summarize_round({
    "hospital-a": {P.NUM_EXAMPLES: 120.0, P.ACCURACY: 0.85, "tp/neg": 50.0, "fp/neg": 10.0,
                   "fn/neg": 5.0, "tp/pos": 52.0, "fp/pos": 5.0, "fn/pos": 10.0},
    "hospital-b": {P.NUM_EXAMPLES: 80.0, P.ACCURACY: 0.60}}, P.ACCURACY)}


def test_model_card_content():
    config = RunConfig(num_rounds=3, labels="neg,pos", epsilon=8.0, finetune="lora")
    card = model_card(config, ("neg", "pos"), REPORT, FINAL)
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification")
    assert 'transformers-pipeline: `pipeline("text-classification", model=DIR)(texts, ' \
        'truncation=True)`' in card
    assert "AutoModelForSequenceClassification: `AutoModelForSequenceClassification." \
        "from_pretrained(DIR)`" in card
    assert 'widget:\n- text: "The striker' in card  # the hub's widget runs this pipeline
    assert "- Base model: sentence-transformers/all-MiniLM-L6-v2 (bundled copy)" in card
    assert "- Task: text-classification" in card
    assert "- Labels (id = position): neg, pos" in card
    assert "- Partners: 2" in card and "all partners together: 800" in card  # 480 + 320
    assert "| hospital-a | 7.912 | each example | 0.00001000 | 0.9300 | 90 | 3 |" in card
    assert "ε is per example" in card and "group" not in card
    assert "| hospital-b | 5.500 |" in card and "Target ε for the run: 8." in card
    # (0.85·120 + 0.60·80) / 200 = 0.75; worst 0.60; gap 0.25
    assert "| mean over partners (weighted by examples) | 0.7500 |" in card
    assert "| worst partner (hospital-b) | 0.6000 |" in card
    assert "| best partner (hospital-a) | 0.8500 |" in card
    assert "| fairness gap (best − worst) | 0.2500 |" in card
    # neg: P = 50/60, R = 50/55, F1 = 100/115; pos: P = 52/57, R = 52/62, F1 = 104/119
    assert "| neg | 0.8333 | 0.9091 | 0.8696 | 55 |" in card
    assert "| pos | 0.9123 | 0.8387 | 0.8739 | 62 |" in card
    assert "## Intended use and limits" in card


def test_model_card_without_dp_and_without_evaluation():
    card = model_card(RunConfig(dp=False, finetune="head"), LABELS, {"partners": {}}, None)
    assert "**without** differential privacy" in card and "ε = ∞" in card
    assert "No evaluation was recorded" in card and "classifier head only" in card


def test_model_card_cells_cannot_break_the_table():
    report = {"partners": {"a|b\nc": {"epsilon": 1.0, "delta": 1e-5}}}
    card = model_card(RunConfig(), LABELS, report, None)
    assert "| a\\|b c | 1.000 |" in card


def test_exported_model_directory_has_the_card(tiny_bert: str, tmp_path: Path):
    config = RunConfig(base_model=tiny_bert, labels="neg,pos", num_rounds=3)
    labels = config.label_list
    arrays = trainable_state(build_model(config, labels))
    out = export_model(tmp_path, config, labels, arrays, REPORT, FINAL)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"- Base model: {tiny_bert}" in card
    assert "| worst partner (hospital-b) | 0.6000 |" in card
    assert (out / "config.json").exists() and not list(tmp_path.glob(".*tmp"))


def test_pooled_head_card_says_how_to_load_it():
    plan = {"expected_batch": 256.0, "learning_rate": 0.01, "predicted_noise_to_signal": 0.11}
    report = {**REPORT, "partners": {"hospital-a": {**REPORT["partners"]["hospital-a"],
                                                    "plan": plan}}}
    card = model_card(RunConfig(labels="neg,pos"), ("neg", "pos"), report, FINAL)
    assert "| hospital-a | 256.0 | 0.0100 | 0.110 |" in card
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    assert "`SentenceTransformer(DIR).encode(texts).argmax(1)" in card and "mean Pooling" in card
    assert 'pipeline("text-classification", model=DIR, trust_remote_code=True)' in card
    assert "widget:" not in card  # the hub's widget would not run the directory's pipeline
