"""What only the partner decides (its node config), never the coordinator: its data, budget,
ledger, what may leave it, and which runs it takes part in. No flwr here."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.config import RunConfig, check_device
from common.privacy.ledger_identity import LedgerId
from common.partner_rows import RowSource
from common.errors import ConfigError, PrivacyError
from common import protocol as P
from common.evaluation.oracle import DEFAULT_EVALUATION_NOISE, DEFAULT_MAX_EVALUATIONS

# Un-noised values about the training batches a partner may choose to release (default: none)
BATCH_METRICS = (P.TRAIN_LOSS, P.CLIPPED_FRACTION)
# full = counts + the exact held-out loss; dp = noisy counts, paid in ε (common.evaluation.oracle)
EVALUATION_MODES = ("counts", "full", "off", "dp")
MONITORING_MODES = ("off", "counts")  # whether a monitoring request's counts may leave
DEFAULT_TEST_FRACTION = 0.2  # a real partner's held-out share unless its node config sets one
DEFAULT_MIN_GROUP_SIZE = 10  # a partner's floor on per-group counts unless its node config sets one
_DATA_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KNOWN = {"partition-id", "num-partitions", "data-path", "text-column", "label-column",
          "ledger-dir", "max-epsilon", "partner-name", "delta", "allowed-base-models", "device",
          "data-id", "test-fraction", "min-partners", "require-secure-aggregation",
          "require-central-dp", "max-rounds", "release-metrics", "evaluation", "allowed-code",
          "person-column", "group-column", "min-group-size", "deidentify", "keep-sent",
          "monitor-data", "monitoring", "corrections", "max-evaluations", "evaluation-noise",
          "allow-unlearnable-rounds", "secagg-key", "secagg-peers", "feature-cache-days",
          "allow-hub"}
DEFAULT_FEATURE_CACHE_DAYS = 7.0  # how long a cached feature file is kept unless the policy says


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"node-config {key} = {value!r}: expected true or false")


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


@dataclass(frozen=True)
class PartnerSettings:
    """A partner's policy, from its node config; every field has a safe default."""

    name: str
    partition_id: int = 0
    num_partitions: int = 1
    data_path: str = ""  # the partner's own file; empty = simulated from the run config
    text_column: str = ""
    label_column: str = ""
    ledger_dir: str = ""
    max_epsilon: float = math.inf
    delta: float = 0.0  # the δ this partner accounts its budget at; 0 = the run's
    allowed_base_models: tuple[str, ...] = ()  # empty = any
    device: str = ""  # where this partner trains (auto, cpu, cuda, cuda:N); empty = the run's
    data_id: str = ""  # names the data source its ledger is kept for; a new id = a new ledger
    test_fraction: float = 0.0  # held-out share; 0 = 0.2 with own data, the run's if simulated
    min_partners: int = 0  # never aggregate with fewer partners than this (0 = no rule)
    require_secure_aggregation: bool = False
    require_central_dp: bool = False
    max_rounds: int = 0  # the most rounds it trains in one run (0 = no limit)
    release_metrics: tuple[str, ...] = ()  # BATCH_METRICS it releases un-noised
    evaluation: str = "counts"  # what its held-out evaluation releases (EVALUATION_MODES)
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS  # exact answers over all runs on its data
    evaluation_noise: float = DEFAULT_EVALUATION_NOISE  # z of evaluation = dp
    allow_unlearnable_rounds: bool = False  # train DP rounds the planner predicts cannot learn
    allowed_code: tuple[str, ...] = ()  # code hashes it approved (`consortium partner approve`)
    person_column: str = ""  # whose row it is: DP protects persons, not rows (own data only)
    group_column: str = ""  # scores per value of this column (own data only); never sent
    min_group_size: int = 0  # a group with fewer held-out examples (persons) is left out; 0 = 10
    deidentify: bool = False  # mask personal data in the text before it is tokenized
    keep_sent: bool = False  # keep a copy of every update sent (client/sent.py)
    monitor_data: str = ""  # a labelled file of new data that monitoring requests score
    corrections: str = ""  # reviewed (text, corrected label) rows folded into its own data
    monitoring: str = "off"  # counts = answer monitoring requests (simulated: by default)
    secagg_key: str = ""  # its enrolled private key: signs under secure aggregation
    secagg_peers: str = ""  # NAME.pub of every partner it aggregates with; "" = secagg-key's dir
    feature_cache_days: float = DEFAULT_FEATURE_CACHE_DAYS  # age limit of cached features; 0 = none
    allow_hub: bool = False  # may download base models from the Hugging Face hub (else offline)

    @property
    def has_own_data(self) -> bool:
        return bool(self.data_path)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PartnerSettings:
        unknown = sorted(set(node_config) - _KNOWN)
        if unknown:
            raise ConfigError(f"unknown node-config key(s) {unknown}; known: {sorted(_KNOWN)}")
        get = node_config.get
        pid = int(get("partition-id", 0))
        settings = cls(
            name=str(get("partner-name", f"partner-{pid}")), partition_id=pid,
            num_partitions=int(get("num-partitions", 1)), data_path=str(get("data-path", "")),
            text_column=str(get("text-column", "")), label_column=str(get("label-column", "")),
            ledger_dir=str(get("ledger-dir", "")),
            max_epsilon=float(get("max-epsilon", math.inf)), delta=float(get("delta", 0.0)),
            device=str(get("device", "")),
            allowed_base_models=_names(get("allowed-base-models", "")),
            data_id=str(get("data-id", "")), test_fraction=float(get("test-fraction", 0.0)),
            min_partners=int(get("min-partners", 0)),
            require_secure_aggregation=_flag(get("require-secure-aggregation", False),
                                             "require-secure-aggregation"),
            require_central_dp=_flag(get("require-central-dp", False), "require-central-dp"),
            max_rounds=int(get("max-rounds", 0)),
            release_metrics=_names(get("release-metrics", "")),
            evaluation=str(get("evaluation", "counts")),
            max_evaluations=int(get("max-evaluations", DEFAULT_MAX_EVALUATIONS)),
            evaluation_noise=float(get("evaluation-noise", DEFAULT_EVALUATION_NOISE)),
            allow_unlearnable_rounds=_flag(get("allow-unlearnable-rounds", False),
                                           "allow-unlearnable-rounds"),
            allowed_code=_names(get("allowed-code", "")),
            person_column=str(get("person-column", "")), group_column=str(get("group-column", "")),
            min_group_size=int(get("min-group-size", 0)),
            deidentify=_flag(get("deidentify", False), "deidentify"),
            keep_sent=_flag(get("keep-sent", False), "keep-sent"),
            monitor_data=str(get("monitor-data", "")),
            corrections=str(get("corrections", "")),
            monitoring=str(get("monitoring", "off" if get("data-path") else "counts")),
            secagg_key=str(get("secagg-key", "")), secagg_peers=str(get("secagg-peers", "")),
            feature_cache_days=float(get("feature-cache-days", DEFAULT_FEATURE_CACHE_DAYS)),
            allow_hub=_flag(get("allow-hub", False), "allow-hub"))
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device:
            check_device(self.device, "node-config device")
        if not self.max_epsilon > 0:
            raise ConfigError(f"node-config max-epsilon = {self.max_epsilon} must be > 0")
        if self.data_id and not _DATA_ID.fullmatch(self.data_id):
            raise ConfigError(f"node-config data-id = {self.data_id!r}: use 1-64 letters, "
                              "digits, '.', '_' or '-'")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"node-config test-fraction = {self.test_fraction}: must be in "
                              "(0, 1), or 0 for the default")
        extra = sorted(set(self.release_metrics) - set(BATCH_METRICS))
        if extra:
            raise ConfigError(f"node-config release-metrics {extra}: only {list(BATCH_METRICS)} "
                              "can be released")
        if self.evaluation not in EVALUATION_MODES:
            raise ConfigError(f"node-config evaluation = {self.evaluation!r} is not valid; "
                              f"pick one of {list(EVALUATION_MODES)}")
        if self.monitoring not in MONITORING_MODES:
            raise ConfigError(f"node-config monitoring = {self.monitoring!r} is not valid; "
                              f"pick one of {list(MONITORING_MODES)}")
        if (self.min_partners < 0 or self.max_rounds < 0 or self.min_group_size < 0
                or self.max_evaluations < 0):
            raise ConfigError("node-config min-partners, max-rounds, min-group-size and "
                              "max-evaluations must be >= 0")
        if not self.feature_cache_days >= 0:
            raise ConfigError(f"node-config feature-cache-days = {self.feature_cache_days}: "
                              "must be >= 0 (0 = keep no cached features, inf = no limit)")
        if not (self.evaluation_noise > 0 and math.isfinite(self.evaluation_noise)):
            raise ConfigError(f"node-config evaluation-noise = {self.evaluation_noise}: must be "
                              "a finite number > 0 (the noise std in units of the counts' "
                              "sensitivity)")

    def plan_check(self, config: RunConfig) -> bool:
        """Whether a DP round the planner predicts cannot learn is refused. A partner with its
        own data refuses it whatever the run's ``dp-plan-check`` says, unless its own policy
        allows it (``allow-unlearnable-rounds``): a round of near-pure noise costs almost no ε
        and would buy the coordinator another exact evaluation. A simulated partner's policy
        is the run's author's: it follows ``dp-plan-check``."""
        if self.allow_unlearnable_rounds:
            return False
        return True if self.has_own_data else config.dp_plan_check

    def evaluation_plan(self, config: RunConfig,
                        from_round: int) -> list[tuple[float, float, int]]:
        """The noisy evaluations still to come in a run once round ``from_round`` is trained
        (of the models of rounds ``from_round`` … last), as the accountant sees them; none
        unless ``evaluation = dp``."""
        if self.evaluation != "dp":
            return []
        return [(self.evaluation_noise, 1.0, 1)] * max(0, config.num_rounds - from_round + 1)

    def person_key(self, config: RunConfig) -> str:
        """The person column DP-SGD samples and clips by: the partner's own for its own file
        (the coordinator's run config cannot switch it off or on), the run's when simulated."""
        return self.person_column if self.has_own_data else config.person_column

    def group_key(self, config: RunConfig) -> str:
        """The column held-out scores are split by: the partner's own, or the run's if
        simulated."""
        return self.group_column if self.has_own_data else config.group_column

    def smallest_group(self, config: RunConfig) -> int:
        """Fewest held-out examples (distinct persons, with a person column) a group's counts
        need to leave: the partner's floor, its own ``min-group-size`` or else 10, which the
        run's ``min-group-size`` can raise, never lower."""
        return max(self.min_group_size or DEFAULT_MIN_GROUP_SIZE, config.min_group_size)

    def masks_text(self, config: RunConfig) -> bool:
        """De-identify before tokenizing: when the partner or the run asks (either suffices)."""
        return self.deidentify or config.deidentify

    def ledger_root(self, config: RunConfig) -> Path:
        """Where this partner's ledger and audit log live. A partner with its own data names it
        in its own node config: the run config (the coordinator's) never chooses it, or a run
        could point a partner at an empty directory and start its ε from zero."""
        if self.ledger_dir:
            return Path(self.ledger_dir)
        if self.has_own_data:
            raise ConfigError(f"{self.name} reads its own data but its node config sets no "
                              "ledger-dir; a partner's ledger is its own to place (the run "
                              "config cannot choose it): set ledger-dir")
        return Path(config.ledger_dir or Path(config.out_dir) / "ledgers")

    def data_source(self, config: RunConfig) -> str:
        """What this partner's ledger is kept for: its data-id, else the source of the ledger
        its rows belong to (recognised by content: ``ledger``), else ``named_source``."""
        return self.ledger(config).source

    def ledger(self, config: RunConfig) -> LedgerId:
        """This partner's ledger: the one its data-id names, else the one its rows belong to (a
        renamed file, a symlink, another partner name on the same data: the same ledger);
        PrivacyError when it is missing or lower than its audit log says, until the partner
        acknowledges it (common.privacy.ledger_identity.resolve_ledger), before anything is
        spent."""
        from common.privacy.ledger_identity import resolve_ledger  # reads the data: only when asked
        from common.partner_rows import source_digests

        rows = None if self.data_id else functools.partial(source_digests, config,
                                                           self.row_source())
        return resolve_ledger(self.ledger_root(config), self.name, self.named_source(config),
                              rows, any_name=self.has_own_data)

    def row_source(self) -> RowSource:
        """Where its rows come from (common.partner_rows)."""
        return RowSource(self.data_path, self.text_column, self.label_column,
                         self.partition_id, self.num_partitions)

    def named_source(self, config: RunConfig) -> str:
        """The source a new ledger of this data is named for: its data-id, else its data file
        (or, when simulated, the run's data file). Never the split or the seed."""
        if self.data_id:
            return self.data_id
        where = self.data_path or config.data
        origin = str(Path(where).resolve()) if where else f"embedded:{config.task}"
        kind = "file" if self.data_path else "sim"
        return f"{kind}-{hashlib.sha256(origin.encode()).hexdigest()[:16]}"

    def without_paths(self, text: str, config: RunConfig) -> str:
        """``text`` as the coordinator may read it (a refusal's words): this partner's ledger
        directory and files named by what they are, not where they are."""
        places = {str(self.ledger_root(config)): "LEDGER-DIR", self.data_path: "DATA-FILE",
                  self.monitor_data: "MONITOR-DATA", self.corrections: "CORRECTIONS-FILE"}
        for path in sorted((p for p in places if p), key=len, reverse=True):
            text = text.replace(path, places[path])
        return text

    def ledger_path(self, config: RunConfig) -> Path:
        """This partner's ledger file (``ledger``)."""
        return self.ledger(config).path

    def legacy_ledgers(self, config: RunConfig) -> list[Path]:
        """Version-1 ledgers of this partner (one per training split), to fold in once."""
        pattern = re.compile(re.escape(self.name) + r"-[0-9a-f]{16}\.json")
        root = self.ledger_root(config)
        return [p for p in root.glob(f"{self.name}-*.json") if pattern.fullmatch(p.name)]

    def held_out_fraction(self, config: RunConfig) -> float:
        """The partner's own held-out share; a simulated partner takes the run's."""
        if self.test_fraction:
            return self.test_fraction
        return DEFAULT_TEST_FRACTION if self.has_own_data else config.test_fraction

    def check_base_model(self, config: RunConfig) -> None:
        """Refuse a base model outside ``allowed-base-models`` (a training or monitoring run)."""
        if self.allowed_base_models and config.base_model not in self.allowed_base_models:
            raise PrivacyError(f"base-model {config.base_model or '(bundled MiniLM)'!r} is not "
                               f"in {self.name}'s allowed list {list(self.allowed_base_models)}")

    def check_policy(self, config: RunConfig, server_round: int = 1) -> None:
        """Refuse a run that asks more than this partner allows, naming the rule."""
        rules = [
            (bool(self.delta and config.delta > self.delta),
             f"the run asks delta = {config.delta:g}; {self.name} allows at most {self.delta:g}"),
            (bool(self.allowed_base_models) and config.base_model not in self.allowed_base_models,
             f"base-model {config.base_model or '(bundled MiniLM)'!r} is not in {self.name}'s "
             f"allowed list {list(self.allowed_base_models)}"),
            (not config.dp and math.isfinite(self.max_epsilon),
             f"the run has dp = false; {self.name} has a privacy budget and trains only with DP"),
            (self.require_secure_aggregation and not config.secure_aggregation,
             f"{self.name} requires secure-aggregation = true"),
            (self.require_central_dp and not config.central_dp,
             f"{self.name} requires central-dp = true"),
            (config.min_partners < self.min_partners,
             f"the run's min-partners = {config.min_partners}; {self.name} never takes part "
             f"with fewer than {self.min_partners}"),
            (bool(self.max_rounds) and max(config.num_rounds, server_round) > self.max_rounds,
             f"the run plans {config.num_rounds} rounds; {self.name} trains at most "
             f"{self.max_rounds} per run"),
        ]
        for broken, reason in rules:
            if broken:
                raise PrivacyError(reason)

    def releases(self, metric: str, config: RunConfig) -> bool:
        """Whether an un-noised value about the training batches may leave this partner."""
        return not config.dp or metric not in BATCH_METRICS or metric in self.release_metrics
