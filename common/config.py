"""The run configuration: one frozen dataclass, built once at the edge and validated there.

Keys are the kebab-case names of ``[tool.flwr.app.config]`` in pyproject.toml; every key has its
default there and here (a test keeps the two equal). Errors name the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from common.errors import ConfigError
from common.training.schedule import LR_SCHEDULES
from common.tasks import get_task
from common.tasks.recipes import measured_recipe

TRAINED_MODES = ("lora", "full", "bias", "head", "pooled-head", "pooled-lora")
FINETUNE_MODES = ("auto", *TRAINED_MODES)  # auto: the measured recipe, else a default

AUTO = "auto"  # batch-size, learning-rate: the DP planner picks; train-dropout: the base model's
PARTITION_SCHEMES = ("iid", "dirichlet:ALPHA", "column:NAME")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean:BETA", "krum:F", "multi-krum:F")
COMPRESSIONS = ("none", "fp16", "int8")
CLIPPINGS = ("auto", "hooks", "ghost")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
TRACKERS = ("", "tensorboard", "mlflow")


def _opt(default: Any, help: str, **checks: Any) -> Any:
    return field(default=default, metadata={"help": help, **checks})


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know, shared by the coordinator and every partner."""

    num_rounds: int = _opt(3, "Federated rounds to run.", min=1)
    base_model: str = _opt("", "Local directory or hub name; empty = the bundled all-MiniLM-L6-v2.")
    labels: str = _opt("", "Comma-separated label set, the same at every partner (id = position); "
                           "for token-classification the entity types (PER,ORG), from which the "
                           "tags O, B-PER, I-PER, B-ORG, I-ORG are derived in that order.")
    task: str = _opt("text-classification", "text-classification (a label per text) or "
                                             "token-classification (a tag per word, e.g. NER); "
                                             "any task registered in common/tasks.")
    data: str = _opt("", "CSV / TSV / JSONL file partitioned across simulated partners; "
                         "empty = the embedded synthetic data set.")
    text_column: str = _opt("text", "Column holding the text.")
    label_column: str = _opt("label", "Column holding the label.")
    tag_column: int = _opt(-1, "token-classification, CoNLL files: which whitespace-separated "
                               "column holds the tag (0 is the word; -1 = the last).")
    partition: str = _opt("iid", "How simulated partners split `data`: iid, dirichlet:ALPHA, "
                                 "column:NAME.")
    test_fraction: float = _opt(0.2, "Share of each partner's data held out for evaluation.",
                                gt=0.0, lt=1.0)
    group_column: str = _opt("", "Simulated partners: a column of `data` (e.g. sex, age band) "
                                 "each partner scores the shared model per value of; a "
                                 "partner's own policy sets its own. Empty = no groups.")
    min_group_size: int = _opt(10, "Per-group scores: raises every partner's floor (a group with "
                                   "fewer held-out examples, or distinct persons with a person "
                                   "column, at a partner is left out of everything it sends; "
                                   "k-anonymity of the counts); it can never lower a partner's "
                                   "floor, which is 10 unless the partner sets its own.", min=1)
    deidentify: bool = _opt(False, "Simulated partners: mask names, e-mails, phones, addresses, "
                                   "dates, ID numbers, URLs and IPs in the text before training "
                                   "and evaluation (Presidio; the deid extra). A partner's "
                                   "policy can switch it on, never off.")
    server_eval_data: str = _opt("", "A labelled file the coordinator holds and evaluates the "
                                     "shared model on each round, beside the partners' own "
                                     "held-out splits; empty = none.")
    examples_per_partner: int = _opt(600, "Size of each partner's embedded synthetic data set.",
                                     min=20)
    max_length: int = _opt(48, "Tokens per text after truncation.", min=8, max=512)
    finetune: str = _opt("auto", "auto (the recipe `consortium choose-recipe` measured for "
                                 "this base model and task, if its directory holds one; else "
                                 "pooled-head for text-classification, head for "
                                 "token-classification), "
                                 "lora (adapters + head trained and sent), full (every layer "
                                 "but, by default, the embeddings), bias (DP-BiTFiT: every "
                                 "bias of the encoder's layers and the head; no weight "
                                 "moves), head (the classifier "
                                 "alone, on the [CLS] pooler or each token; its inputs "
                                 "computed once per text and cached) or pooled-head (linear "
                                 "head on the mean-pooled frozen encoder; features computed "
                                 "once per partner; exported as sentence-transformers) or "
                                 "pooled-lora (that head "
                                 "and LoRA adapters in the encoder, merged on export).",
                         choices=FINETUNE_MODES)
    lora_r: int = _opt(8, "LoRA rank.", min=1)
    lora_alpha: int = _opt(16, "LoRA scaling numerator.", min=1)
    lora_layers: int = _opt(0, "LoRA adapters in the top N encoder layers only (0 = every "
                               "layer): fewer trainable numbers, so less DP noise, and no "
                               "backward pass through the layers below.", min=0)
    head_lr_scale: float = _opt(1.0, "With LoRA (lora, pooled-lora): the head's learning "
                                     "rate is learning-rate × this; the adapters keep "
                                     "learning-rate.", gt=0.0)
    lora_freeze_a: bool = _opt(False, "FFA-LoRA: keep LoRA's A matrices at their seeded random "
                                      "start and train only B (half the trainable numbers, so "
                                      "less DP noise; BENCHMARKS.md, encoder recipes).")
    freeze_embeddings: bool = _opt(True, "Keep the embedding layer frozen in full fine-tuning.")
    local_epochs: int = _opt(2, "Passes over the partner's training split per round.", min=1)
    batch_size: int | str = _opt(AUTO, "Expected batch size (Poisson sampling: rate = batch / "
                                       "n); auto = the DP planner's (common.privacy.planner: as "
                                       "large as still leaves enough steps), 32 without DP.",
                                 min=1)
    learning_rate: float | str = _opt(AUTO, "AdamW learning rate at the partners; auto = the "
                                            "measured one for the finetune mode and dp "
                                            "(common.privacy.planner.LEARNING_RATE).", gt=0.0)
    lr_schedule: str = _opt("constant", "The learning rate over the run's planned steps: "
                                        "constant, or a decay towards 0 by the last round "
                                        "(linear, cosine). It continues across rounds, is "
                                        "computed from public quantities and costs no ε.",
                            choices=LR_SCHEDULES)
    lr_warmup: float = _opt(0.0, "The share of the run's steps over which the learning rate "
                                 "rises linearly to learning-rate first (0 = none).",
                            ge=0.0, lt=1.0)
    ema_decay: float = _opt(0.0, "Each round's weights become the exponential moving average of "
                                 "its steps' iterates with this decay per step (0 = the last "
                                 "iterate). Post-processing of what DP-SGD releases: costs no "
                                 "ε.", ge=0.0, lt=1.0)
    train_dropout: float | str = _opt(AUTO, "Dropout while a partner trains (every torch "
                                            "Dropout of the model, attention's included): auto "
                                            "= the base model's own (MiniLM: 0.1); 0 = none, "
                                            "since DP-SGD's noise already regularizes and "
                                            "dropout adds variance to every step. Inference "
                                            "never drops; costs no ε.", ge=0.0, lt=1.0)
    dp_plan_check: bool = _opt(True, "Refuse, before any ε is spent, a DP plan predicted to "
                                     "learn nothing (noise-to-signal over the run above "
                                     "common.privacy.planner.MAX_RUN_RATIO); false = run it "
                                     "anyway.")
    epsilon: float = _opt(8.0, "Target ε per partner over all planned rounds (sets σ when "
                               "noise-multiplier is 0).", gt=0.0)
    delta: float = _opt(1e-5, "δ of the (ε, δ) guarantee; must be below 1 / partner examples.",
                        gt=0.0, lt=1.0)
    noise_multiplier: float = _opt(0.0, "σ of DP-SGD; 0 = derive it from epsilon.", ge=0.0)
    max_grad_norm: float = _opt(1.0, "Per-sample gradient clipping bound C.", gt=0.0)
    person_column: str = _opt("", "Simulated partners: the column of `data` naming whose row "
                                  "it is; DP-SGD then samples and clips persons, so ε is per "
                                  "person. A partner's own policy sets its own. Empty = per "
                                  "example.")
    max_rows_per_person: int = _opt(8, "Per-person DP: the most rows of one sampled person a "
                                       "step uses (drawn at random); compute only, ε is the "
                                       "same.", min=1)
    clipping: str = _opt("auto", "How DP-SGD clips per-sample gradients: hooks (Opacus "
                                 "per-sample gradients), ghost (norms only, 2nd backward) or auto "
                                 "(the faster one for the finetune mode, as measured).",
                         choices=CLIPPINGS)
    batch_tokens: int = _opt(1024, "Padded tokens per encoder pass in training: each batch "
                                   "(under DP, each Poisson batch) runs as length-sorted "
                                   "pieces of at most this many tokens, for speed and memory; "
                                   "the step, and under DP its clipping, noise and ε, are the "
                                   "whole batch's. 0 = each batch in one pass.", min=0)
    update_clip_norm: float = _opt(10.0, "L2 bound on each partner's update (new − old); "
                                         "0 = no bound. A DP partner notes when its plan's "
                                         "noise alone moves further (lr·√(d·T)).", ge=0.0)
    compression: str = _opt("none", "How partners encode their update on the wire: none "
                                    "(float32 weights), fp16, or int8 (per-tensor scale).",
                            choices=COMPRESSIONS)
    dp: bool = _opt(True, "Train with DP-SGD. false = non-private baseline (ε = ∞).")
    device: str = _opt("auto", "Where partners train: auto (a visible CUDA GPU, else the CPU), "
                               "cpu, cuda or cuda:N; a partner's node-config device overrides "
                               "it. The coordinator scores server-eval-data on a GPU if it has "
                               "one.")
    central_dp: bool = _opt(False, "Partner-level DP: the coordinator adds Gaussian noise "
                                   "σ = z · update-clip-norm · max w / Σ w (w = examples of the "
                                   "updates averaged) to each round's mean. Needs aggregation = "
                                   "fedavg, update-clip-norm > 0, central-noise-multiplier > 0.")
    central_noise_multiplier: float = _opt(0.0, "z of partner-level DP (central-dp); each round "
                                                "is one Gaussian mechanism of this multiplier.",
                                           ge=0.0)
    min_partners: int = _opt(2, "Fewest replies for a round to count.", min=1)
    round_timeout: float = _opt(3600.0, "Seconds the coordinator waits for replies per round.",
                                gt=0.0)
    seed: int = _opt(42, "Seed for data splits, sampling and initialisation.", min=0)
    out_dir: str = _opt("runs/latest", "Where the coordinator writes the model, metrics, report.")
    ledger_dir: str = _opt("", "Where a partner keeps its privacy ledger; empty = "
                               "OUT-DIR/ledgers (simulation only).")
    resume: bool = _opt(False, "Continue the run found in out-dir from its last checkpoint.")
    init_from: str = _opt("", "A release to continue from: a model directory an earlier run "
                              "exported (its OUT-DIR/model). The coordinator starts from its "
                              "trainable weights; base model, task, labels, finetune and the "
                              "trainable layout must match. Empty = the base model's initial "
                              "weights.")
    monitor: str = _opt("", "A release to monitor (an earlier run's OUT-DIR/model): instead of "
                            "training, the coordinator sends its weights once to every partner, "
                            "which scores them on its monitoring data and replies counts only "
                            "(if its policy allows); no ε is spent. Empty = a training run.")
    drift_threshold: float = _opt(0.05, "Monitoring: a partner whose accuracy (the task's main "
                                        "metric) fell by more than this since the release is "
                                        "flagged.", ge=0.0, lt=1.0)
    tracking: str = _opt("", "Also log each round (accuracy, loss, ε per partner, bytes) to an "
                             "experiment tracker: tensorboard (OUT-DIR/tensorboard) or mlflow "
                             "(OUT-DIR/mlflow.db); needs the tracking extra. Empty = off.",
                         choices=TRACKERS)
    aggregation: str = _opt("fedavg", "fedavg (example-weighted, streaming), median, "
                                      "trimmed-mean:BETA (0 <= BETA < 0.5), krum:F or "
                                      "multi-krum:F (F = attackers tolerated).")
    dropout_rate: float = _opt(0.0, "Simulation only: chance that a partner drops out of a round "
                                    "after training, before replying (its ε is still spent).",
                               ge=0.0, lt=1.0)
    secure_aggregation: bool = _opt(False, "SecAgg+ masking: the coordinator learns only the "
                                           "example-weighted sum of the updates, never one "
                                           "partner's (simulated dropouts then happen after key "
                                           "sharing). Needs aggregation = fedavg, compression = "
                                           "none, min-partners >= 2.")
    secagg_threshold: float = _opt(0.6, "Secure aggregation: share of a round's n partners "
                                        "(t = max(2, ceil(share · n))) whose key shares rebuild a "
                                        "dropped partner's masks; a round survives n − t dropouts "
                                        "after key sharing.", gt=0.5, max=1.0)
    secagg_clipping_range: float = _opt(0.0, "Secure aggregation: each coordinate of a weighted "
                                             "update is clipped to ± this before quantization; "
                                             "0 = update-clip-norm (then nothing is ever clipped).",
                                        ge=0.0)
    secagg_quantization_range: int = _opt(4194304, "Secure aggregation: integer levels per "
                                                   "coordinate (2^22); a round takes at most "
                                                   "2^32 / this partners.", min=256, max=2**30)
    max_partner_weight: float = _opt(10000.0, "Most examples one partner's update counts for "
                                              "in the weighted mean, however many it claims "
                                              "(every aggregation mode). Under secure "
                                              "aggregation each partner masks min(n, this) / "
                                              "this: set it near the largest partner's size.",
                                     gt=0.0)

    def __post_init__(self) -> None:
        task = get_task(self.task)  # ConfigError naming the key and the known tasks
        if self.finetune == "auto":  # resolved once, here: measured for this base model, or
            self._resolve_auto(task.name, task.auto_finetune)  # the task's DP-friendly choice
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        parse_partition(self.partition)
        check_device(self.device, "config key 'device'")
        parse_aggregation(self.aggregation)
        if self.secure_aggregation:
            self._check_secure_aggregation()
        if self.central_dp:
            self._check_central_dp()
        if self.monitor and (self.init_from or self.resume):
            raise ConfigError(f"monitor = {self.monitor!r} scores a release and trains nothing: "
                              "leave init-from and resume unset")
        if len(set(self.label_list)) != len(self.label_list):
            raise ConfigError(f"labels={self.labels!r} repeats a label; list each label once.")
        task.check_config(self)

    def _resolve_auto(self, task: str, default: str) -> None:
        """finetune = auto: the base model's measured recipe for this task (common.tasks.recipes),
        its keys applied where this config holds their defaults; else ``default``."""
        keys = measured_recipe(self.base_model, task, TRAINED_MODES)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in (keys or {"finetune": default}).items():
            name = key.replace("-", "_")
            if name == "finetune" or getattr(self, name) == defaults[name]:
                object.__setattr__(self, name, value)

    def _check_central_dp(self) -> None:
        why = {"aggregation": (self.aggregation != "fedavg", f"{self.aggregation!r}: its noise "
                               "is calibrated to the weighted mean's sensitivity, not a robust "
                               "rule's"),
               "update-clip-norm": (self.update_clip_norm <= 0, "0: an unbounded update has no "
                                    "sensitivity; set the partner-level bound C > 0"),
               "central-noise-multiplier": (self.central_noise_multiplier <= 0, "0: set z > 0 "
                                            "(e.g. 1.0)"),
               "secure-aggregation": (self.secure_aggregation, "true: the coordinator cannot "
                                      "re-clip single updates it never sees (not supported yet)")}
        for key, (bad, reason) in why.items():
            if bad:
                raise ConfigError(f"central-dp = true does not work with {key} = {reason}")

    def _check_secure_aggregation(self) -> None:
        clash = {"aggregation": (self.aggregation, "fedavg"),
                 "compression": (self.compression, "none")}
        for key, (value, needed) in clash.items():
            if value != needed:
                raise ConfigError(f"secure-aggregation = true needs {key} = {needed!r}, got "
                                  f"{value!r}: the coordinator sees only the masked sum, so it "
                                  "can neither rank single updates nor decode compressed ones")
        if self.min_partners < 2:
            raise ConfigError(f"secure-aggregation = true needs min-partners >= 2, got "
                              f"{self.min_partners}: the sum of one update is that update")
        if self.secagg_clipping_range == 0 and self.update_clip_norm == 0:
            raise ConfigError("secure-aggregation = true needs a bound to quantize within: set "
                              "update-clip-norm > 0 or secagg-clipping-range > 0")

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


def check_device(spec: str, where: str) -> None:
    """Syntax only (the coordinator may have no GPU while partners do): auto, cpu, cuda, cuda:N."""
    if spec not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", spec):
        raise ConfigError(f"{where} = {spec!r} is not valid; pick one of {', '.join(DEVICES)}")


def parse_aggregation(spec: str) -> tuple[str, float | int | None]:
    """``fedavg`` | ``median`` -> (rule, None); ``trimmed-mean:0.1``; ``krum:1``;
    ``multi-krum:1``."""
    rule, _, arg = spec.partition(":")
    if rule in ("fedavg", "median") and not arg:
        return rule, None
    try:
        if rule == "trimmed-mean" and 0 <= float(arg) < 0.5:
            return rule, float(arg)
        if rule in ("krum", "multi-krum") and int(arg) >= 0:
            return rule, int(arg)
    except ValueError:
        pass
    raise ConfigError(f"aggregation={spec!r} is not valid; pick one of {', '.join(AGGREGATIONS)}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    if str(type_name).endswith(" | str"):  # a number, or "auto"
        number = str(type_name).split(" | ")[0]
        if value == AUTO:
            return value
        if isinstance(value, str) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} = {value!r} is not valid; use {AUTO!r} or "
                              f"{_article(number)}")
        return _coerce(key, value, number)
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
    if value == AUTO and str(f.type).endswith(" | str"):
        return
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


def epsilon_keys(epsilon: float) -> dict[str, Any]:
    """``--epsilon`` on a command line: the target ε per partner, or ``inf`` for a run without
    DP (a non-private baseline)."""
    if math.isinf(epsilon) and epsilon > 0:
        return {"dp": False}
    return {"epsilon": epsilon}
