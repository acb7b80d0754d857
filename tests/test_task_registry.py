"""common.tasks: a task is one registered class. A third task, declared only in this file, runs a
partner's DP round and evaluation; an unknown name is a clear error; and nothing outside the task
modules branches on a task's name."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from client.data import PartnerSettings, partner_dataset
from client.partner import evaluate_round, train_round
from common import protocol as P
from common.data import synthetic
from common.config import RunConfig
from common.data.text import TextDataset
from common.errors import ConfigError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.sources import run_labels
from common.tasks import get_task, register_task, task_names
from common.tasks.text_classification import TextClassification
from server.evaluation import main_metric, summarize_round

ROOT = Path(__file__).resolve().parent.parent
BALANCED_ACCURACY = "balanced-accuracy"


class BusinessOrNot(TextClassification):
    """Two labels: is a text of the embedded demo about business? Read on balanced accuracy (the
    mean recall of the labels present), from the counts every classification reports."""

    name = "business-or-not"
    auto_finetune = "head"
    main_metric = BALANCED_ACCURACY
    declares = ("the two labels", "other,business")
    demo_name = "business data set"
    LABELS = ("other", "business")

    def demo_labels(self) -> tuple[str, ...]:
        return self.LABELS

    def demo_data(self, partner_id: int, config, labels: Sequence[str]) -> TextDataset:
        if tuple(labels) != self.LABELS:
            raise ConfigError(f"labels {list(labels)} do not match {list(self.LABELS)}")
        topics = synthetic.synthetic_partner_data(partner_id, config.examples_per_partner,
                                                  config.seed)
        business = synthetic.LABELS.index("business")
        return TextDataset(topics.texts, tuple(int(y == business) for y in topics.labels),
                           self.LABELS)

    def evaluate(self, model, tokenizer, data, max_length: int,
                 min_group_size: int = 1) -> dict[str, float]:
        metrics = super().evaluate(model, tokenizer, data, max_length, min_group_size)
        counts = [(metrics[f"{P.TRUE_POSITIVES}/{label}"],
                   metrics[f"{P.FALSE_NEGATIVES}/{label}"]) for label in data.label_names]
        recalls = [tp / (tp + fn) for tp, fn in counts if tp + fn > 0]
        return {**metrics, BALANCED_ACCURACY: float(np.mean(recalls))}


TOY = register_task(BusinessOrNot())


def toy_config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(task=TOY.name, base_model=tiny_bert, examples_per_partner=80, max_length=16,
                  batch_size=8, dp_plan_check=False, local_epochs=1, num_rounds=2,
                  learning_rate=1e-2, out_dir=str(tmp_path / "out"),
                  ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def test_a_third_task_runs_a_partner_round(tiny_bert: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = toy_config(tiny_bert, tmp_path)
    assert config.finetune == "head"  # the task's own "auto"
    labels = run_labels(config)
    assert labels == ("other", "business")
    model = build_model(config, labels)
    assert type(model).__name__ == "BertForSequenceClassification"  # the task's auto class
    assert model.config.id2label == {0: "other", 1: "business"}
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    losses: list[int] = []  # DP-SGD clips the task's own per-example loss

    def per_example_loss(logits, labels):
        losses.append(len(labels))
        return BusinessOrNot.per_example_loss(TOY, logits, labels)

    monkeypatch.setattr(TOY, "per_example_loss", per_example_loss)
    partner = PartnerSettings(name="p0")
    reply = train_round(config, partner, shared, fingerprint, 1, "r")
    train, test = partner_dataset(config, partner, labels)
    assert set(train.labels) == {0, 1} and len(train) + len(test) == 80
    assert losses and reply.metrics[P.NUM_EXAMPLES] == len(train)
    assert 0 < reply.metrics[P.EPSILON] < config.epsilon
    assert not all(np.array_equal(reply.arrays[k], shared[k]) for k in shared)

    metrics = evaluate_round(config, partner, reply.arrays, fingerprint, 1, "r")
    assert metrics[P.NUM_EXAMPLES] == len(test)
    truth = np.asarray(test.labels)
    right = [metrics[f"tp/{label}"] for label in labels]  # tp per label = right answers in it
    expected = np.mean([r / np.sum(truth == c) for c, r in enumerate(right)])
    assert metrics[BALANCED_ACCURACY] == pytest.approx(expected)
    line = summarize_round({"p0": metrics}, main_metric(config.task))
    assert line["eval_metric"] == "balanced_accuracy"
    assert line["eval_worst"]["value"] == pytest.approx(expected)
    assert set(line["eval_per_class"]) == {"other", "business"}


def test_a_third_task_checks_its_demo_labels(tiny_bert: str, tmp_path: Path) -> None:
    config = toy_config(tiny_bert, tmp_path, labels="a,b")
    with pytest.raises(ConfigError, match="embedded business data set has labels other,busi"):
        TOY.check_demo_labels(config)
    with pytest.raises(ConfigError, match=r"labels \['a', 'b'\] do not match"):
        partner_dataset(config, PartnerSettings(name="p0"), run_labels(config))
    with pytest.raises(ConfigError, match="fewer than 2"):
        toy_config(tiny_bert, tmp_path, labels="business")


def test_unknown_task_names_the_key_and_the_known_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"task": "translation"})
    message = str(info.value)
    assert "'task'" in message and "'translation'" in message
    for name in ("text-classification", "token-classification", TOY.name):
        assert name in message
    assert set(task_names()) >= {"text-classification", "token-classification", TOY.name}
    with pytest.raises(ConfigError, match="config key 'task' = 'qa' is not valid; pick one of"):
        get_task("qa")


def test_a_taken_name_cannot_be_registered_again() -> None:
    class Impostor(TextClassification):
        name = TOY.name

    with pytest.raises(ValueError, match="already registered"):
        register_task(Impostor())
    assert get_task(TOY.name) is TOY


PACKAGES = ("common", "client", "server", "simulations", "benchmarks")
TASK_MODULES = ROOT / "common" / "tasks"
DATA_MODULES = {ROOT / "common" / "data" / "text.py", ROOT / "common" / "tasks" / "tokens.py"}
DATA_CLASSES = {"TextDataset", "TokenDataset"}
TASK_CONSTANTS = {"TEXT_TASK", "TOKEN_TASK", "TASKS"}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _is_task(node: ast.AST) -> bool:
    """A task's name: a registered name as a literal, a TEXT_TASK-like constant, or `x.task`."""
    if isinstance(node, ast.Constant):
        return node.value in task_names()
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task(e) for e in node.elts)
    return _name(node) in TASK_CONSTANTS | {"task"}


def task_branches(path: Path, root: Path = ROOT) -> list[str]:
    """Where a file decides on a task's name: a comparison or `in` with one, a dict keyed by
    one, a `match` on one, or an isinstance check on a data class (outside the data modules)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare) and any(map(_is_task, [node.left, *node.comparators])):
            found.append(f"{where}: compares a task name")
        elif isinstance(node, ast.Dict) and any(k is not None and _is_task(k) for k in node.keys):
            found.append(f"{where}: a dict keyed by task name")
        elif isinstance(node, ast.Match) and _is_task(node.subject):
            found.append(f"{where}: a match on the task")
        elif (isinstance(node, ast.Call) and _name(node.func) in ("isinstance", "issubclass")
              and path not in DATA_MODULES and len(node.args) == 2
              and ({_name(node.args[1])} | {_name(e) for e in getattr(node.args[1], "elts", [])})
              & DATA_CLASSES):
            found.append(f"{where}: an isinstance check on a task's data")
    return found


def test_no_branch_on_a_task_name_outside_the_task_modules() -> None:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
             if TASK_MODULES not in p.parents]
    assert len(files) > 30
    found = [line for path in files for line in task_branches(path)]
    assert not found, "\n".join(found)


def test_the_branch_finder_sees_each_kind(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("if config.task == TOKEN_TASK: pass\n"
                      "if 'token-classification' != name: pass\n"
                      "METRIC = {'text-classification': 'accuracy'}\n"
                      "if isinstance(data, TokenDataset): pass\n"
                      "ok = config.finetune == 'head'\n")
    found = task_branches(source, tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "compares a task name", "compares a task name", "a dict keyed by task name",
        "an isinstance check on a task's data"]
