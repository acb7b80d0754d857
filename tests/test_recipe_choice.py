"""`consortium choose-recipe` and finetune = auto (issue 32 item 2): the recipe is measured on
public data for the base model at hand, the best one is written beside the model, and
finetune = auto takes it for that task only; nothing is spent on any ledger outside the scratch
folder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from common.config import RunConfig
from common.errors import ConfigError
from common.tasks.recipes import RECIPE_FILE
from simulations.cli import main as cli_main


def _public(tmp_path: Path) -> Path:
    rows = ["text,label"] + [
        f"review {i} was {'great good fine' if i % 2 else 'awful bad poor'},{'pos' if i % 2 else 'neg'}"
        for i in range(120)]
    path = tmp_path / "public.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _model(tiny_bert: str, tmp_path: Path) -> Path:
    """A copy: the shared tiny BERT must not carry a recipe into other tests."""
    return Path(shutil.copytree(tiny_bert, tmp_path / "model"))


def test_the_measured_best_recipe_is_what_auto_becomes(tiny_bert: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    model = _model(tiny_bert, tmp_path)
    args = ["choose-recipe", "--public-data", str(_public(tmp_path)), "--base-model", str(model),
            "--partners", "2", "--rounds", "1", "--candidates", "pooled-head,ffa-lora-top1",
            "--set", "max-length=16", "--set", "dp-plan-check=false", "--set", "batch-size=16",
            "--write", "--out", str(tmp_path / "record.json")]
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "record.json").read_text())["choice"]
    record = json.loads((model / RECIPE_FILE).read_text())["recipes"]["text-classification"]
    scores = {name: m["score"] for name, m in record["measured"].items()}
    assert sorted(scores) == ["ffa-lora-top1", "pooled-head"]
    assert scores[record["choice"]] == max(scores.values())  # a tie: the cheaper, listed first
    assert record["epsilon_spent"].startswith("none") and record["public_data"]["sha256"]
    assert f"choice: {record['choice']}" in capsys.readouterr().out
    chosen = RunConfig(base_model=str(model), labels="neg,pos")
    assert chosen.finetune == record["keys"]["finetune"]
    assert chosen.lora_layers == record["keys"].get("lora-layers", 0)
    # another task, an explicit finetune, a model without the file: untouched
    assert RunConfig(base_model=str(model), task="token-classification").finetune == "head"
    assert RunConfig(base_model=str(model), finetune="lora").lora_layers == 0
    assert RunConfig(base_model=tiny_bert).finetune == "pooled-head"
    assert not list(tmp_path.rglob("*@*.json"))  # no ledger left anywhere: no ε to account


def test_auto_keeps_a_key_the_run_sets_itself(tiny_bert: str, tmp_path: Path) -> None:
    model = _model(tiny_bert, tmp_path)
    (model / RECIPE_FILE).write_text(json.dumps({"recipes": {"text-classification": {
        "keys": {"finetune": "pooled-lora", "lora-freeze-a": True, "lora-layers": 1}}}}))
    config = RunConfig(base_model=str(model), lora_layers=2)
    assert (config.finetune, config.lora_freeze_a, config.lora_layers) == ("pooled-lora", True, 2)


@pytest.mark.parametrize("body, said", [
    ("not json", "not a measured recipe"),
    (json.dumps({"recipes": {"text-classification": {"keys": {"finetune": "auto"}}}}),
     "a recipe sets finetune"),
    (json.dumps({"recipes": {"text-classification": {
        "keys": {"finetune": "lora", "epsilon": 100}}}}), "only ['finetune'"),
    (json.dumps({"recipes": []}), "not a measured recipe"),
])
def test_a_bad_recipe_file_is_named(tiny_bert: str, tmp_path: Path, body: str,
                                    said: str) -> None:
    model = _model(tiny_bert, tmp_path)
    (model / RECIPE_FILE).write_text(body)
    with pytest.raises(ConfigError, match=re.escape(said)) as err:
        RunConfig(base_model=str(model))
    assert RECIPE_FILE in str(err.value)


def test_bad_arguments_write_nothing(tiny_bert: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    model = _model(tiny_bert, tmp_path)
    for args, said in [
        (["--public-data", str(tmp_path / "missing.csv"), "--base-model", str(model)],
         "is not a file"),
        (["--public-data", str(_public(tmp_path)), "--base-model", str(model),
          "--candidates", "prefix-tuning"], "unknown for text-classification"),
        (["--public-data", str(_public(tmp_path)), "--write"], "not a local directory"),
    ]:
        assert cli_main(["choose-recipe", *args]) == 2
        assert said in capsys.readouterr().err
    assert not (model / RECIPE_FILE).exists()


def test_recipes_the_planner_refuses_are_not_chosen(tiny_bert: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """At ε = 0.05 on 60 rows a partner, no recipe can learn: each is recorded as refused, and
    the command ends in one line that lists them, writing nothing."""
    model = _model(tiny_bert, tmp_path)
    args = ["choose-recipe", "--public-data", str(_public(tmp_path)), "--base-model", str(model),
            "--partners", "2", "--rounds", "1", "--epsilon", "0.05", "--candidates",
            "pooled-head,ffa-lora-top1", "--set", "max-length=16", "--write"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "every candidate was refused: pooled-head:" in err and "ffa-lora-top1:" in err
    assert not (model / RECIPE_FILE).exists()


def test_a_config_error_stops_the_choice_at_once(tiny_bert: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigError (e.g. the public file is the one that warm-started the model) is no
    refused candidate: the same for all, so the command stops at the first, writing nothing."""
    import simulations.recipe_choice as recipe_choice

    calls = []

    def refuse(grid, config):
        calls.append(config.finetune)
        raise ConfigError("data = 'x.csv' is the public file that warm-started base-model")

    monkeypatch.setattr(recipe_choice.coordinator, "run_federation", refuse)
    model = _model(tiny_bert, tmp_path)
    assert cli_main(["choose-recipe", "--public-data", str(_public(tmp_path)), "--base-model",
                     str(model), "--write"]) == 2
    assert "choose-recipe: data = 'x.csv' is the public file" in capsys.readouterr().err
    assert calls == ["pooled-head"] and not (model / RECIPE_FILE).exists()
