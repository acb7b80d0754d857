"""Flower's local-SuperLink port variables, as `consortium simulate` reads them."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from simulations.simulate import local_superlink_ports


def test_ports_follow_flowers_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "40191")
    monkeypatch.delenv("FLWR_LOCAL_CONTROL_API_PORT", raising=False)
    assert local_superlink_ports() == [("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", 40191),
                                       ("FLWR_LOCAL_CONTROL_API_PORT", 39093)]


@pytest.mark.parametrize("value", ["abc", "0", "70000", ""])
def test_a_bad_port_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", value)
    with pytest.raises(ConfigError, match="FLWR_LOCAL_CONTROL_API_PORT"):
        local_superlink_ports()
