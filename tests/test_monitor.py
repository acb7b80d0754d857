"""client.monitor (`consortium partner evaluate`) on a token-classification release: entity F1
by the task's own evaluate, calibration over the tagged words. (Text-classification and the
malformed-file error: tests/test_release.py, on a release of a real run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.monitor import MonitorRequest, evaluate_release
from common.config import RunConfig
from common.errors import ConfigError
from common.model.factory import build_model, load_tokenizer, load_trainable_state, trainable_state
from common.sources import run_labels
from common.tasks import get_task

SENTENCES = [(["anna", "visited", "paris"], ["B-PER", "O", "B-LOC"]),
             (["the", "movie", "was", "good"], ["O", "O", "O", "O"]),
             (["paris", "and", "anna"], ["B-LOC", "O", "B-PER"])]


def test_token_classification_release(tiny_bert: str, tmp_path: Path) -> None:
    from server.outputs import export_model

    config = RunConfig(task="token-classification", base_model=tiny_bert, labels="PER,LOC",
                       max_length=16, finetune="head", dp=False, out_dir=str(tmp_path))
    tags = run_labels(config)
    arrays = trainable_state(build_model(config, tags))
    model_dir = export_model(tmp_path, config, tags, arrays, {"partners": {}})
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in SENTENCES))
    out, report = evaluate_release(MonitorRequest(model_dir, data, out=tmp_path / "report"))
    model = build_model(config, tags)
    load_trainable_state(model, arrays)
    task = get_task(config.task)
    own = task.evaluate(model, load_tokenizer(config), task.read(data, config, tags),
                        config.max_length)
    assert report["metric"] == "entity-f1"
    assert report["value"] == pytest.approx(own["entity-f1"])
    assert report["calibration"]["scored"] == "tagged words"
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 10  # every word
    assert set(report["per_class"]) == {"PER", "LOC"}  # entity types, as the task counts
    assert (out / "monitoring.json").is_file() and (out / "monitoring.md").is_file()
    with pytest.raises(ConfigError, match="group-column = 'site': token-classification"):
        evaluate_release(MonitorRequest(model_dir, data, group_column="site"))
