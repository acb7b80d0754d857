"""Run config `tracking`: each round's accuracy, loss and every partner's ε land in TensorBoard's
event files and in MLflow's local store, read back with each library's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import RunConfig
from common.errors import ConfigError
from server.tracking import MLFLOW_DB, TENSORBOARD_DIR, check_tracking, round_scalars


def _run(tiny_bert: str, tmp_path: Path, tracking: str) -> tuple[Path, list[dict]]:
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    config = RunConfig(base_model=tiny_bert, examples_per_partner=30, max_length=16,
                       batch_size=8, finetune="lora", dp_plan_check=False, local_epochs=1,
                       num_rounds=2, tracking=tracking, out_dir=str(tmp_path / tracking),
                       ledger_dir=str(tmp_path / f"{tracking}-ledgers"))
    # evaluation = full: the partners send their exact loss too, so the loss is tracked
    out = run_federation(LocalGrid(config, 2, node_config={"evaluation": "full"}), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return out, lines


def _expected(lines: list[dict], name: str) -> list[tuple[int, float]]:
    return [(line["round"], pytest.approx(round_scalars(line)[name])) for line in lines]


def test_tensorboard_event_files_hold_one_scalar_per_round(tiny_bert: str,
                                                           tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, lines = _run(tiny_bert, tmp_path, "tensorboard")
    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    for name in ("accuracy", "loss", "epsilon/partner-0", "epsilon/partner-1"):
        assert [(s.step, s.value) for s in events.Scalars(name)] == _expected(lines, name)


def test_mlflow_local_store_holds_one_metric_per_round(tiny_bert: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out, lines = _run(tiny_bert, tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / MLFLOW_DB}")
    experiment = client.get_experiment_by_name("consortium")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["num-rounds"] == "2" and run.info.status == "FINISHED"
    for name in ("accuracy", "loss", "epsilon/partner-0", "epsilon/partner-1"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                               name))
        assert history == _expected(lines, name)


def test_a_missing_value_is_left_out_and_a_missing_library_is_named(monkeypatch) -> None:
    line = {"round": 1, "eval_accuracy": 0.5, "eval_loss": None, "max_epsilon": float("inf"),
            "epsilon_per_partner": {"a": 1.5}}
    assert round_scalars(line) == {"accuracy": 0.5, "epsilon/a": 1.5}
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="tracking = 'mlflow' needs the mlflow package"):
        check_tracking(RunConfig(tracking="mlflow"))
    with pytest.raises(ConfigError, match="tracking"):
        RunConfig.from_mapping({"tracking": "wandb"})
