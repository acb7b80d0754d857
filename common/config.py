"""The run configuration: one frozen dataclass, built once at the edge and validated there.

Keys are the kebab-case names of ``[tool.flwr.app.config]`` in pyproject.toml; every key has its
default there and here (a test keeps the two equal). Errors name the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from common.errors import ConfigError

FINETUNE_MODES = ("lora", "full", "head")
PARTITION_SCHEMES = ("iid", "dirichlet:ALPHA", "column:NAME")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean:BETA", "krum:F")


def _opt(default: Any, help: str, **checks: Any) -> Any:
    return field(default=default, metadata={"help": help, **checks})


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know, shared by the coordinator and every partner."""

    num_rounds: int = _opt(3, "Federated rounds to run.", min=1)
    base_model: str = _opt("", "Local directory or hub name; empty = the bundled all-MiniLM-L6-v2.")
    labels: str = _opt("", "Comma-separated label set, the same at every partner (id = position).")
    data: str = _opt("", "CSV / TSV / JSONL file partitioned across simulated partners; "
                         "empty = the embedded synthetic data set.")
    text_column: str = _opt("text", "Column holding the text.")
    label_column: str = _opt("label", "Column holding the label.")
    partition: str = _opt("iid", "How simulated partners split `data`: iid, dirichlet:ALPHA, "
                                 "column:NAME.")
    test_fraction: float = _opt(0.2, "Share of each partner's data held out for evaluation.",
                                gt=0.0, lt=1.0)
    examples_per_partner: int = _opt(600, "Size of each partner's embedded synthetic data set.",
                                     min=20)
    max_length: int = _opt(48, "Tokens per text after truncation.", min=8, max=512)
    finetune: str = _opt("lora", "lora (adapters + head trained and sent), full (every layer "
                                 "but, by default, the embeddings) or head (classifier only).",
                         choices=FINETUNE_MODES)
    lora_r: int = _opt(8, "LoRA rank.", min=1)
    lora_alpha: int = _opt(16, "LoRA scaling numerator.", min=1)
    freeze_embeddings: bool = _opt(True, "Keep the embedding layer frozen in full fine-tuning.")
    local_epochs: int = _opt(2, "Passes over the partner's training split per round.", min=1)
    batch_size: int = _opt(32, "Expected batch size (Poisson sampling: rate = batch / n).", min=1)
    learning_rate: float = _opt(1e-2, "AdamW learning rate at the partners (1e-2 suits LoRA; "
                                      "use ~1e-3 for full).", gt=0.0)
    epsilon: float = _opt(8.0, "Target ε per partner over all planned rounds (sets σ when "
                               "noise-multiplier is 0).", gt=0.0)
    delta: float = _opt(1e-5, "δ of the (ε, δ) guarantee; must be below 1 / partner examples.",
                        gt=0.0, lt=1.0)
    noise_multiplier: float = _opt(0.0, "σ of DP-SGD; 0 = derive it from epsilon.", ge=0.0)
    max_grad_norm: float = _opt(1.0, "Per-sample gradient clipping bound C.", gt=0.0)
    update_clip_norm: float = _opt(10.0, "L2 bound on each partner's update (new − old); "
                                         "0 = no bound.", ge=0.0)
    dp: bool = _opt(True, "Train with DP-SGD. false = non-private baseline (ε = ∞).")
    min_partners: int = _opt(2, "Fewest replies for a round to count.", min=1)
    round_timeout: float = _opt(3600.0, "Seconds the coordinator waits for replies per round.",
                                gt=0.0)
    seed: int = _opt(42, "Seed for data splits, sampling and initialisation.", min=0)
    out_dir: str = _opt("runs/latest", "Where the coordinator writes the model, metrics, report.")
    ledger_dir: str = _opt("", "Where a partner keeps its privacy ledger; empty = "
                               "OUT-DIR/ledgers (simulation only).")
    resume: bool = _opt(False, "Continue the run found in out-dir from its last checkpoint.")
    aggregation: str = _opt("fedavg", "fedavg (example-weighted, streaming), median, "
                                      "trimmed-mean:BETA (0 <= BETA < 0.5) or krum:F.")
    dropout_rate: float = _opt(0.0, "Simulation only: chance that a partner drops out of a round "
                                    "after training, before replying (its ε is still spent).",
                               ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        parse_partition(self.partition)
        parse_aggregation(self.aggregation)
        if len(set(self.label_list)) != len(self.label_list):
            raise ConfigError(f"labels={self.labels!r} repeats a label; list each label once.")
        if self.labels and len(self.label_list) < 2:
            raise ConfigError(f"labels={self.labels!r} declares fewer than 2 labels.")

    @property
    def label_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.labels.split(",") if s.strip())

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(_kebab(f.name) for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from run-config style keys (``num-rounds``); unknown keys are an error."""
        known = {_kebab(f.name): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"unknown config key {key!r}; known keys: {', '.join(sorted(known))}")
            kwargs[known[key].name] = _coerce(key, value, known[key].type)
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        return {_kebab(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def parse_partition(spec: str) -> tuple[str, float | str | None]:
    """``iid`` -> (iid, None); ``dirichlet:0.5`` -> (dirichlet, 0.5); ``column:domain``."""
    scheme, _, arg = spec.partition(":")
    if scheme == "iid" and not arg:
        return "iid", None
    if scheme == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha > 0 and math.isfinite(alpha):
            return "dirichlet", alpha
        raise ConfigError(f"partition={spec!r}: dirichlet needs a positive ALPHA, "
                          "e.g. dirichlet:0.5")
    if scheme == "column" and arg:
        return "column", arg
    raise ConfigError(f"partition={spec!r} is not valid; pick one of "
                      f"{', '.join(PARTITION_SCHEMES)}")


def parse_aggregation(spec: str) -> tuple[str, float | int | None]:
    """``fedavg`` | ``median`` -> (rule, None); ``trimmed-mean:0.1``; ``krum:1``."""
    rule, _, arg = spec.partition(":")
    if rule in ("fedavg", "median") and not arg:
        return rule, None
    try:
        if rule == "trimmed-mean" and 0 <= float(arg) < 0.5:
            return rule, float(arg)
        if rule == "krum" and int(arg) >= 0:
            return rule, int(arg)
    except ValueError:
        pass
    raise ConfigError(f"aggregation={spec!r} is not valid; pick one of {', '.join(AGGREGATIONS)}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    expected = _TYPES[str(type_name)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f"config key {key!r} = {value!r} is {_article(type(value).__name__)}; "
                          f"expected {_article(expected.__name__)}")
    return value


def _check_field(f: dataclasses.Field, value: Any) -> None:
    key, meta = _kebab(f.name), f.metadata
    _coerce(key, value, f.type)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} = {value!r} must be a finite number")
    bounds = [("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
              ("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("lt", lambda v, b: v < b, "<")]
    for name, ok, sign in bounds:
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"config key {key!r} = {value!r} must be {sign} {meta[name]}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"config key {key!r} = {value!r} is not valid; "
                          f"pick one of {list(meta['choices'])}")


def _article(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"
