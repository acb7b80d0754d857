"""server.held_out: the coordinator scores the shared model on a file it holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import protocol as P
from common.config import RunConfig
from common.errors import ConfigError, DataError
from common.model.factory import build_model, trainable_state
from server.evaluation import summarize_held_out
from server.held_out import HeldOutSet


def test_empty_setting_means_no_held_out_set():
    assert HeldOutSet.load(RunConfig(), ("a", "b")) is None


def test_missing_file_is_refused_before_the_run(tmp_path: Path):
    config = RunConfig(labels="neg,pos", server_eval_data=str(tmp_path / "nope.csv"))
    with pytest.raises(ConfigError, match="server-eval-data = .*nope.csv.*no such file"):
        HeldOutSet.load(config, config.label_list)


def test_a_label_outside_the_run_is_a_data_error(tiny_bert: str, sentiment_csv: Path):
    config = RunConfig(base_model=tiny_bert, labels="neg,other",
                       server_eval_data=str(sentiment_csv))
    with pytest.raises(DataError, match="reviews.csv"):
        HeldOutSet.load(config, config.label_list)


def test_scores_the_shared_weights_like_a_partner(tiny_bert: str, sentiment_csv: Path):
    config = RunConfig(base_model=tiny_bert, labels="neg,pos", max_length=16,
                       server_eval_data=str(sentiment_csv))
    held = HeldOutSet.load(config, config.label_list)
    assert held is not None
    metrics = held.evaluate(trainable_state(build_model(config, config.label_list)))
    assert metrics[P.NUM_EXAMPLES] == 40  # the whole file: nothing is held back for training
    right = metrics["tp/neg"] + metrics["tp/pos"]
    assert right == round(metrics[P.ACCURACY] * 40)
    assert metrics["tp/pos"] + metrics["fn/pos"] == 20  # 20 positive rows in the fixture
    line = summarize_held_out(metrics, "reviews.csv")
    assert line["source"] == "reviews.csv" and line["num_examples"] == 40
    assert line["accuracy"] == metrics[P.ACCURACY] and "tp/neg" not in line
    assert line["per_class"]["pos"]["support"] == 20


def test_simulate_preflight_resolves_and_checks_the_file(tmp_path: Path, sentiment_csv: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from simulations.simulate import Federation, preflight

    monkeypatch.chdir(sentiment_csv.parent)
    base = dict(data=str(sentiment_csv), labels="neg,pos", out_dir=str(tmp_path / "out"))
    config = preflight(RunConfig(**base, server_eval_data="reviews.csv"), Federation(2))
    assert config.server_eval_data == str(sentiment_csv.resolve())  # relative -> absolute
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,neg\nodd,maybe\n")
    with pytest.raises(DataError, match="bad.csv:3"):
        preflight(RunConfig(**base, server_eval_data=str(bad)), Federation(2))
    assert not (tmp_path / "out").exists()  # nothing written
