"""common.config: RunConfig.from_mapping validation and the pyproject.toml defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import RunConfig, parse_partition
from common.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_empty_mapping_gives_the_defaults():
    config = RunConfig.from_mapping({})
    assert config == RunConfig()
    assert config.num_rounds == 3
    assert config.epsilon == 8.0
    assert config.delta == 1e-5
    assert config.partition == "iid"
    assert config.finetune == "pooled-head"  # auto, resolved for text-classification
    assert RunConfig(task="token-classification").finetune == "head"
    assert config.dp is True
    assert config.resume is False
    assert config.label_list == ()


def test_kebab_keys_set_the_matching_fields():
    config = RunConfig.from_mapping({"num-rounds": 5, "text-column": "body", "dp": False,
                                     "labels": "a, b ,c"})
    assert config.num_rounds == 5
    assert config.text_column == "body"
    assert config.dp is False
    assert config.label_list == ("a", "b", "c")


@pytest.mark.parametrize("key, value, field", [
    ("epsilon", 3, "epsilon"),
    ("round-timeout", 60, "round_timeout"),
    ("update-clip-norm", 0, "update_clip_norm"),
])
def test_int_is_accepted_for_a_float_key(key, value, field):
    config = RunConfig.from_mapping({key: value})
    got = getattr(config, field)
    assert got == float(value)
    assert type(got) is float


def test_unknown_key_is_named_in_the_error():
    with pytest.raises(ConfigError, match="num-round") as info:
        RunConfig.from_mapping({"num-round": 3})
    assert "'num-round'" in str(info.value)
    assert "num-rounds" in str(info.value)  # the known keys are listed


def test_snake_case_key_is_unknown():
    with pytest.raises(ConfigError, match="'num_rounds'"):
        RunConfig.from_mapping({"num_rounds": 3})


@pytest.mark.parametrize("key, value", [
    ("num-rounds", "x"),
    ("num-rounds", 2.5),
    ("num-rounds", True),       # a bool is not an int here
    ("dp", 1),
    ("dp", "true"),
    ("epsilon", "8"),
    ("labels", 3),
    ("epsilon", False),
])
def test_ill_typed_value_names_key_and_value(key, value):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    message = str(info.value)
    assert repr(key) in message
    assert repr(value) in message


@pytest.mark.parametrize("value", [0, 0.0, -1.0, -0.5])
def test_epsilon_must_be_positive(value):
    with pytest.raises(ConfigError, match="'epsilon'"):
        RunConfig.from_mapping({"epsilon": value})


@pytest.mark.parametrize("key, value", [
    ("epsilon", float("inf")),
    ("delta", float("nan")),
    ("delta", 1.0),
    ("test-fraction", 0.0),
    ("test-fraction", 1.0),
    ("num-rounds", 0),
    ("max-length", 513),
    ("max-length", 7),
    ("noise-multiplier", -0.1),
    ("seed", -1),
    ("finetune", "adapter"),
])
def test_out_of_range_values_are_rejected(key, value):
    with pytest.raises(ConfigError, match=repr(key)):
        RunConfig.from_mapping({key: value})


@pytest.mark.parametrize("spec", [
    "dirichlet:-1", "dirichlet:0", "dirichlet:x", "dirichlet:", "dirichlet:inf",
    "dirichlet:nan", "column:", "foo", "iid:3", "", "IID",
])
def test_bad_partition_strings_are_rejected(spec):
    with pytest.raises(ConfigError, match="partition="):
        RunConfig.from_mapping({"partition": spec})


@pytest.mark.parametrize("spec, expected", [
    ("iid", ("iid", None)),
    ("dirichlet:0.5", ("dirichlet", 0.5)),
    ("dirichlet:2", ("dirichlet", 2.0)),
    ("column:domain", ("column", "domain")),
])
def test_good_partition_strings_parse(spec, expected):
    assert parse_partition(spec) == expected
    assert RunConfig.from_mapping({"partition": spec}).partition == spec


@pytest.mark.parametrize("labels", ["a,b,a", "pos, neg ,pos", "x,x"])
def test_duplicate_label_is_rejected(labels):
    with pytest.raises(ConfigError, match="repeats a label"):
        RunConfig.from_mapping({"labels": labels})


def test_single_label_is_rejected():
    with pytest.raises(ConfigError, match="fewer than 2"):
        RunConfig.from_mapping({"labels": "only"})


def test_to_mapping_round_trips_through_from_mapping():
    config = RunConfig.from_mapping({"num-rounds": 7, "labels": "a,b", "partition": "column:d"})
    mapping = config.to_mapping()
    assert tuple(mapping) == RunConfig.keys()
    assert RunConfig.from_mapping(mapping) == config


def test_pyproject_run_config_matches_the_dataclass():
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    defaults = {**RunConfig().to_mapping(), "finetune": "auto"}  # resolved per task on build
    assert set(table) == set(RunConfig.keys())
    assert len(table) == len(RunConfig.keys())
    for key, value in table.items():
        assert value == defaults[key], key
        # the same type too, so that e.g. `epsilon = 8` (an int) does not slip in
        assert type(value) is type(defaults[key]), key
    assert RunConfig.from_mapping(table) == RunConfig()
