"""Each round's metrics line, also in the experiment tracker a researcher already uses (run
config ``tracking``): TensorBoard event files in OUT/tensorboard (torch's SummaryWriter) or an
MLflow run in OUT/mlflow.db (a local SQLite store: nothing needs a server). Off by default;
the libraries are the optional ``tracking`` extra."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping, Protocol

from common.config import RunConfig
from common.errors import ConfigError

MLFLOW_DB = "mlflow.db"
TENSORBOARD_DIR = "tensorboard"


def round_scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one metrics line a tracker plots, by name; what the line lacks (say, the
    loss when partners send counts only) is left out, never logged as zero."""
    values = {"accuracy": line.get("eval_accuracy"), "macro_f1": line.get("eval_macro_f1"),
              "loss": line.get("eval_loss"), "train_loss": line.get("train_loss"),
              "max_epsilon": line.get("max_epsilon"), "gap": line.get("eval_gap"),
              "bytes/upload": line.get("upload_bytes"),
              "bytes/download": line.get("download_bytes"), "seconds": line.get("seconds")}
    for partner, eps in (line.get("epsilon_per_partner") or {}).items():
        values[f"epsilon/{partner}"] = eps
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker(Protocol):
    def log_round(self, line: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    def __init__(self, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))

    def log_round(self, line: Mapping[str, Any]) -> None:
        for name, value in round_scalars(line).items():
            self._writer.add_scalar(name, value, global_step=int(line["round"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MLflow:
    def __init__(self, out: Path, config: RunConfig) -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=f"sqlite:///{out / MLFLOW_DB}")
        experiment = self._client.get_experiment_by_name("consortium")
        experiment_id = (experiment.experiment_id if experiment else
                         self._client.create_experiment("consortium"))
        runs = self._client.search_runs([experiment_id], f"tags.out_dir = '{out}'")
        if runs:  # a resumed run continues its MLflow run
            self._run_id = runs[0].info.run_id
        else:
            run = self._client.create_run(experiment_id, run_name=out.name,
                                          tags={"out_dir": str(out)})
            self._run_id = run.info.run_id
            for key, value in config.to_mapping().items():
                self._client.log_param(self._run_id, key, value)

    def log_round(self, line: Mapping[str, Any]) -> None:
        for name, value in round_scalars(line).items():
            self._client.log_metric(self._run_id, name, value, step=int(line["round"]))

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def check_tracking(config: RunConfig) -> None:
    """ConfigError, before anything starts, when ``tracking`` names a library not installed."""
    module = config.tracking  # the tracker's name is its package's
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"tracking = {config.tracking!r} needs the {module} package: "
                          "pip install 'consortium[tracking]', or set tracking = \"\"")


def open_tracker(config: RunConfig, out: Path) -> Tracker | None:
    """The run's tracker, or None when ``tracking`` is off."""
    check_tracking(config)
    if not config.tracking:
        return None
    return TensorBoard(out) if config.tracking == "tensorboard" else MLflow(out, config)
